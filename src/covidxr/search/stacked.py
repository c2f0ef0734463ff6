"""Points on shared features, trained together: when every point varies only the head (learning rate, batch
size, optimizer, dropout, weight decay, momentum) on one backbone's cached features, the points train as one
stacked model (training.stacked) instead of one run each — the whole grid at once, or a drawing sampler's
(TPE, random) points in batches of `DRAW_BATCH` suggested together. Each point is still an Optuna trial, with
its validation metrics at its best epoch; no trial builds a backbone or writes a network — only the winner is
made into a run. A killed search resumes from the stacked checkpoints; points already recorded are not trained
again, and a killed batch's points are drawn again first.
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import Any

import optuna

from covidxr.config import Config, TrainConfig
from covidxr.data.prepare import PreparedData
from covidxr.results import SETTINGS, VAL_METRICS, LeaderboardRow
from covidxr.rundir import RunDir
from covidxr.search.grid import Space, apply_params, as_grid, grid_points, point_key
from covidxr.search.samplers import suggest
from covidxr.training.feature_cache import CachedFeatures
from covidxr.training.job import cached_groups, head_features, write_head_run
from covidxr.training.sampling import is_balanced
from covidxr.training.stacked import HeadOutcome, HeadPoint, train_heads

HEAD_FIELDS = frozenset({"lr", "batch_size", "optimizer", "dropout", "weight_decay", "momentum"})
STACKED_DIR = "stacked"  # the stacked heads' checkpoints, inside the search folder
DRAW_BATCH = 8  # a drawing sampler's points suggested, trained and told together
COMPLETE = optuna.trial.TrialState.COMPLETE


def stackable(cfg: Config, space: Space, workers: int = 1, storage_url: str | None = None) -> bool:
    """Whether the points can train together: a space over head settings only, a frozen backbone with the
    feature cache, the study's MLP head, one process, no class-weighted loss — and one worker on this machine's
    own study (workers, or machines sharing a study, split the points one at a time)."""
    tc = cfg.train
    return (
        set(space) <= HEAD_FIELDS and tc.freeze == "head" and tc.feature_cache
        and tc.head == "mlp" and tc.balance != "weights" and _single_process(tc) and workers == 1
        and storage_url is None
    )  # fmt: skip


def _single_process(tc: TrainConfig) -> bool:
    """Training in this process alone, in full precision on the CPU: where the stacked heads run."""
    single = tc.strategy == "auto" and str(tc.devices) in ("auto", "1") and tc.num_nodes == 1
    return single and tc.accelerator in ("auto", "cpu") and tc.precision == "32-true"


def _point(cfg: Config) -> HeadPoint:
    tc = cfg.train.resolved()
    return HeadPoint(float(tc.lr or 0), tc.optimizer, tc.dropout, tc.batch_size, tc.weight_decay, tc.momentum,
                     plateau=tc.lr_schedule == "plateau")  # fmt: skip


def stacked_search(
    cfg: Config, space: Space, out: Path, study: optuna.Study, prepared: PreparedData, trials_dir: str,
    sampler: str = "grid", trials: int = 0,
) -> tuple[list[LeaderboardRow], CachedFeatures | None]:  # fmt: skip
    """Train the points not yet recorded in `study` together (the grid's; else `trials` drawn in batches), record
    each as a trial, make the best point into a run (`out/<trials_dir>/<key>`); returns every point's row, and
    the features the best point's head was trained on here (None: it was trained before this process)."""
    heads = _Heads(cfg, prepared, out, trials_dir)
    if sampler == "grid":
        grid = as_grid(space)
        recorded = {t.user_attrs.get("key") for t in study.get_trials(deepcopy=False, states=(COMPLETE,))}
        todo = [p for p in grid_points(grid) if point_key(p) not in recorded]
        distributions = {name: optuna.distributions.CategoricalDistribution(values) for name, values in grid.items()}
        for params, attrs in heads.train(todo, out / STACKED_DIR):
            study.add_trial(optuna.trial.create_trial(
                state=COMPLETE, value=attrs["val_f1"], params=params,
                distributions={k: distributions[k] for k in params}, user_attrs=attrs,
            ))  # fmt: skip
    else:
        _draw_in_batches(heads, space, study, trials)
    # a drawing sampler may draw a point twice: one row per point, as one run per point gives
    first: dict[str, optuna.trial.FrozenTrial] = {}
    for t in study.get_trials(deepcopy=False, states=(COMPLETE,)):
        first.setdefault(t.user_attrs["key"], t)
    rows = [_row(t, cfg) for t in first.values()]
    best = min(rows, key=LeaderboardRow.sort_key)
    params = {name: best.params[name] for name in space}
    won = heads.outcomes.get(point_key(params))
    if heads.features is None or won is None:
        return rows, None
    if not (Path(best.run) / RunDir.weights).is_file():
        write_head_run(apply_params(cfg, params), prepared, Path(best.run), won.best_state, won.history,
                       won.best_epoch, won.best_val_loss, heads.features[0])  # fmt: skip
    return rows, heads.features[0]


class _Heads:
    """Trains batches of points on the features (extracted once, on the first batch); keeps each outcome."""

    def __init__(self, cfg: Config, prepared: PreparedData, out: Path, trials_dir: str) -> None:
        self.cfg, self.prepared, self.out, self.trials_dir = cfg, prepared, out, trials_dir
        self.features: tuple[CachedFeatures, Any, Any] | None = None
        self.outcomes: dict[str, HeadOutcome] = {}

    def train(self, points: list[dict[str, Any]], checkpoints: Path) -> list[tuple[dict[str, Any], dict[str, Any]]]:
        """(params, trial attributes) per point, in order; the outcomes are kept by point key."""
        if not points:
            return []
        if self.features is None:
            self.features = head_features(self.cfg, self.prepared)
        cached, spec, start = self.features
        began = time.perf_counter()  # the trials' own time: training, not the one feature extraction
        tc = self.cfg.train.resolved()
        trained = train_heads(
            [_point(apply_params(self.cfg, p)) for p in points], cached.select("train", with_copies=True),
            cached.select("val", with_copies=False), spec.task, spec.num_outputs, tc.hidden, int(tc.epochs or 0),
            int(tc.patience or 0), self.cfg.data.seed, balanced=is_balanced(tc.balance),
            groups=cached_groups(tc.balance, cached, self.prepared), checkpoint_dir=checkpoints, init=start,
        )  # fmt: skip
        seconds = (time.perf_counter() - began) / len(points)
        done = []
        for params, outcome in zip(points, trained, strict=True):
            self.outcomes[point_key(params)] = outcome
            run_dir = self.out / self.trials_dir / point_key(params)
            done.append((params, _attrs(params, outcome, run_dir, seconds)))
        return done


def _draw_in_batches(heads: _Heads, space: Space, study: optuna.Study, trials: int) -> None:
    """TPE or random: ask a batch of points, train them together, tell each, until `trials` are complete. A
    batch a kill left running is drawn again first (same points, so its checkpoint resumes)."""
    for left in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        study.tell(left.number, state=optuna.trial.TrialState.FAIL)  # one worker on this study: its process died
        study.enqueue_trial(left.params)
    while (complete := len(study.get_trials(deepcopy=False, states=(COMPLETE,)))) < trials:
        asked = [study.ask() for _ in range(min(DRAW_BATCH, trials - complete))]
        points = [suggest(t, space) for t in asked]
        tag = hashlib.sha256(" ".join(point_key(p) for p in points).encode()).hexdigest()[:12]
        for trial, (_, attrs) in zip(asked, heads.train(points, heads.out / STACKED_DIR / f"draw-{tag}"),
                                     strict=True):  # fmt: skip
            for name, value in attrs.items():
                trial.set_user_attr(name, value)
            study.tell(trial, attrs["val_f1"])


def _best_row(outcome: HeadOutcome) -> dict[str, float]:
    return next(r for r in outcome.history if int(r["epoch"]) == outcome.best_epoch)


def _attrs(params: dict[str, Any], outcome: HeadOutcome, run_dir: Path, seconds: float) -> dict[str, Any]:
    """A point's trial attributes: its key, where its run would be, epochs, and val metrics at its best epoch."""
    best = _best_row(outcome)
    attrs: dict[str, Any] = {
        "key": point_key(params),
        "run_dir": str(run_dir),
        "epochs_run": outcome.epochs_run,
        "best_epoch": outcome.best_epoch,
        "wall_seconds": round(seconds, 3),
        "stacked": True,
    }
    return attrs | {m: float(best[m]) for m in VAL_METRICS if m in best}  # fmt: skip


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
