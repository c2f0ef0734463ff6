"""Which points a search tries: the study's grid (every point once, the default), or Optuna's TPE or random
sampler drawing `--trials N` points from value lists and ranges, with unpromising trials pruned on their
validation loss epoch by epoch (median rule)."""

from __future__ import annotations

from typing import Any, Literal

import optuna

from covidxr.errors import CovidxrError
from covidxr.search.grid import Range, Space, as_grid

SamplerName = Literal["grid", "tpe", "random"]
SAMPLERS: tuple[SamplerName, ...] = ("grid", "tpe", "random")
PRUNE_AFTER_TRIALS = 3  # trials finished before any is pruned: the median needs company
PRUNE_AFTER_EPOCHS = 3  # epochs a trial always gets: early validation loss is noisy


def make_sampler(name: str, space: Space, seed: int) -> optuna.samplers.BaseSampler:
    if name == "grid":
        return optuna.samplers.GridSampler(as_grid(space), seed=seed)
    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    raise CovidxrError(f"unknown sampler {name!r}; choose one of {', '.join(SAMPLERS)}")


def make_pruner(name: str) -> optuna.pruners.BasePruner:
    """The grid runs every point to the end (it is the study's protocol); drawing samplers prune."""
    if name == "grid":
        return optuna.pruners.NopPruner()
    return optuna.pruners.MedianPruner(n_startup_trials=PRUNE_AFTER_TRIALS, n_warmup_steps=PRUNE_AFTER_EPOCHS)


def suggest(trial: optuna.Trial, space: Space) -> dict[str, Any]:
    params: dict[str, Any] = {}
    for name, values in space.items():
        if isinstance(values, Range) and values.integer:
            params[name] = trial.suggest_int(name, int(values.low), int(values.high))
        elif isinstance(values, Range):
            params[name] = trial.suggest_float(name, float(values.low), float(values.high), log=values.log)
        else:
            params[name] = trial.suggest_categorical(name, values)
    return params


def pruning_reporter(trial: optuna.Trial):
    """Per-epoch hook for the trainer: report the validation loss (negated: the study maximises F1) and stop
    the trial when the pruner says so."""

    def report(epoch: int, val_loss: float) -> None:
        trial.report(-val_loss, epoch)
        if trial.should_prune():
            raise optuna.TrialPruned(f"epoch {epoch}: val loss {val_loss:.4f} worse than the median trial")

    return report
