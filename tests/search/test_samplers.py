"""Search spaces and samplers without training: ranges are parsed and refused where a grid cannot take them,
and the pruner stops a trial whose validation loss is worse than the median (the loss is negated for a study
that maximises F1: a sign slip would prune the best trials instead)."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
import yaml

from covidxr.config import Config, DataConfig, TrainConfig
from covidxr.errors import CovidxrError
from covidxr.search.grid import Range, grid_points, load_grid
from covidxr.search.job import search
from covidxr.search.samplers import PRUNE_AFTER_EPOCHS, make_pruner, pruning_reporter, suggest


def _write(tmp_path: Path, grid: dict) -> Path:
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(grid))
    return path


def test_ranges_are_parsed_checked_and_refused_by_the_grid(tmp_path: Path) -> None:
    space = load_grid(_write(tmp_path, {"lr": {"low": 1e-5, "high": 1e-2, "log": True}, "batch_size": [16, 32]}))
    assert space == {"lr": Range(1e-5, 1e-2, True), "batch_size": [16, 32]}
    assert load_grid(_write(tmp_path, {"patience": {"low": 2, "high": 9}}))["patience"].integer  # type: ignore[union-attr]
    for bad in ({"low": 1, "high": 1}, {"low": 0, "high": 1, "log": True}, {"low": 1, "top": 2}, {"low": "a"}):
        with pytest.raises(CovidxrError, match="lr"):
            load_grid(_write(tmp_path, {"lr": bad}))
    with pytest.raises(CovidxrError, match="a range needs --sampler tpe or random"):
        grid_points(space)
    cfg = Config(DataConfig(paths=(str(tmp_path),)), TrainConfig())
    with pytest.raises(CovidxrError, match="a range needs --sampler tpe or random"):
        search(cfg, space, tmp_path / "s")
    with pytest.raises(CovidxrError, match="needs --trials"):
        search(cfg, space, tmp_path / "s", sampler="tpe")
    with pytest.raises(CovidxrError, match="unknown sampler 'anneal'"):
        search(cfg, space, tmp_path / "s", sampler="anneal", trials=3)
    with pytest.raises(CovidxrError, match="optimizer = 'lbfgs' is not one of"):  # choices checked before a trial
        search(cfg, {"optimizer": ["adam", "lbfgs"]}, tmp_path / "s", sampler="random", trials=3)
    assert not (tmp_path / "s").exists()


def test_suggest_draws_inside_ranges_and_from_lists() -> None:
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    space = {"lr": Range(1e-5, 1e-2, True), "patience": Range(2, 9), "optimizer": ["adam", "sgd"]}
    drawn = [suggest(study.ask(), space) for _ in range(30)]
    assert all(1e-5 <= d["lr"] <= 1e-2 and isinstance(d["patience"], int) and 2 <= d["patience"] <= 9 for d in drawn)
    assert {d["optimizer"] for d in drawn} == {"adam", "sgd"}
    assert len({round(d["lr"], 12) for d in drawn}) == 30  # a range, not a list of values


def _losses(study: optuna.Study, losses: list[float]) -> str:
    """Run one trial that reports these validation losses; its final state."""
    trial = study.ask()
    report = pruning_reporter(trial)
    try:
        for epoch, loss in enumerate(losses):
            report(epoch, loss)
    except optuna.TrialPruned:
        study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        return "pruned"
    study.tell(trial, 1.0)
    return "complete"


def test_the_pruner_stops_a_trial_with_worse_validation_loss_not_a_better_one() -> None:
    study = optuna.create_study(direction="maximize", pruner=make_pruner("tpe"))
    epochs = PRUNE_AFTER_EPOCHS + 3
    for _ in range(3):
        assert _losses(study, [0.5] * epochs) == "complete"
    assert _losses(study, [0.2] * epochs) == "complete"  # better than the median: kept
    assert _losses(study, [2.0] * epochs) == "pruned"  # worse: stopped
    assert _losses(study, [2.0] * PRUNE_AFTER_EPOCHS) == "complete"  # warm-up epochs are never pruned
    grid_study = optuna.create_study(direction="maximize", pruner=make_pruner("grid"))
    for _ in range(3):
        _losses(grid_study, [0.5] * epochs)
    assert _losses(grid_study, [2.0] * epochs) == "complete"  # the grid runs every point to the end
