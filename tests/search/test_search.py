"""Grid search: every point once, ordered leaderboard, winner tested once; resumable after kill -9; two
workers never run a point twice (on SQLite and on a real PostgreSQL server, one worker killed); a failing point is
retried once; test labels never steer the ranking."""

from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import optuna
import pytest
import sqlalchemy
import yaml

from covidxr.config import Config, DataConfig, TrainConfig
from covidxr.engine.history import read_history
from covidxr.errors import CovidxrError
from covidxr.evaluation.job import evaluate_run
from covidxr.results import LeaderboardRow
from covidxr.rundir import RunDir
from covidxr.search.grid import Range, grid_points, load_grid, point_key
from covidxr.search.job import search, storage_for
from covidxr.search.samplers import make_sampler, suggest
from tests.imagefiles import flip_test_labels

pytestmark = pytest.mark.slow  # trains a model or starts a server: in `make test`, not in `make test-fast`

GRID = {"lr": [0.001, 0.0001], "batch_size": [16, 32]}


def _cfg(data: Path, cache: Path) -> Config:
    return Config(DataConfig(paths=(str(data),)), TrainConfig(epochs=3, cache_dir=str(cache)))


def _storage_made(out: Path) -> bool:
    """Whether the search has made its storage (tables and version stamp), read without writing: opening an
    Optuna RDB storage creates what is missing, and would race a search doing the same (UNIQUE constraint on
    alembic_version)."""
    db = RunDir(out).search_db
    if not db.is_file():
        return False
    try:
        with closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as con:
            return con.execute("SELECT count(*) FROM alembic_version").fetchone()[0] > 0
    except sqlite3.Error:
        return False


def _completed(out: Path) -> Counter[str]:
    if not _storage_made(out):
        return Counter()
    try:
        study = optuna.load_study(study_name="covidxr-search", storage=storage_for(out, None))
    except (KeyError, sqlalchemy.exc.OperationalError):  # the search is still creating its study or tables
        return Counter()
    done = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    return Counter(t.user_attrs["key"] for t in done)


def _grid_file(tmp_path: Path, grid: dict) -> Path:
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump(grid))
    return path


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("search-cache")


def test_every_point_once_ordered_leaderboard_winner_tested_once(phantoms: Path, cache: Path, tmp_path: Path) -> None:
    result = search(_cfg(phantoms, cache), GRID, tmp_path / "s", n_resamples=50)
    assert _completed(tmp_path / "s") == {point_key(p): 1 for p in grid_points(GRID)}
    board = LeaderboardRow.read_all(tmp_path / "s" / "leaderboard.csv")
    assert len(board) == 4 and {(r.value("lr"), r.value("batch_size")) for r in board} == {
        (p["lr"], p["batch_size"]) for p in grid_points(GRID)
    }
    keys = [(r.metrics["val_f1"], r.metrics["val_auc"]) for r in board]
    assert keys == sorted(keys, reverse=True)
    assert list((tmp_path / "s" / "trials").glob("*/metrics.json")) == [result.winner / "metrics.json"]
    html = result.report.read_text()
    assert 'id="comparison"' in html and "Best per backbone" in html


def test_a_failing_point_is_retried_once_and_the_rest_finish(phantoms: Path, cache: Path, tmp_path: Path) -> None:
    grid = {"freeze": ["last-k"], "last_k": [1, 0]}  # k = 0 is refused by the trainer: that point fails
    result = search(_cfg(phantoms, cache), grid, tmp_path / "s", n_resamples=20)
    study = optuna.load_study(study_name="covidxr-search", storage=storage_for(tmp_path / "s", None))
    failed = [t for t in study.get_trials() if t.state == optuna.trial.TrialState.FAIL]
    assert len(failed) == 2 and all(t.params["last_k"] == 0 for t in failed)  # first try + one retry
    assert [r.value("last_k") for r in result.rows] == [1]
    with pytest.raises(CovidxrError, match="optimizer = 'lbfgs' is not one of"):  # a bad choice: before any trial
        search(_cfg(phantoms, cache), {"optimizer": ["adam", "lbfgs"]}, tmp_path / "bad", n_resamples=20)
    assert not (tmp_path / "bad" / "trials").exists()
    result_again = search(_cfg(phantoms, cache), grid, tmp_path / "s", n_resamples=20)  # nothing left to do
    assert len(optuna.load_study(study_name="covidxr-search", storage=storage_for(tmp_path / "s", None)).trials) == 3
    assert result_again.winner == result.winner


