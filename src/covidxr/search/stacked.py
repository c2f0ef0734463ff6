"""The grid on shared features, trained together: when every grid point varies only the head (learning rate,
batch size, optimizer, dropout, weight decay, momentum) on one backbone's cached features, the points train as
one stacked model (training.stacked) instead of one run each. Each point is still an Optuna trial, with its
validation metrics at its best epoch; no trial builds a backbone or writes a network — only the winner is made
into a run. A killed search resumes from the stacked checkpoints; points already recorded are not trained again.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import optuna

from covidxr.config import Config
from covidxr.data.prepare import PreparedData
from covidxr.results import SETTINGS, VAL_METRICS, LeaderboardRow
from covidxr.rundir import RunDir
from covidxr.search.grid import Space, apply_params, as_grid, grid_points, point_key
from covidxr.training.feature_cache import CachedFeatures
from covidxr.training.job import cached_groups, head_features, single_process, write_head_run
from covidxr.training.sampling import is_balanced
from covidxr.training.stacked import HeadOutcome, HeadPoint, train_heads

HEAD_FIELDS = frozenset({"lr", "batch_size", "optimizer", "dropout", "weight_decay", "momentum"})
STACKED_DIR = "stacked"  # the stacked heads' checkpoints, inside the search folder


def stackable(cfg: Config, space: Space, sampler: str, workers: int = 1, storage_url: str | None = None) -> bool:
    """Whether the grid's points can train together: a grid over head settings only, a frozen backbone with
    the feature cache, the study's MLP head, one process, no class-weighted loss — and one worker on this
    machine's own study (workers, or machines sharing a study, split the grid one point at a time)."""
    tc = cfg.train
    return (
        sampler == "grid" and set(space) <= HEAD_FIELDS and tc.freeze == "head" and tc.feature_cache
        and tc.head == "mlp" and tc.balance != "weights" and single_process(tc) and workers == 1
        and storage_url is None
    )  # fmt: skip


def _point(cfg: Config) -> HeadPoint:
    tc = cfg.train.resolved()
    return HeadPoint(float(tc.lr or 0), tc.optimizer, tc.dropout, tc.batch_size, tc.weight_decay, tc.momentum,
                     plateau=tc.lr_schedule == "plateau")  # fmt: skip


def stacked_search(
    cfg: Config, space: Space, out: Path, study: optuna.Study, prepared: PreparedData, trials_dir: str
) -> list[LeaderboardRow]:
    """Train the grid's points not yet recorded in `study` together, record each as a trial, make the best point
    into a run (`out/<trials_dir>/<key>`); returns every point's leaderboard row."""
    grid = as_grid(space)
    recorded = {
        t.user_attrs.get("key") for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    }
    todo = [p for p in grid_points(grid) if point_key(p) not in recorded]
    outcomes: dict[str, HeadOutcome] = {}
    cached: CachedFeatures | None = None
    if todo:
        cached, spec, start = head_features(cfg, prepared)
        began = time.perf_counter()  # the trials' own time: training, not the one feature extraction
        tc = cfg.train.resolved()
        trained = train_heads(
            [_point(apply_params(cfg, p)) for p in todo], cached.select("train", with_copies=True),
            cached.select("val", with_copies=False), spec.task, spec.num_outputs, tc.hidden, int(tc.epochs or 0),
            int(tc.patience or 0), cfg.data.seed, balanced=is_balanced(tc.balance),
            groups=cached_groups(tc.balance, cached, prepared), checkpoint_dir=out / STACKED_DIR, init=start,
        )  # fmt: skip
        seconds = (time.perf_counter() - began) / len(todo)
        distributions = {name: optuna.distributions.CategoricalDistribution(values) for name, values in grid.items()}
        for params, outcome in zip(todo, trained, strict=True):
            outcomes[point_key(params)] = outcome
            study.add_trial(_trial(params, outcome, distributions, out / trials_dir / point_key(params), seconds))
    rows = [_row(t, cfg) for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))]
    best = min(rows, key=LeaderboardRow.sort_key)
    key = point_key({name: best.params[name] for name in grid})
    if cached is not None and key in outcomes and not (Path(best.run) / RunDir.weights).is_file():
        outcome = outcomes[key]
        params = {name: best.params[name] for name in grid}
        write_head_run(apply_params(cfg, params), prepared, Path(best.run), outcome.best_state, outcome.history,
                       outcome.best_epoch, outcome.best_val_loss, cached)  # fmt: skip
    return rows


def _best_row(outcome: HeadOutcome) -> dict[str, float]:
    return next(r for r in outcome.history if int(r["epoch"]) == outcome.best_epoch)


def _trial(
    params: dict[str, Any], outcome: HeadOutcome, distributions: dict[str, Any], run_dir: Path, seconds: float
) -> optuna.trial.FrozenTrial:
    best = _best_row(outcome)
    metrics = {m: float(best[m]) for m in VAL_METRICS if m in best}
    attrs = {"key": point_key(params), "run_dir": str(run_dir), "epochs_run": outcome.epochs_run,
             "best_epoch": outcome.best_epoch, "wall_seconds": round(seconds, 3), "stacked": True}  # fmt: skip
    attrs |= metrics
    return optuna.trial.create_trial(
        state=optuna.trial.TrialState.COMPLETE, value=metrics["val_f1"], params=params,
        distributions={k: distributions[k] for k in params}, user_attrs=attrs,
    )  # fmt: skip


def _row(trial: optuna.trial.FrozenTrial, cfg: Config) -> LeaderboardRow:
    attrs = trial.user_attrs
    settings = apply_params(cfg, trial.params).train.resolved()
    return LeaderboardRow(
        run=attrs["run_dir"],
        settings={d: getattr(settings, d) for d in SETTINGS},
        metrics={m: float(attrs[m]) for m in VAL_METRICS if attrs.get(m) is not None},
        best_epoch=int(attrs.get("best_epoch", -1)),
        epochs_run=int(attrs.get("epochs_run", 0)),
        train_seconds=float(attrs.get("wall_seconds", 0.0)),
        params={"trial": trial.number, **trial.params},
    )
