"""Training end to end: phantoms are learned, runs are complete and reload, resume is exact, the cache works."""

from __future__ import annotations

import csv
import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from torch.utils.data import DataLoader

from covidxr.config import Config, DataConfig, TrainConfig
from covidxr.data.dataset import XrayDataset
from covidxr.data.labels import LabelMap
from covidxr.data.sources import load_manifest
from covidxr.data.split import read_split
from covidxr.data.synth import generate
from covidxr.engine.history import HISTORY_COLUMNS, read_history
from covidxr.errors import CovidxrError
from covidxr.models.factory import load_model
from covidxr.models.head import positive_scores
from covidxr.training.job import train
from covidxr.training.metrics import epoch_metrics

pytestmark = pytest.mark.slow  # trains a model or starts a server: in `make test`, not in `make test-fast`

RUN_FILES = {
    "config.yaml", "data_report.json", "splits.csv", "model.json", "best.safetensors", "last.ckpt", "history.csv",
    "state.json",
}  # fmt: skip


def _cfg(data: Path, cache: Path | None = None, **train: object) -> Config:
    """No `cache`: the session's feature cache, shared by every test on the same images and preprocessing."""
    cache_dir = str(cache) if cache else None
    return Config(DataConfig(paths=(str(data),)), TrainConfig(cache_dir=cache_dir, **train))  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def more_phantoms(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("phantoms240")
    generate(out, n=240, seed=21)
    return out


def _best_row(run: Path, epoch: int) -> dict[str, str]:
    return next(r for r in read_history(run / "history.csv") if int(r["epoch"]) == epoch)


def test_lite0_head_learns_the_phantoms(more_phantoms: Path, tmp_path: Path) -> None:
    result = train(_cfg(more_phantoms, epochs=20, lr=1e-3), tmp_path / "run")
    best = _best_row(result.run_dir, result.best_epoch)
    assert float(best["val_auc"]) > 0.9, best
    assert result.spec.weights.startswith("imagenet:bundled:")
    assert set(p.name for p in result.run_dir.iterdir()) >= RUN_FILES


def test_cxr_dev_run_is_complete_and_the_best_checkpoint_reproduces_val_metrics(cxr_dev: Path, tmp_path: Path) -> None:
    result = train(_cfg(cxr_dev, epochs=3, augment_copies=0), tmp_path / "run")
    run = result.run_dir
    assert set(p.name for p in run.iterdir()) >= RUN_FILES
    assert len(read_history(run / "history.csv")) == 3
    net, spec = load_model(run)
    assert spec.classes == ["not COVID-19", "COVID-19"] and spec.input_size == 224
    manifest = load_manifest(cxr_dev)
    split = read_split(run / "splits.csv", manifest)
    label_map = LabelMap.from_labels(manifest.labels)
    val = XrayDataset(manifest.root, split.records(manifest, "val"), label_map, spec.preprocess)
    scores, targets = [], []
    with torch.no_grad():
        for x, y in DataLoader(val, batch_size=32):
            scores.append(positive_scores(net(x), spec.task))
            targets.append(y)
    metrics = epoch_metrics(torch.cat(scores).numpy(), torch.cat(targets).numpy(), spec.task)
    best = _best_row(run, result.best_epoch)
    assert metrics["auc"] == pytest.approx(float(best["val_auc"]), abs=1e-4)
    assert metrics["acc"] == pytest.approx(float(best["val_acc"]), abs=1e-6)


def test_feature_cache_is_hit_then_invalidated_by_augmentation(phantoms: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    first = train(_cfg(phantoms, cache, epochs=2), tmp_path / "a")
    second = train(_cfg(phantoms, cache, epochs=2), tmp_path / "b")
    changed = train(_cfg(phantoms, cache, epochs=2, augment="seed"), tmp_path / "c")
    assert (first.cache_hit, second.cache_hit, changed.cache_hit) == (False, True, False)
    # One feature store (the originals are shared; augmented copies are rows of their own) and one film store.
    assert sorted(p.name.split("-")[0] for p in cache.iterdir()) == ["features", "films"]
    store = next(cache.glob("features-*"))
    rows = sum(np.load(p, mmap_mode="r").shape[0] for p in store.glob("chunk-*.npy"))
    n_train = sum(1 for r in csv.DictReader((tmp_path / "a" / "splits.csv").open()) if r["split"] == "train")
    assert rows == 120 + 2 * n_train  # originals, plus one copy of each training image per augmentation
    assert np.load(next(store.glob("chunk-*.npy")), mmap_mode="r").shape[1:] == (1280,)


@pytest.mark.parametrize(
    "mode",
    [
        {"balance": "sampler"},  # the head on cached features
        {"backbone": "simple_cnn", "weights": "none", "freeze": "full", "input_size": 48, "augment": "xray",
         "augment_copies": 0},  # the whole network on images, online augmentation drawn per epoch
    ],
    ids=["cached-head", "images"],
)  # fmt: skip
def test_a_run_resumes_after_a_crash_as_if_never_stopped(
    phantoms: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mode: dict[str, object]
) -> None:
    """Every mode trains in the one loop; a crash after epoch 3's checkpoint and a resume in a new loop give
    exactly the history and best epoch of a run that never stopped (the resumed epoch's sample order and
    augmentation are the epoch's own, not the first epoch's)."""
    import covidxr.engine.loop as loop

    cfg = _cfg(phantoms, epochs=8, patience=8, lr=1e-3, **mode)
    straight = train(cfg, tmp_path / "a")
    saved = torch.load(straight.run_dir / "last.ckpt", weights_only=True)
    assert saved["format"] == loop.CHECKPOINT_FORMAT and saved["progress"]["epoch"] == 7
    monkeypatch.setattr(loop, "SAVE_EVERY_S", 0.0)
    write = loop.write_history_row

    def crash_in_epoch_4(path: Path, epoch: int, metrics: dict[str, float], seconds: float, columns: Any) -> None:
        write(path, epoch, metrics, seconds, columns)
        if epoch == 4:
            raise RuntimeError("simulated kill before epoch 4's checkpoint")

    monkeypatch.setattr(loop, "write_history_row", crash_in_epoch_4)
    with pytest.raises(RuntimeError, match="simulated kill"):
        train(cfg, tmp_path / "b")
    monkeypatch.setattr(loop, "write_history_row", write)
    resumed = train(cfg, tmp_path / "b", resume=True)
    keys = [c for c in HISTORY_COLUMNS if c != "seconds"]
    rows = [
        [{k: r[k] for k in keys} for r in read_history(run / "history.csv")] for run in (tmp_path / "a", tmp_path / "b")
    ]
    assert rows[0] == rows[1] and len(rows[0]) == 8
    assert (resumed.best_epoch, resumed.epochs_run) == (straight.best_epoch, straight.epochs_run)


def test_source_balanced_draws_reach_the_head_loop_with_each_rows_own_source(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import covidxr.training.job as loop

    data = tmp_path / "two-hospitals"
    generate(data, n=60, seed=4)
    with (data / "labels.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    for i, row in enumerate(rows):
        row["source"] = "north" if i % 3 else "south"
    with (data / "labels.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    seen: list[object] = []
    sampler = loop.EpochSampler

    def spy(*args: object, **kwargs: object) -> object:
        made = sampler(*args, **kwargs)  # type: ignore[arg-type]
        seen.append(made)
        return made

    monkeypatch.setattr(loop, "EpochSampler", spy)
    run = train(_cfg(data, tmp_path / "cache", epochs=2, balance="source", augment_copies=1), tmp_path / "run")
    drawn, val_order = seen  # the training draw, then validation in order
    assert not val_order.shuffle and not val_order.balanced
    source = {r["path"]: r["source"] for r in rows}
    with (run.run_dir / "splits.csv").open(newline="") as fh:
        train_paths = [r["path"] for r in csv.DictReader(fh) if r["split"] == "train"]
    assert drawn.balanced and len(drawn.groups) == 2 * len(train_paths)  # originals and their augmented copies
    assert {g[0] for g in drawn.groups} == {"north", "south"}
    assert sorted(g[0] for g in drawn.groups) == sorted(2 * [source[p] for p in train_paths])
    assert [g[1] for g in drawn.groups] == drawn.targets


def test_last_k_trains_the_tail_on_the_cached_trunk_output(phantoms: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file

    from covidxr.models.factory import build_model

    cfg = _cfg(phantoms, tmp_path / "cache", epochs=3, lr=1e-3, freeze="last-k", last_k=1, augment="none")
    result = train(cfg, tmp_path / "run")
    assert result.best_epoch >= 0
    entry = next((tmp_path / "cache").glob("features-*"))
    assert "last 1 stage" in (entry / "key.json").read_text()
    assert np.load(next(entry.glob("chunk-*.npy")), mmap_mode="r").shape[1:] == (320, 7, 7)  # blocks.6, not pooled
    start = build_model(result.spec, "imagenet").state_dict()
    trained = load_file(str(result.run_dir / "best.safetensors"))
    changed = {k for k, v in trained.items() if not k.endswith("num_batches_tracked") and not (v == start[k]).all()}
    assert any(k.startswith("backbone.conv_head") for k in changed) and any(k.startswith("head.") for k in changed)
    assert not any(k.startswith(("backbone.blocks.", "backbone.conv_stem")) for k in changed)


def test_lung_crop_comes_from_the_training_masks_and_travels_in_the_model(tmp_path: Path) -> None:
    from covidxr.data.lungs import lung_box
    from covidxr.data.prepare import list_data
    from covidxr.data.split import read_split
    from tests.public_layouts import covid19_radiography

    data = covid19_radiography(tmp_path / "data")
    cfg = Config(
        DataConfig(paths=(str(data),), task="multiclass"),
        TrainConfig(epochs=1, lung_crop=True, augment="none", cache_dir=str(tmp_path / "cache")),
    )
    result = train(cfg, tmp_path / "run")
    box = json.loads((result.run_dir / "model.json").read_text())["lung_box"]
    manifest = list_data(cfg.data)
    train_records = read_split(result.run_dir / "splits.csv", manifest).records(manifest, "train")
    assert box == pytest.approx(list(lung_box(manifest.root, train_records)))  # from the training masks only
    assert result.spec.preprocess.lung_box == tuple(box)  # training, evaluation and serving crop alike


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "covidxr", "train", *args]


def test_two_cpu_processes_train_as_one_does(phantoms: Path, tmp_path: Path) -> None:
    """lr > 0, class-balanced draws: one process (the cached-head loop) with batch 16 and two DDP processes on
    gloo (Lightning) with 8 each see the same batches, so every epoch's train and val numbers and every weight
    must agree. Dropout is 0 and augmentation off: their random draws are per process. Only rank 0 prints, and
    it reports the real best epoch."""
    common = ["--data", str(phantoms), "--epochs", "3", "--lr", "1e-3", "--dropout", "0", "--augment", "none"]
    common += ["--accelerator", "cpu", "--balance", "sampler", "--cache-dir", str(tmp_path / "cache")]
    one = subprocess.run(
        _cli(*common, "--out", str(tmp_path / "one"), "--devices", "1", "--batch-size", "16"),
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    two = subprocess.run(
        _cli(*common, "--out", str(tmp_path / "two"), "--devices", "2", "--strategy", "ddp", "--batch-size", "8"),
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert one.returncode == 0 and two.returncode == 0, two.stderr[-3000:]
    rows = [read_history(tmp_path / run / "history.csv") for run in ("one", "two")]
    assert len(rows[0]) == len(rows[1]) == 3
    assert float(rows[0][-1]["train_loss"]) < float(rows[0][0]["train_loss"]) - 0.01  # it did train
    for single, ddp in zip(*rows, strict=True):
        for column in set(single) - {"epoch", "seconds"}:
            assert float(ddp[column]) == pytest.approx(float(single[column]), abs=1e-5), column
    weights = [load_file(str(tmp_path / run / "best.safetensors")) for run in ("one", "two")]
    assert all(torch.allclose(weights[0][k], weights[1][k], atol=1e-5) for k in weights[0])
    assert two.stdout.count("trained tf_efficientnet_lite0") == 1 and "best epoch -1" not in two.stdout
    assert "sync_dist" not in two.stderr  # epoch metrics are gathered, not per-rank
    store = next((tmp_path / "cache").glob("features-*"))  # built once, though both ranks asked for it
    assert len(list((tmp_path / "cache").glob("features-*"))) == 1
    assert len(list(store.glob("chunk-*.keys.json"))) >= 1


def test_kill_and_resume_ends_like_an_uninterrupted_run(phantoms: Path, tmp_path: Path) -> None:
    args = [
        "--data", str(phantoms), "--backbone", "simple_cnn", "--weights", "none", "--freeze", "full",
        "--input-size", "48", "--epochs", "4", "--patience", "10", "--augment", "xray", "--augment-copies", "0",
        "--lr", "1e-3", "--seed", "3",
    ]  # fmt: skip
    straight = subprocess.run(_cli(*args, "--out", str(tmp_path / "a")), capture_output=True, text=True, timeout=600)
    assert straight.returncode == 0, straight.stderr
    proc = subprocess.Popen(
        _cli(*args, "--out", str(tmp_path / "b")), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    history = tmp_path / "b" / "history.csv"
    deadline = time.monotonic() + 300
    while len(read_history(history)) < 2 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    done_before_kill = len(read_history(history))
    assert 2 <= done_before_kill < 4
    resumed = subprocess.run(_cli("--resume", str(tmp_path / "b")), capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    keys = ("epoch", "train_loss", "val_loss", "val_acc", "val_auc")
    a = [{k: r[k] for k in keys} for r in read_history(tmp_path / "a" / "history.csv")]
    b = [{k: r[k] for k in keys} for r in read_history(history)]
    assert a == b
    state_a = (tmp_path / "a" / "state.json").read_text()
    state_b = (tmp_path / "b" / "state.json").read_text()
    assert '"status": "finished"' in state_b
    assert state_a.split('"best_epoch"')[1][:6] == state_b.split('"best_epoch"')[1][:6]


def test_existing_run_needs_resume_and_bad_choices_are_explained(phantoms: Path, tmp_path: Path) -> None:
    train(_cfg(phantoms, epochs=1), tmp_path / "run")
    with pytest.raises(CovidxrError, match="already holds a run"):
        train(_cfg(phantoms, epochs=1), tmp_path / "run")
    assert train(Config(), tmp_path / "run", resume=True).best_epoch == 0  # finished: nothing to redo
    out = subprocess.run(
        _cli("--data", str(phantoms), "--out", str(tmp_path / "x"), "--backbone", "resnet50"),
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert out.returncode == 2 and "no ImageNet weights for resnet50" in out.stderr
    assert "Traceback" not in out.stderr and not (tmp_path / "x" / "splits.csv").exists()


def test_the_default_recipe_converges_and_the_probe_is_compared(more_phantoms: Path, tmp_path: Path) -> None:
    import json

    result = train(_cfg(more_phantoms), tmp_path / "run")
    assert 0 < result.best_epoch < result.epochs_run - 1  # stopped by patience, not by the cap
    history = read_history(result.run_dir / "history.csv")
    assert float(history[result.best_epoch]["val_loss"]) <= min(float(r["val_loss"]) for r in history) + 1e-9
    probe = json.loads((result.run_dir / "linear_probe.json").read_text())
    assert probe["model_val_nll"] > 0 and probe["val_nll"] > 0
    assert probe["beats_model_on_val"] == (probe["val_nll"] < probe["model_val_nll"])


def test_linear_head_is_the_probe_and_reloads_as_a_model(more_phantoms: Path, tmp_path: Path) -> None:
    import json

    result = train(_cfg(more_phantoms, head="linear"), tmp_path / "run")
    assert result.epochs_run == 0 and result.spec.head == "linear"
    net, spec = load_model(result.run_dir)
    assert isinstance(net.head, torch.nn.Linear)
    manifest = load_manifest(more_phantoms)
    split = read_split(result.run_dir / "splits.csv", manifest)
    label_map = LabelMap(spec.task, tuple(spec.classes), spec.positive)  # type: ignore[arg-type]
    loader = DataLoader(XrayDataset(manifest.root, split.records(manifest, "test"), label_map, spec.preprocess), 64)
    net.eval()
    with torch.no_grad():
        scores = np.concatenate([positive_scores(net(x), spec.task).numpy() for x, _ in loader])
    targets = np.concatenate([y.numpy() for _, y in loader])
    probe = json.loads((result.run_dir / "linear_probe.json").read_text())
    assert epoch_metrics(scores, targets, spec.task)["auc"] == pytest.approx(probe["test_auc"], abs=1e-6)
    with pytest.raises(CovidxrError, match="--head linear fits on cached frozen features"):
        train(_cfg(more_phantoms, head="linear", freeze="full"), tmp_path / "run2")