def _search_cli(data: Path, grid: Path, out: Path, cache: Path, *extra: str) -> list[str]:
    config = out.parent / f"{out.name}.yaml"
    config.write_text(yaml.safe_dump({"train": {"epochs": 3, "cache_dir": str(cache)}}))
    command = ["search", "--data", str(data), "--grid", str(grid), "--out", str(out), "--config", str(config)]
    return [sys.executable, "-m", "covidxr", *command, "--bootstrap", "20", *extra]


def test_killed_search_resumes_without_running_a_point_twice(phantoms: Path, cache: Path, tmp_path: Path) -> None:
    grid = {"lr": [0.001, 0.0003], "batch_size": [16, 32]}
    command = _search_cli(phantoms, _grid_file(tmp_path, grid), tmp_path / "s", cache, "--one-at-a-time")
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while proc.poll() is None and time.monotonic() < deadline:
        if (tmp_path / "s" / "search.db").exists() and sum(_completed(tmp_path / "s").values()) >= 2:
            break
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert 2 <= sum(_completed(tmp_path / "s").values()) < 4, "kill the search while it still has points to run"
    again = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr
    assert _completed(tmp_path / "s") == {point_key(p): 1 for p in grid_points(grid)}
    assert "winner:" in again.stdout


def test_stacked_heads_rank_the_grid_as_one_run_per_point_does(phantoms: Path, cache: Path, tmp_path: Path) -> None:
    grid = {"lr": [0.01, 0.00003], "optimizer": ["adam", "sgd"], "dropout": [0.6], "batch_size": [8, 32]}
    together = search(_cfg(phantoms, cache), grid, tmp_path / "together", n_resamples=20)
    (tmp_path / "alone").mkdir()
    shutil.copy(tmp_path / "together" / "splits.csv", tmp_path / "alone" / "splits.csv")
    alone = search(_cfg(phantoms, cache), grid, tmp_path / "alone", n_resamples=20, stacked=False)
    runs = list((tmp_path / "together" / "trials").glob("*/best.safetensors"))
    assert runs == [together.winner / "best.safetensors"]  # no trial but the winner wrote a network
    assert len(list((tmp_path / "alone" / "trials").glob("*/best.safetensors"))) == 8

    def by_point(rows: list[LeaderboardRow]) -> dict[tuple[object, ...], float]:
        return {tuple(r.value(k) for k in grid): r.metrics["val_f1"] for r in rows}

    f1_together, f1_alone = by_point(together.rows), by_point(alone.rows)
    assert f1_together.keys() == f1_alone.keys() and len(f1_together) == 8
    assert all(abs(f1_together[k] - f1_alone[k]) <= 0.005 for k in f1_alone)
    assert [tuple(r.value(k) for k in grid) for r in together.rows] == [
        tuple(r.value(k) for k in grid) for r in alone.rows
    ]  # the same ranking
    assert together.metrics.test.metrics == pytest.approx(alone.metrics.test.metrics, abs=1e-4)
    # the winner was scored by its head on the features it trained on; through its network it scores the same
    through_network = evaluate_run(together.winner, n_resamples=20)
    assert through_network.calibration.temperature == pytest.approx(together.metrics.calibration.temperature, rel=1e-4)
    assert through_network.test.metrics == pytest.approx(together.metrics.test.metrics, abs=1e-5)


