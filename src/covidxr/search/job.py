"""Hyperparameter search with Optuna, chosen on validation F1 (ties: val AUC), confirmed once on test: the
study's grid (every point exactly once, the default) or `--sampler tpe|random` drawing `--trials N` points, pruned
on validation loss. Resumable and shareable: trials live in an Optuna storage (SQLite in the output folder by
default, or any SQLAlchemy URL so workers on many machines share one study).

A failed trial — one that raised, or one whose heartbeat stopped (a killed worker) — is queued again once, with
its values, by Optuna's own retry callback, so its run resumes from its checkpoint. Optuna's GridSampler counts
failed trials as done and, once every point has started, hands out running points again; so each worker loop
here also stops when nothing is left to start and skips a point another worker already holds.
"""

from __future__ import annotations

import json
import logging
import multiprocessing as mp
import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import torch

from covidxr.atomic import write_text
from covidxr.config import Config
from covidxr.data.prepare import PreparedData, prepare
from covidxr.errors import CovidxrError
from covidxr.models.registry import get_backbone
from covidxr.models.weights import check_weights
from covidxr.results import VAL_METRICS, Evaluation, LeaderboardRow
from covidxr.run import Run
from covidxr.rundir import RunDir
from covidxr.search.grid import Space, apply_params, as_grid, grid_points, point_key
from covidxr.search.leaderboard import LEADERBOARD_FILE, run_row, search_plots, sort_rows, write_leaderboard
from covidxr.search.samplers import make_pruner, make_sampler, pruning_reporter, suggest
from covidxr.search.stacked import stackable, stacked_search

HEARTBEAT_S = 2
GRACE_S = 8
MAX_RETRIES = 1
TRIALS_DIR = RunDir.trials
DRAW_LIMIT = 3  # a drawing sampler stops after this many times --trials started trials (all failing, say)


@dataclass
class SearchResult:
    out: Path
    rows: list[LeaderboardRow]
    winner: Path
    metrics: Evaluation
    report: Path


with warnings.catch_warnings():
    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # stable in use since Optuna 2.8
    RETRY = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRIES)


