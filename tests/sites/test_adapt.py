"""`covidxr adapt`: a run adapted to a site's labelled films is a new run that works where runs work, says where
it came from and keeps the site's calibration; without labels the features are re-centred; a site sharing films
with the base run is refused; the learning curve scores only patients never labelled."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from covidxr.cli import app
from covidxr.data.synth import generate
from covidxr.errors import CovidxrError
from covidxr.sites.adapt import recentred
from covidxr.sites.curve import draw_patients, split_held_out

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("site") / "hospital-b"
    generate(out, n=70, seed=41)
    return out


@pytest.fixture(scope="module")
def adapted(run_dir: Path, site: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("adapted") / "run"
    done = CliRunner().invoke(app, ["adapt", str(run_dir), "--data", str(site), "--out", str(out), "--curve",
                                    "--ks", "0,10,20", "--draws", "2", "--target-auc", "0.999"])  # fmt: skip
    assert done.exit_code == 0, done.output
    return out, done.output


def test_an_adapted_run_says_where_it_came_from_and_keeps_the_sites_calibration(
    run_dir: Path, site: Path, adapted: tuple[Path, str]
) -> None:
    out, output = adapted
    record = json.loads((out / "adapted.json").read_text())
    assert record["base_run"] == str(run_dir) and record["site"] == "hospital-b" and record["mode"] == "head"
    assert record["films"] == 70 and 0 < record["held_out"] < 70 and record["after"]["films"] == record["held_out"]
    assert json.loads((out / "model.json").read_text())["extra"]["adapted"]["site"] == "hospital-b"
    calibration = json.loads((out / "calibration.json").read_text())
    assert calibration["fitted_on"] == "site"
    assert "before: within-site AUC" in output and "after: within-site AUC" in output
    base = json.loads((run_dir / "model.json").read_text())
    assert "adapted" not in base.get("extra", {})  # the base run is never changed

    from covidxr.evaluation.job import evaluate_run
    from covidxr.serve.predict import predict_to_file

    evaluation = evaluate_run(out, n_resamples=20)  # on the base run's own test split: what the head kept
    assert evaluation.threshold is not None and evaluation.threshold.value == pytest.approx(calibration["threshold"])
    films = sorted((site / "images").rglob("*.png"))[:4]
    assert predict_to_file(out, films, out / "p.csv", workers=0)["predicted"] == 4

    from covidxr.report.html import write_report
    from covidxr.run import Run

    page = write_report(Run(out)).read_text()
    assert "Adaptation to a site" in page and "hospital-b" in page and "not reached within the site" in page
    assert 'alt="site curve"' in page  # the curve's plot, embedded


def test_the_curve_scores_patients_never_labelled_and_says_whether_it_reached_the_target(
    adapted: tuple[Path, str],
) -> None:
    out, output = adapted
    curve = json.loads((out / "site_curve.json").read_text())
    assert [p["k"] for p in curve["points"]] == [0, 10, 20] and all(p["draws"] == 2 for p in curve["points"])
    assert all(0.0 <= p["auc"] <= 1.0 and p["auc_ci95"][0] <= p["auc_ci95"][1] for p in curve["points"])
    assert curve["points"][2]["scored_films"] < curve["points"][0]["scored_films"] == 70
    assert (out / "plots" / "site_curve.png").is_file()
    assert ("reached at k =" in output) == (curve.get("reached_at") is not None)  # None is left out of the file


def test_a_site_holding_the_base_runs_films_is_refused_by_name(run_dir: Path, phantoms: Path, tmp_path: Path) -> None:
    from covidxr.run import Run
    from covidxr.sites.adapt import site_data

    with pytest.raises(CovidxrError, match=r"the same film as the base run's .*a site must be films the run never"):
        site_data(Run(run_dir), [str(phantoms)])


def test_without_labels_the_features_are_recentred_into_the_head(run_dir: Path, site: Path, tmp_path: Path) -> None:
    done = CliRunner().invoke(app, ["adapt", str(run_dir), "--data", str(site), "--out", str(tmp_path / "r"),
                                    "--mode", "recentre"])  # fmt: skip
    assert done.exit_code == 0, done.output
    record = json.loads((tmp_path / "r" / "adapted.json").read_text())
    assert record["mode"] == "recentre" and record["held_out"] == 0 and "cannot move without labels" in record["note"]
    head = torch.nn.Sequential(torch.nn.Linear(5, 3), torch.nn.ReLU(), torch.nn.Linear(3, 2))
    rng = np.random.default_rng(0)
    base, site_x = rng.normal(1, 2, (50, 5)), rng.normal(-3, 0.5, (40, 5))
    moved = (site_x - site_x.mean(0)) / site_x.std(0) * base.std(0) + base.mean(0)
    with torch.no_grad():
        folded = recentred(head, base, site_x)(torch.from_numpy(site_x).float())
        expected = head(torch.from_numpy(moved).float())
    assert torch.allclose(folded, expected, atol=1e-4)


def test_labelled_films_are_drawn_as_whole_patients_of_both_labels() -> None:
    y = np.array([1] * 30 + [0] * 10)
    groups = np.array([f"p{i // 2}" for i in range(40)])  # two films a patient
    rng = np.random.default_rng(3)
    chosen = draw_patients(y, groups, 10, rng)
    assert 8 <= len(chosen) <= 12 and set(y[chosen]) == {0, 1}
    assert all(set(np.flatnonzero(groups == g)) <= set(chosen) for g in set(groups[chosen]))  # whole patients
    train, held = split_held_out(y[chosen], groups[chosen], rng)
    assert not set(groups[chosen][train]) & set(groups[chosen][held]) and len(held) > 0