def test_a_stacked_search_killed_mid_training_resumes_from_its_checkpoint(
    phantoms: Path, cache: Path, tmp_path: Path
) -> None:
    grid = {"lr": [0.001, 0.0003], "dropout": [0.3, 0.5]}
    config = tmp_path / "long.yaml"
    config.write_text(yaml.safe_dump({"train": {"epochs": 400, "patience": 400, "cache_dir": str(cache)}}))
    command = [
        sys.executable, "-m", "covidxr", "search", "--data", str(phantoms), "--grid", str(_grid_file(tmp_path, grid)),
        "--out", str(tmp_path / "s"), "--config", str(config), "--bootstrap", "20",
    ]  # fmt: skip
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    checkpoint = tmp_path / "s" / "stacked" / "heads-batch16.pt"
    deadline = time.monotonic() + 300
    while proc.poll() is None and time.monotonic() < deadline and not checkpoint.is_file():
        time.sleep(0.2)
    time.sleep(1)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    import torch

    saved_epoch = torch.load(checkpoint, weights_only=True)["epoch"]
    assert 0 < saved_epoch < 400 and sum(_completed(tmp_path / "s").values()) == 0  # killed mid-training
    again = subprocess.run(command, capture_output=True, text=True, timeout=900)
    assert again.returncode == 0, again.stderr
    assert _completed(tmp_path / "s") == {point_key(p): 1 for p in grid_points(grid)}
    history = (next((tmp_path / "s" / "trials").glob("*/history.csv"))).read_text().splitlines()
    assert len(history) == 401  # the winner's 400 epochs, the ones before the kill included