def retry_failed(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
    """An optimize callback: a trial that raised is queued again (as the storage does for a stale heartbeat)."""
    if trial.state == optuna.trial.TrialState.FAIL:
        RETRY(study, trial)


def storage_for(out: Path, url: str | None) -> optuna.storages.RDBStorage:
    url = url or f"sqlite:///{RunDir(out).search_db.resolve()}"
    kwargs = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # heartbeats: stable since 2.x
        return optuna.storages.RDBStorage(
            url, engine_kwargs=kwargs, heartbeat_interval=HEARTBEAT_S, grace_period=GRACE_S,
            heartbeat_stale_trial_callback=RETRY,
        )  # fmt: skip


def _load_study(
    storage_url: str | None, out: Path, name: str, space: Space, seed: int, sampler: str = "grid", tries: int = 6
) -> optuna.Study:
    """Create or join the study. Workers started together on an empty database race to create its tables and
    the study; the loser gets a database error or a duplicate, and simply joins on the next try. A study keeps
    the sampler it was started with: resuming it with another one is refused."""
    import sqlalchemy

    attempt = 0
    while True:
        try:
            study = optuna.create_study(
                study_name=name, storage=storage_for(out, storage_url), sampler=make_sampler(sampler, space, seed),
                pruner=make_pruner(sampler), direction="maximize", load_if_exists=True,
            )  # fmt: skip
            break
        except (sqlalchemy.exc.SQLAlchemyError, optuna.exceptions.DuplicatedStudyError):
            attempt += 1
            if attempt == tries:
                raise
            time.sleep(0.5 * attempt)
    started_with = study.user_attrs.get("sampler")
    if started_with is None:
        study.set_user_attr("sampler", sampler)
    elif started_with != sampler:
        raise CovidxrError(f"study {name!r} was started with --sampler {started_with}; resume it with the same")
    return study


def _point_states(study: optuna.Study, grid: Space) -> dict[str, str]:
    """Per grid point: complete | running (or queued again) | failed (every try failed: the retry callback
    queues a failed point again at once while it has retries left) | pending."""
    by_key: dict[str, list[optuna.trial.FrozenTrial]] = {}
    for t in study.get_trials(deepcopy=False):
        by_key.setdefault(t.user_attrs.get("key", point_key(t.params)), []).append(t)
    states = {}
    for params in grid_points(grid):
        trials = by_key.get(point_key(params), [])
        kinds = {t.state for t in trials}
        if optuna.trial.TrialState.COMPLETE in kinds:
            states[point_key(params)] = "complete"
        elif optuna.trial.TrialState.RUNNING in kinds or optuna.trial.TrialState.WAITING in kinds:
            states[point_key(params)] = "running"
        elif kinds == {optuna.trial.TrialState.FAIL}:
            states[point_key(params)] = "failed"
        else:
            states[point_key(params)] = "pending"
    return states


def _objective(cfg: Config, space: Space, out: Path, study: optuna.Study, prepared: PreparedData, sampler: str):
    from covidxr.training.job import CONFIG_FILE, train

    def objective(trial: optuna.Trial) -> float:
        params = suggest(trial, space)
        key = point_key(params)
        trial.set_user_attr("key", key)
        for other in study.get_trials(deepcopy=False) if sampler == "grid" else ():
            same = other.number != trial.number and other.user_attrs.get("key") == key
            taken = other.state == optuna.trial.TrialState.COMPLETE or (
                other.state == optuna.trial.TrialState.RUNNING and other.number < trial.number
            )
            if same and taken:
                trial.set_user_attr("duplicate_of", other.number)
                raise optuna.TrialPruned(f"grid point {key} is already held by trial {other.number}")
        run_dir = out / TRIALS_DIR / key  # a point drawn again reuses its finished run (or resumes it)
        start = time.perf_counter()  # one inspection and one split for the whole search
        on_epoch = None if sampler == "grid" else pruning_reporter(trial)
        resume = (run_dir / CONFIG_FILE).exists()
        train(apply_params(cfg, params), run_dir, resume=resume, prepared=prepared, on_epoch=on_epoch)
        row = run_row(run_dir)
        trial.set_user_attr("run_dir", str(run_dir))
        trial.set_user_attr("wall_seconds", round(time.perf_counter() - start, 2))
        trial.set_user_attr("epochs_run", row.epochs_run)
        for name in ("val_auc", "val_precision", "val_recall"):
            trial.set_user_attr(name, row.metrics.get(name))
        return row.metrics["val_f1"]

    return objective


def work(
    cfg: Config,
    space: Space,
    out: Path,
    storage_url: str | None,
    name: str,
    threads: int | None = None,
    sampler: str = "grid",
    trials: int | None = None,
) -> int:
    """One worker: run trials until none is left to start. Returns how many trials it ran."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    if threads:
        torch.set_num_threads(threads)
    study = _load_study(storage_url, out, name, space, cfg.data.seed, sampler)
    prepared = prepare(out, cfg.data)  # reuses out/splits.csv
    objective = _objective(cfg, space, out, study, prepared, sampler)
    if sampler != "grid":
        return _draw(study, objective, trials or 1)
    grid = as_grid(space)
    ran = 0
    while True:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(study)
        states = _point_states(study, grid)
        if all(s in ("complete", "failed") for s in states.values()):
            return ran
        waiting = any(t.state == optuna.trial.TrialState.WAITING for t in study.get_trials(deepcopy=False))
        if not waiting and "pending" not in states.values():
            time.sleep(HEARTBEAT_S)  # the rest is running in other workers; wait for them or their heartbeat
            continue
        study.optimize(objective, n_trials=1, catch=(Exception,), callbacks=[retry_failed])
        ran += 1


def _draw(study: optuna.Study, objective: Any, trials: int) -> int:
    """A drawing sampler's worker: start trials until `trials` have finished (complete or pruned) or are
    running elsewhere (so not Optuna's MaxTrialsCallback, which counts finished trials only). A failed trial is
    queued again by the retry callback."""
    ran = 0
    while True:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(study)
        all_trials = study.get_trials(deepcopy=False)
        by_state = {s: [t for t in all_trials if t.state == s] for s in optuna.trial.TrialState}
        finished = len(by_state[optuna.trial.TrialState.COMPLETE]) + len(by_state[optuna.trial.TrialState.PRUNED])
        busy = len(by_state[optuna.trial.TrialState.RUNNING]) + len(by_state[optuna.trial.TrialState.WAITING])
        started = len(all_trials) - len(by_state[optuna.trial.TrialState.WAITING])
        if finished >= trials or started >= DRAW_LIMIT * trials:
            return ran
        if finished + busy >= trials and not by_state[optuna.trial.TrialState.WAITING]:
            time.sleep(HEARTBEAT_S)  # the last trials are running in other workers
            continue
        study.optimize(objective, n_trials=1, catch=(Exception,), callbacks=[retry_failed])
        ran += 1


def _preflight(space: Space, cfg: Config) -> None:
    """Stop before the first trial, with the clear error, on a value that is not a valid choice or on weights
    that cannot be had offline (a range is checked at both ends)."""
    ends = {name: v.ends() if not isinstance(v, list) else v for name, v in space.items()}
    for params in grid_points(ends):
        c = Config.from_dict(apply_params(cfg, params).to_dict())  # checks every choice field
        check_weights(get_backbone(c.train.backbone), c.train.weights)


def _run_workers(
    cfg: Config, grid: Space, out: Path, storage_url: str | None, name: str, workers: int, sampler: str,
    trials: int | None,
) -> None:  # fmt: skip
    if workers > 1:
        threads = max(1, (os.cpu_count() or 1) // workers)
        ctx = mp.get_context("spawn")
        procs = [
            ctx.Process(target=work, args=(cfg, grid, out, storage_url, name, threads, sampler, trials))
            for _ in range(workers - 1)
        ]
        for p in procs:
            p.start()
        work(cfg, grid, out, storage_url, name, threads, sampler, trials)
        for p in procs:
            p.join()
    else:
        work(cfg, grid, out, storage_url, name, sampler=sampler, trials=trials)


def _trial_rows(study: optuna.Study) -> list[LeaderboardRow]:
    """One row per finished run: from its folder, or from the storage where it ran on another machine."""
    rows, seen = [], set()
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
        run_dir = Path(t.user_attrs["run_dir"])
        if run_dir in seen:  # a drawing sampler may draw a point twice: one row per run
            continue
        seen.add(run_dir)
        if (run_dir / RunDir.state).is_file():
            rows.append(run_row(run_dir, {"trial": t.number, **t.params}))
        else:  # trained on another machine: keep its numbers from the storage
            metrics = {m: t.user_attrs[m] for m in VAL_METRICS if t.user_attrs.get(m) is not None}
            rows.append(LeaderboardRow(
                str(run_dir), {}, metrics | {"val_f1": float(t.value or 0.0)}, best_epoch=-1,
                epochs_run=t.user_attrs.get("epochs_run", 0), train_seconds=t.user_attrs.get("wall_seconds", 0.0),
                params={"trial": t.number, **t.params},
            ))  # fmt: skip
    return rows


def search(
    cfg: Config,
    grid: Space,
    out: Path | str,
    storage_url: str | None = None,
    study_name: str | None = None,
    workers: int = 1,
    n_resamples: int = 1000,
    sampler: str = "grid",
    trials: int | None = None,
    stacked: bool = True,
) -> SearchResult:
    """Run (or resume) the search, then evaluate the winner on test once and write its report. The grid runs
    every point, `tpe` and `random` run `trials` trials: together, as stacked heads (drawn points in batches),
    when the points differ only in head settings and one worker runs on this machine's study (unless `stacked`
    is False), else one run per point (drawn trials pruned on validation loss)."""
    from covidxr.evaluation.job import evaluate_run
    from covidxr.report.html import write_report
    from covidxr.training.job import train

    out = Path(out)
    if not cfg.data.paths:
        raise CovidxrError("no data set given (--data)")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    make_sampler(sampler, grid, cfg.data.seed)  # an unknown sampler, or a range on the grid: before anything runs
    if sampler != "grid" and not (trials and trials > 0):
        raise CovidxrError(f"--sampler {sampler} needs --trials N (how many points to draw)")
    _preflight(grid, cfg)
    out.mkdir(parents=True, exist_ok=True)
    prepared = prepare(out, cfg.data)
    write_text(out / RunDir.grid, json.dumps(grid, indent=2, default=vars))
    name = study_name or "covidxr-search"
    _load_study(storage_url, out, name, grid, cfg.data.seed, sampler)  # create it once, before workers race to
    features = None  # the features the winner's head was trained on in this process, if it was
    if stacked and stackable(cfg, grid, workers, storage_url):  # heads on the same features: together
        study = _load_study(storage_url, out, name, grid, cfg.data.seed, sampler)
        rows, features = stacked_search(cfg, grid, out, study, prepared, TRIALS_DIR, sampler, trials or 0)
    else:
        _run_workers(cfg, grid, out, storage_url, name, workers, sampler, trials)
        rows = _trial_rows(_load_study(storage_url, out, name, grid, cfg.data.seed, sampler))
    if not rows:
        raise CovidxrError(f"no trial finished; see the failed trials in {storage_url or RunDir(out).search_db}")
    rows = sort_rows(rows)
    winner = Path(rows[0].run)
    if not (winner / RunDir.weights).is_file():  # the winner ran elsewhere: retrain it here
        features = None
        params = {k: rows[0].value(k) for k in grid}
        winner = out / TRIALS_DIR / point_key(params)
        winner.mkdir(parents=True, exist_ok=True)
        (winner / RunDir.splits).write_bytes((out / RunDir.splits).read_bytes())
        train(apply_params(cfg, params), winner)
    write_leaderboard(rows, out / LEADERBOARD_FILE)
    write_leaderboard(rows, winner / LEADERBOARD_FILE)
    run = Run(winner, manifest=prepared.manifest, features=features)
    metrics = evaluate_run(run, n_resamples=n_resamples)  # the one and only look at the test split
    search_plots(rows, RunDir(winner).plots)
    return SearchResult(out, rows, winner, metrics, write_report(run))
