"""Typed results read back what they wrote: nested results, optional parts left out, CSV cells as numbers."""

from __future__ import annotations

import json
from pathlib import Path

from covidxr.results import DeadFilters, Explanation, Filters, LeaderboardRow, Localisation, WeightStats
from covidxr.search.leaderboard import sort_rows, write_leaderboard


def _explanation(localisation: Localisation | None) -> Explanation:
    filters = Filters([32, 3, 3, 3], [WeightStats("conv", [32, 3, 3, 3], 0.0, 0.1, 0.5)],
                      [DeadFilters("act", "activation", 32, 4, 0.125)], ["note"])  # fmt: skip
    return Explanation(30, 0.4, [(0.0, 0.9), (0.5, 1.0)], [0.2, None], filters, localisation)


def test_nested_results_round_trip_and_unset_parts_are_left_out() -> None:
    bare = _explanation(None)
    raw = json.loads(json.dumps(bare.to_json()))
    assert "localisation" not in raw and raw["uncertainty_wrong_vs_right"] == [0.2, None]
    back = Explanation.from_json(raw)
    assert back.localisation is None and isinstance(back.filters.dead[0], DeadFilters)
    assert back.filters.dead[0].fraction == 0.125 and back.filters.weights[0].shape == [32, 3, 3, 3]
    full = _explanation(Localisation(6, 0.8, 0.5, 0.05, 0.1))
    assert Explanation.from_json(json.loads(json.dumps(full.to_json()))).localisation == full.localisation
    raw["written_by"] = "a later version"  # unknown keys are ignored, not fatal
    assert Explanation.from_json(raw).mc_passes == 30


def test_leaderboard_rows_read_back_typed_and_sorted(tmp_path: Path) -> None:
    def row(run: str, f1: float, auc: float, loss: float) -> LeaderboardRow:
        settings = {"backbone": "simple_cnn", "lr": 0.001, "batch_size": 16, "optimizer": "adam"}
        metrics = {"val_f1": f1, "val_auc": auc, "val_loss": loss}
        return LeaderboardRow(run, settings, metrics, 3, 5, 1.5, params={"trial": 2, "last_k": 1})

    rows = sort_rows([row("a", 0.9, 0.95, 0.3), row("b", 0.9, 0.95, 0.2), row("c", 0.95, 0.5, 0.9)])
    assert [r.run for r in rows] == ["c", "b", "a"]  # F1, then AUC, then the lower loss
    path = write_leaderboard(rows, tmp_path / "leaderboard.csv")
    back = LeaderboardRow.read_all(path)
    assert back == rows
    assert back[0].value("lr") == 0.001 and back[0].value("batch_size") == 16 and back[0].value("last_k") == 1


def test_a_result_file_that_cannot_be_read_is_one_clear_error(tmp_path: Path) -> None:
    import pytest

    from covidxr.errors import CovidxrError
    from covidxr.rundir import RunDir

    run = RunDir(tmp_path)
    assert run.read_explanation() is None  # not explained yet
    run.explain.write_text(json.dumps({"mc_passes": 30}))  # fields missing
    with pytest.raises(CovidxrError, match=r"explain.json: cannot be read as Explanation"):
        run.read_explanation()
    run.metrics.write_text("{not json")
    with pytest.raises(CovidxrError, match=r"metrics.json: cannot be read as Evaluation"):
        run.read_evaluation()


def test_a_fair_score_without_a_within_source_auc_reads_back() -> None:
    import numpy as np

    from covidxr.evaluation.fair import fair_score
    from covidxr.results import FairScore

    only = fair_score(np.array([1, 1, 0, 0]), np.array([0.9, 0.8, 0.1, 0.2]), np.array([1, 1, 0, 0], bool),
                      ["A", "A", "B", "B"], np.array(["a", "b", "c", "d"]), n_resamples=0)  # fmt: skip
    back = FairScore.from_json(json.loads(json.dumps(only.to_json())))
    assert back == only and back.within_source_auc is None and back.mixed_auc == 1.0


def test_values_are_checked_when_read_literals_and_nested_types_included(tmp_path: Path) -> None:
    import pytest

    from covidxr.errors import CovidxrError
    from covidxr.results import TrainState
    from covidxr.rundir import RunDir

    run = RunDir(tmp_path)
    run.state.write_text(json.dumps({"status": "done", "best_epoch": 3}))  # not one of running | finished
    with pytest.raises(CovidxrError, match=r"state.json: cannot be read as TrainState .*status"):
        run.read_state()
    run.state.write_text(json.dumps({"status": "finished", "best_epoch": "third"}))
    with pytest.raises(CovidxrError, match=r"state.json: cannot be read as TrainState .*best_epoch"):
        run.read_state()
    raw = _explanation(None).to_json()
    raw["filters"]["dead"][0]["fraction"] = "most"  # a nested record's number
    run.explain.write_text(json.dumps(raw))
    with pytest.raises(CovidxrError, match=r"explain.json: cannot be read as Explanation .*fraction"):
        run.read_explanation()
    run.state.write_text(json.dumps({"status": "finished", "best_epoch": 3, "best_val_loss": 0.25}))
    assert run.read_state() == TrainState("finished", 3, 0.25)