def test_two_workers_share_one_storage_without_duplicates(phantoms: Path, cache: Path, tmp_path: Path) -> None:
    grid = {"lr": [0.001, 0.0003], "batch_size": [16, 32]}
    out = subprocess.run(
        _search_cli(phantoms, _grid_file(tmp_path, grid), tmp_path / "s", cache, "--workers", "2"),
        capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert _completed(tmp_path / "s") == {point_key(p): 1 for p in grid_points(grid)}


def test_shuffled_test_labels_leave_the_ranking_unchanged(phantoms: Path, cache: Path, tmp_path: Path) -> None:
    first = search(_cfg(phantoms, cache), GRID, tmp_path / "a", n_resamples=20)
    data = flip_test_labels(phantoms, tmp_path / "a" / "splits.csv", tmp_path / "flipped")
    (tmp_path / "b").mkdir()
    shutil.copy(tmp_path / "a" / "splits.csv", tmp_path / "b" / "splits.csv")  # the same patients in test
    second = search(_cfg(data, cache), GRID, tmp_path / "b", n_resamples=20)
    ranking = [(r.value("lr"), r.value("batch_size"), r.value("val_f1"), r.value("val_auc")) for r in first.rows]
    assert ranking == [
        (r.value("lr"), r.value("batch_size"), r.value("val_f1"), r.value("val_auc")) for r in second.rows
    ]
    assert second.metrics.test.metrics["roc_auc"] < 0.5 < first.metrics.test.metrics["roc_auc"]


def test_grid_files_are_checked_and_offline_weights_stop_before_any_trial(phantoms: Path, tmp_path: Path) -> None:
    repo = Path(__file__).resolve().parents[2]
    assert len(grid_points(load_grid(repo / "grids" / "seed.yaml"))) == 216
    assert len(grid_points(load_grid(repo / "grids" / "quick.yaml"))) == 8
    with pytest.raises(CovidxrError, match="not a training field"):
        load_grid(_grid_file(tmp_path, {"learning_rate": [0.1]}))
    with pytest.raises(CovidxrError, match="no ImageNet weights for resnet50"):
        search(_cfg(phantoms, tmp_path / "c"), load_grid(repo / "grids" / "seed.yaml"), tmp_path / "s")
    assert not (tmp_path / "s").exists()


@pytest.fixture(scope="module")
def postgres_url() -> Iterator[str]:
    from tests.postgres import pg_bindir, postgres_server

    bindir = pg_bindir()
    if bindir is None:
        if os.environ.get("CI"):
            pytest.fail("PostgreSQL is not installed; .ci/run installs Debian's postgresql")
        pytest.skip("PostgreSQL is not installed here (apt-get install postgresql; CI installs it)")
    with postgres_server(bindir) as url:
        yield url


def test_two_machines_on_postgresql_one_killed_finish_the_grid_once(
    phantoms: Path, cache: Path, tmp_path: Path, postgres_url: str
) -> None:
    """Two worker processes with their own folders (as on two machines) share a real PostgreSQL study; one is
    SIGKILLed mid-trial and restarted; every grid point completes exactly once and both leaderboards are whole."""
    grid = {"lr": [0.001, 0.0003, 0.0001], "batch_size": [16, 32]}
    grid_file = _grid_file(tmp_path, grid)
    a, b = (_search_cli(phantoms, grid_file, tmp_path / name, cache, "--storage", postgres_url) for name in ("a", "b"))
    log = (tmp_path / "a.log").open("w")
    first = subprocess.Popen(a, stdout=log, stderr=subprocess.STDOUT)
    second = subprocess.Popen(b, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 600
    trials = tmp_path / "a" / "trials"
    while time.monotonic() < deadline and first.poll() is None:  # kill worker a inside a trial it holds
        if trials.is_dir() and any(not (d / "state.json").is_file() or "running" in (d / "state.json").read_text()
                                   for d in trials.iterdir()):  # fmt: skip
            break
        time.sleep(0.05)
    assert first.poll() is None, (tmp_path / "a.log").read_text()[-3000:]
    os.kill(first.pid, signal.SIGKILL)
    first.wait()
    study = optuna.load_study(study_name="covidxr-search", storage=postgres_url)
    assert any(t.state == optuna.trial.TrialState.RUNNING for t in study.get_trials()), "killed while holding one"
    again = subprocess.run(a, capture_output=True, text=True, timeout=900)
    out_b, err_b = second.communicate(timeout=900)
    assert again.returncode == 0 and second.returncode == 0, again.stderr[-2000:] + err_b[-2000:]
    trials_done = optuna.load_study(study_name="covidxr-search", storage=postgres_url).get_trials()
    complete = Counter(t.user_attrs["key"] for t in trials_done if t.state == optuna.trial.TrialState.COMPLETE)
    assert complete == {point_key(p): 1 for p in grid_points(grid)}  # every point once, none twice
    assert any(t.state == optuna.trial.TrialState.FAIL for t in trials_done)  # the killed trial, failed by heartbeat
    for out in (tmp_path / "a", tmp_path / "b"):
        board = LeaderboardRow.read_all(out / "leaderboard.csv")
        assert {(r.value("lr"), r.value("batch_size")) for r in board} == {
            (p["lr"], p["batch_size"]) for p in grid_points(grid)
        }
    assert "winner:" in again.stdout and "winner:" in out_b


def test_tpe_runs_its_trials_once_prunes_on_val_loss_and_keeps_its_sampler(
    phantoms: Path, cache: Path, tmp_path: Path
) -> None:
    space = {"lr": Range(1e-5, 1e-1, log=True), "batch_size": [16, 32]}
    cfg = Config(DataConfig(paths=(str(phantoms),)), TrainConfig(epochs=5, cache_dir=str(cache)))
    result = search(cfg, space, tmp_path / "s", n_resamples=20, sampler="tpe", trials=5, stacked=False)
    study = optuna.load_study(study_name="covidxr-search", storage=storage_for(tmp_path / "s", None))
    states = Counter(t.state for t in study.trials)
    assert len(study.trials) == 5 and set(states) <= {optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED}
    assert all(1e-5 <= t.params["lr"] <= 1e-1 for t in study.trials)
    for t in study.trials:  # every trial reported its validation loss per epoch, the pruned ones stopped early
        history = read_history(tmp_path / "s" / "trials" / t.user_attrs["key"] / "history.csv")
        assert [-float(r["val_loss"]) for r in history] == pytest.approx(list(t.intermediate_values.values()), abs=1e-5)
        assert t.state == optuna.trial.TrialState.COMPLETE or len(history) < 5
    assert len(result.rows) == states[optuna.trial.TrialState.COMPLETE]
    assert list((tmp_path / "s" / "trials").glob("*/metrics.json")) == [result.winner / "metrics.json"]
    search(cfg, space, tmp_path / "s", n_resamples=20, sampler="tpe", trials=5, stacked=False)  # nothing left
    assert len(optuna.load_study(study_name="covidxr-search", storage=storage_for(tmp_path / "s", None)).trials) == 5
    with pytest.raises(CovidxrError, match="started with --sampler tpe"):
        search(cfg, space, tmp_path / "s", n_resamples=20, sampler="random", trials=5)


def test_drawn_points_train_as_stacked_batches_as_one_run_each_would(
    phantoms: Path, cache: Path, tmp_path: Path
) -> None:
    """The random sampler (seeded) draws the same points either way: stacked in batches they rank as one run per
    trial ranks them, val F1 within 0.005; only the winner writes a network. A batch a kill left running is drawn
    again first."""
    space = {"lr": Range(1e-4, 1e-2, log=True), "dropout": [0.3, 0.6], "batch_size": [16, 32]}
    cfg = Config(DataConfig(paths=(str(phantoms),)), TrainConfig(epochs=3, cache_dir=str(cache)))  # none pruned
    stacked_dir = tmp_path / "together"
    stacked_dir.mkdir()
    killed = optuna.create_study(
        study_name="covidxr-search", storage=storage_for(stacked_dir, None),
        sampler=make_sampler("random", space, cfg.data.seed), direction="maximize",
    )  # fmt: skip
    left = killed.ask()  # a point drawn and being trained when its process died
    left_params = suggest(left, space)
    killed.set_user_attr("sampler", "random")
    together = search(cfg, space, stacked_dir, n_resamples=20, sampler="random", trials=10)
    study = optuna.load_study(study_name="covidxr-search", storage=storage_for(stacked_dir, None))
    assert study.trials[0].state == optuna.trial.TrialState.FAIL and study.trials[1].params == left_params
    assert Counter(t.state for t in study.trials)[optuna.trial.TrialState.COMPLETE] == 10
    assert len(together.rows) == len({t.user_attrs["key"] for t in study.trials if t.user_attrs})  # a row a point
    assert list((stacked_dir / "trials").glob("*/best.safetensors")) == [together.winner / "best.safetensors"]

    (tmp_path / "alone").mkdir()
    shutil.copy(stacked_dir / "splits.csv", tmp_path / "alone" / "splits.csv")
    alone = optuna.create_study(
        study_name="covidxr-search", storage=storage_for(tmp_path / "alone", None),
        sampler=make_sampler("random", space, cfg.data.seed), direction="maximize",
    )  # fmt: skip
    alone.set_user_attr("sampler", "random")
    alone.enqueue_trial(left_params)  # the same first point, as the stacked search drew it again
    one_each = search(cfg, space, tmp_path / "alone", n_resamples=20, sampler="random", trials=10, stacked=False)

    def by_point(rows: list[LeaderboardRow]) -> dict[tuple[object, ...], float]:
        return {tuple(r.value(k) for k in space): r.metrics["val_f1"] for r in rows}

    f1_together, f1_alone = by_point(together.rows), by_point(one_each.rows)
    assert f1_together.keys() == f1_alone.keys()
    assert all(abs(f1_together[k] - f1_alone[k]) <= 0.005 for k in f1_alone)
    assert [tuple(r.value(k) for k in space) for r in together.rows] == [
        tuple(r.value(k) for k in space) for r in one_each.rows
    ]  # the same ranking


def test_a_drawing_sampler_retries_a_failed_trial_once_and_stops_when_all_fail(
    phantoms: Path, cache: Path, tmp_path: Path
) -> None:
    space = {"freeze": ["last-k"], "last_k": [0]}  # k = 0 is refused by the trainer: every trial fails
    with pytest.raises(CovidxrError, match="no trial finished"):
        search(_cfg(phantoms, cache), space, tmp_path / "s", n_resamples=20, sampler="random", trials=2)
    study = optuna.load_study(study_name="covidxr-search", storage=storage_for(tmp_path / "s", None))
    assert len(study.trials) == 6 and all(t.state == optuna.trial.TrialState.FAIL for t in study.trials)
    retried = optuna.storages.RetryHeartbeatStaleTrialCallback.retried_trial_number
    retries = [t for t in study.trials if retried(t) is not None]
    assert retries and all(study.trials[retried(t)].params == t.params for t in retries)
    assert len({retried(t) for t in retries}) == len(retries)  # each failure retried once at most
