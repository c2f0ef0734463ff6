"""`train`: data -> model -> the training loop -> run directory, resumable after any interruption.

Run directory: config.yaml, data_report.json, splits.csv, model.json, best.safetensors, last.ckpt, history.csv,
state.json.
"""

from __future__ import annotations

import logging
import shutil
import warnings
from collections.abc import Callable, Hashable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader

from covidxr.augment import build_augment, preset
from covidxr.config import Config, TrainConfig
from covidxr.data.dataset import XrayDataset
from covidxr.data.film_cache import FilmRows, cached_films, film_store
from covidxr.data.lungs import lung_box
from covidxr.data.manifest import Record
from covidxr.data.prepare import REPORT_FILE, PreparedData, prepare
from covidxr.data.split import SPLITS_FILE, write_split
from covidxr.device import use
from covidxr.engine.history import read_history, write_history_row
from covidxr.engine.loop import fit, make_fabric, unlaunched_fabric
from covidxr.errors import CovidxrError
from covidxr.lungs.segmenter import SegmenterSpec
from covidxr.models.factory import (
    CovidxrNet,
    apply_freeze,
    build_initialised,
    save_weights,
    spec_from_config,
)
from covidxr.models.head import positive_scores
from covidxr.models.registry import get_backbone
from covidxr.models.spec import ModelSpec
from covidxr.models.trunk import split_trunk
from covidxr.models.weights import bundled_weights_file, check_weights
from covidxr.results import TrainState
from covidxr.rundir import RunDir
from covidxr.training.distributed import is_main_process
from covidxr.training.feature_cache import CachedFeatures, cache_folder, cached_features
from covidxr.training.linear_probe import LinearProbe, ProbeResult, nll_of, probe_result
from covidxr.training.metrics import epoch_metrics
from covidxr.training.sampling import EpochSampler, Indexed, balance_groups, class_weights, is_balanced
from covidxr.training.steps import (
    Batch,
    ClassifierSteps,
    TensorBatches,
    make_optimizer,
    make_schedule,
    num_threads,
    step_threads,
)

CONFIG_FILE = RunDir.config
LAST_CKPT = RunDir.last_ckpt


@dataclass
class TrainResult:
    run_dir: Path
    spec: ModelSpec
    best_epoch: int
    best_val_loss: float
    epochs_run: int
    cache_hit: bool | None  # None when the feature cache was not used

    def summary(self) -> str:
        best = next((r for r in read_history(self.run_dir / RunDir.history) if int(r["epoch"]) == self.best_epoch), {})
        metrics = ", ".join(f"{k} {float(best[k]):.3f}" for k in ("val_loss", "val_acc", "val_f1", "val_auc") if best)
        cache = "" if self.cache_hit is None else f"; feature cache {'hit' if self.cache_hit else 'computed'}"
        if self.spec.head == "linear":
            return (
                f"fitted a linear head (the linear probe) on {self.spec.backbone} features "
                f"(val NLL {self.best_val_loss:.3f}){cache}\nrun directory: {self.run_dir}"
            )
        return (
            f"trained {self.spec.backbone} ({self.spec.weights}, freeze {self.spec.freeze}) for {self.epochs_run} "
            f"epoch(s); best epoch {self.best_epoch}: {metrics}{cache}\nrun directory: {self.run_dir}"
        )


def train(
    cfg: Config,
    run_dir: Path | str,
    resume: bool = False,
    prepared: PreparedData | None = None,
    on_epoch: Callable[[int, float], None] | None = None,
) -> TrainResult:
    """Train as `cfg` says into `run_dir`. With `resume`, the run's own config is used and training continues
    from `last.ckpt`; a finished run is left as it is. `prepared` lets many runs on one data set (a search)
    inspect and split it once; `on_epoch(epoch, val_loss)` sees every epoch and may stop the run by raising
    (a search's pruner). Every mode trains in the one loop (training.loop)."""
    run_dir = Path(run_dir)
    if resume:
        if not (run_dir / CONFIG_FILE).is_file():
            raise CovidxrError(f"{run_dir}: no {CONFIG_FILE}; not a covidxr run to resume")
        cfg = Config.from_yaml(run_dir / CONFIG_FILE)
        state = RunDir(run_dir).read_state()
        if state is not None and state.finished:
            return _result(run_dir, ModelSpec.read(run_dir), state)
    elif (run_dir / LAST_CKPT).exists():
        raise CovidxrError(f"{run_dir} already holds a run; resume it with --resume or choose another --out")
    if not cfg.data.paths:
        raise CovidxrError("no data set given (--data)")
    cfg = replace(cfg, train=cfg.train.resolved())
    check_weights(get_backbone(cfg.train.backbone), cfg.train.weights)
    tc = cfg.train
    unlaunched_fabric(tc.accelerator, tc.devices, tc.strategy, tc.num_nodes, tc.precision)  # before any data work
    main = is_main_process()  # helper ranks of a distributed run read the run directory, never write it
    run_dir.mkdir(parents=True, exist_ok=True)
    if prepared is None:
        prepared = prepare(run_dir, cfg.data, write=main)
    elif main:
        prepared.report.write_json(run_dir / REPORT_FILE)
        write_split(prepared.split, prepared.manifest, run_dir / SPLITS_FILE)
    net, spec = _start(cfg, prepared, run_dir, main)
    inputs = _inputs(cfg, prepared, net, spec, main)
    if cfg.train.head == "linear" and inputs.probe is not None and inputs.cached is not None:
        return _linear_head_run(run_dir, net, spec, inputs.probe, inputs.probe_splits, inputs.cached)
    return _fit(Started(cfg, run_dir, net, spec, on_epoch), inputs)


@dataclass(frozen=True)
class Started:
    """A run set up to train: its resolved config, folder, seeded network, spec, and the epoch hook."""

    cfg: Config
    run_dir: Path
    net: CovidxrNet
    spec: ModelSpec
    on_epoch: Callable[[int, float], None] | None


@dataclass
class TrainInputs:
    """What the mode trains and on what: the trainable part (the head; tail and head; the whole network), its
    training and validation batches (cached feature tensors, or image DataLoaders) and the training sampler, the
    feature cache behind them (None: images), and the linear probe fitted on pooled features."""

    trainable: torch.nn.Module
    train: TensorBatches | DataLoader
    val: TensorBatches | DataLoader
    sampler: EpochSampler
    cached: CachedFeatures | None = None
    probe: LinearProbe | None = None
    probe_splits: dict[str, tuple[Any, Any]] = field(default_factory=dict)

    def loss_weights(self, tc: TrainConfig, num_outputs: int) -> torch.Tensor | None:
        """`--balance weights`: the loss weighted against the training split's class frequencies."""
        return class_weights(self.sampler.targets, num_outputs) if tc.balance == "weights" else None


def _start(cfg: Config, prepared: PreparedData, run_dir: Path, main: bool) -> tuple[CovidxrNet, ModelSpec]:
    """The seeded network and its spec (lung box, lung model, initial weights), written with the config."""
    tc = cfg.train
    L.seed_everything(cfg.data.seed, verbose=False)
    if tc.head == "linear" and not (tc.freeze == "head" and tc.feature_cache):
        raise CovidxrError("--head linear fits on cached frozen features: it needs --freeze head and the feature cache")
    spec = spec_from_config(tc, prepared.label_map)
    if tc.lung_crop:  # from the training split's masks: the one model choice that depends on the data
        box = lung_box(prepared.manifest.root, prepared.split.records(prepared.manifest, "train"))
        spec = replace(spec, lung_box=box)
    if spec.lungs != "none":
        spec = replace(spec, lung_model=run_lung_model(tc, prepared, run_dir, write=main)).with_lungs(run_dir)
    net, spec = build_initialised(spec, tc.weights)
    apply_freeze(net, tc.freeze, tc.last_k)
    if main:
        cfg.write_yaml(run_dir / CONFIG_FILE)
        spec.write(run_dir)
        RunDir(run_dir).write_state(TrainState("running"))
    return net, spec


def _inputs(cfg: Config, prepared: PreparedData, net: CovidxrNet, spec: ModelSpec, main: bool) -> TrainInputs:
    """Frozen backbone: its pooled features cached, the head trains on them; last-k: the frozen trunk's output
    cached, the tail and head train on it; else images through the whole network."""
    tc = cfg.train
    if tc.freeze == "head" and tc.feature_cache:
        cached = cached_features(cfg, prepared, net.backbone, spec, "pooled")
        splits = {s: _as_numpy(cached.select(s, s == "train")) for s in ("train", "val", "test")}
        probe = _probe_for(cached.key, spec.task, spec.num_outputs, splits) if main else None
        return TrainInputs(net.head, *_feature_batches(cfg, cached, prepared), cached, probe, splits)
    cut_trunk = tc.freeze == "last-k" and tc.feature_cache
    cut = split_trunk(net.backbone, tc.last_k, spec.input_size, spec.channels) if cut_trunk else None
    if cut is not None:
        trunk, tail = cut
        cached = cached_features(cfg, prepared, trunk, spec, f"trunk without the last {tc.last_k} stage(s)")
        return TrainInputs(torch.nn.Sequential(tail, net.head), *_feature_batches(cfg, cached, prepared), cached)
    return TrainInputs(net, *_image_loaders(cfg, prepared, spec))


def _fit(run: Started, inputs: TrainInputs) -> TrainResult:
    """The mode's trainable part in the one loop (one process or many, on Fabric); rank 0 writes the run."""
    cfg, run_dir, net, spec = run.cfg, run.run_dir, run.net, run.spec
    tc = cfg.train
    assert tc.lr is not None and tc.epochs is not None and tc.lr_schedule is not None  # resolved by train()
    with quiet_lightning(), num_threads(_step_threads(inputs)):
        fabric = make_fabric(tc.accelerator, tc.devices, tc.strategy, tc.num_nodes, tc.precision)
        weights = inputs.loss_weights(tc, spec.num_outputs)
        steps = ClassifierSteps(spec.task, _on_device(fabric, inputs.train), _on_device(fabric, inputs.val),
                                inputs.sampler, weights.to(fabric.device) if weights is not None else None)  # fmt: skip
        optimizer = make_optimizer(inputs.trainable, tc.optimizer, tc.lr, tc.weight_decay, tc.momentum)
        loop = fit(
            fabric, inputs.trainable, optimizer, steps, run_dir, epochs=tc.epochs, patience=int(tc.patience or 0),
            seed=cfg.data.seed, schedule=make_schedule(optimizer, tc.lr_schedule), on_epoch=run.on_epoch,
        )  # fmt: skip
    if not fabric.is_global_zero:
        return _result(run_dir, spec, TrainState("running"))
    inputs.trainable.load_state_dict(loop.best_state)
    net.cpu()
    save_weights(net, run_dir)
    if inputs.probe is not None:
        _compare_with_probe(net, spec, inputs.probe, inputs.probe_splits).write(run_dir)
    cached = inputs.cached
    state = TrainState(
        "finished", loop.best_epoch, loop.best_value, loop.epochs_run, cached.hit if cached is not None else None,
        cached.key if cached is not None else None,
    )  # fmt: skip
    RunDir(run_dir).write_state(state)
    return _result(run_dir, spec, state)


def _step_threads(inputs: TrainInputs) -> int:
    return step_threads(inputs.train.x[0].numel() if isinstance(inputs.train, TensorBatches) else None)


def _on_device(fabric: L.Fabric, batches: TensorBatches | DataLoader) -> Iterable[Batch]:
    """Feature tensors moved once; image batches moved as they come. Not through Fabric's setup_dataloaders: its
    wrapper sets the sampler's epoch from its own count of iterations, which starts at 0 again in a resumed run."""
    if isinstance(batches, TensorBatches):
        x, y = fabric.to_device(batches.x), fabric.to_device(batches.y)
        return TensorBatches(x, y, batches.sampler, batches.batch_size)
    return DeviceBatches(fabric, batches)


class DeviceBatches:
    """A DataLoader's batches on the run's device (the loader's sampler keeps the epoch the loop gave it)."""

    def __init__(self, fabric: L.Fabric, loader: DataLoader) -> None:
        self.fabric, self.loader = fabric, loader

    def __iter__(self) -> Iterator[Batch]:
        for batch in self.loader:
            yield self.fabric.to_device(batch)


_PROBES: dict[tuple[str, str], LinearProbe] = {}  # this process's probes by feature-cache key


def _as_numpy(pair: tuple[torch.Tensor, torch.Tensor]) -> tuple[Any, Any]:
    return pair[0].numpy(), pair[1].numpy()


def _probe_for(key: str, task: str, num_outputs: int, splits: dict[str, tuple[Any, Any]]) -> LinearProbe:
    """The probe depends on the cached features alone, so the trials of a search (same features, other head
    settings) fit it once per process, not once per trial."""
    if (key, task) not in _PROBES:
        _PROBES.clear()  # one feature set at a time: a cached probe holds no features, but keep it to one
        _PROBES[(key, task)] = LinearProbe(task, num_outputs).fit(*splits["train"], *splits["val"])
    return _PROBES[(key, task)]


def _compare_with_probe(
    net: CovidxrNet, spec: ModelSpec, probe: LinearProbe, splits: dict[str, tuple[Any, Any]]
) -> ProbeResult:
    """The probe's numbers beside the trained head's, on the same cached validation features."""
    result = probe_result(probe, splits)
    x_val, y_val = splits["val"]
    net.eval()
    with torch.no_grad():
        scores = positive_scores(net.head(torch.from_numpy(x_val)), spec.task).numpy()
    result.model_val_nll = nll_of(scores, y_val, spec.task)
    result.model_val_auc = epoch_metrics(scores, y_val, spec.task)["auc"]
    return result


def _linear_head_run(
    run_dir: Path,
    net: CovidxrNet,
    spec: ModelSpec,
    probe: LinearProbe,
    splits: dict[str, tuple[Any, Any]],
    cached: CachedFeatures,
) -> TrainResult:
    """`--head linear`: the probe fitted on cached features is the model; nothing to train epoch by epoch."""
    net.head = probe.as_linear()
    save_weights(net, run_dir)
    result = probe_result(probe, splits)
    result.write(run_dir)
    state = TrainState(
        "finished", 0, result.val_nll, 0, cached.hit, cached.key, head=f"linear probe, C = {result.C:g}"
    )  # fmt: skip
    RunDir(run_dir).write_state(state)
    return _result(run_dir, spec, state)


def run_lung_model(tc: TrainConfig, prepared: PreparedData, run_dir: Path, write: bool = True) -> str:
    """The run's own copy of its lung model (RunDir.lungs): the one given (--lung-model), else one trained first on
    the lung masks of the run's training and validation films (never its test films). Returns its sha256."""
    from covidxr.lungs import load_lung_model
    from covidxr.lungs.segmenter import SPEC_FILE, WEIGHTS_FILE
    from covidxr.lungs.train import LungTrainConfig, train_lungs_on

    folder = run_dir / RunDir.lungs
    if write and not (folder / WEIGHTS_FILE).is_file():
        if tc.lung_model:
            source = load_lung_model(tc.lung_model).folder  # checked before it is copied
            folder.mkdir(parents=True, exist_ok=True)
            for name in (SPEC_FILE, WEIGHTS_FILE):
                shutil.copy(source / name, folder / name)
        else:
            fitting = [r for r in prepared.manifest.records if prepared.split.assignment[r.path] != "test"]
            encoder = bundled_weights_file(get_backbone(SegmenterSpec().encoder))
            lung_cfg = LungTrainConfig(encoder_weights=encoder, accelerator=tc.accelerator)  # the run's device
            train_lungs_on(prepared.manifest.subset(fitting), folder, lung_cfg, prepared.report.duplicate_links(),
                           name="the run's training films")  # fmt: skip
    return load_lung_model(folder).sha256


def head_features(cfg: Config, prepared: PreparedData) -> tuple[CachedFeatures, ModelSpec, dict[str, torch.Tensor]]:
    """The pooled features every head of a grid trains on, extracted once (or read from the cache), the spec
    they were made for, and the head `train` starts from with this seed (built in the same order, so drawn
    from the same random numbers): what a search trains stacked heads from without a backbone per trial."""
    cfg, spec, net = _seeded_net(cfg, prepared)
    start = {k: v.detach().clone() for k, v in net.head.state_dict().items()}
    return cached_features(cfg, prepared, net.backbone, spec, "pooled"), spec, start


def _seeded_net(cfg: Config, prepared: PreparedData) -> tuple[Config, ModelSpec, CovidxrNet]:
    """The resolved config, spec and network `train` builds for this seed, in its order (so the head's random
    initial weights are the ones a run gets)."""
    cfg = replace(cfg, train=cfg.train.resolved())
    L.seed_everything(cfg.data.seed, verbose=False)
    net, spec = build_initialised(spec_from_config(cfg.train, prepared.label_map), cfg.train.weights)
    return cfg, spec, net


def write_head_run(
    cfg: Config, prepared: PreparedData, run_dir: Path, head_state: dict[str, torch.Tensor],
    history: list[dict[str, float]], best_epoch: int, best_val_loss: float, cached: CachedFeatures,
) -> TrainResult:  # fmt: skip
    """A head trained elsewhere (a search's stacked heads) made into a complete run: the network with that head,
    its config, spec, split, data report, history and state, as `train` would have left them."""
    cfg, spec, net = _seeded_net(cfg, prepared)
    net.head.load_state_dict(head_state)
    run_dir.mkdir(parents=True, exist_ok=True)
    prepared.report.write_json(run_dir / REPORT_FILE)
    write_split(prepared.split, prepared.manifest, run_dir / SPLITS_FILE)
    cfg.write_yaml(run_dir / CONFIG_FILE)
    spec.write(run_dir)
    for row in history:
        write_history_row(run_dir / RunDir.history, int(row["epoch"]), row, row["seconds"])
    save_weights(net, run_dir)
    state = TrainState("finished", best_epoch, best_val_loss, len(history), cached.hit, cached.key)
    RunDir(run_dir).write_state(state)
    return _result(run_dir, spec, state)


def cached_groups(balance: str, cached: CachedFeatures, prepared: PreparedData) -> list[Hashable] | None:
    """What a balanced draw over the cached training rows evens out (sampling.balance_groups), from each row's
    film's source."""
    source = {r.path: r.source for r in prepared.manifest.records}
    rows = cached.rows_of("train", with_copies=True)  # row facts only: no feature is copied
    return balance_groups(balance, [r["target"] for r in rows], [source[r["path"]] for r in rows])


def _feature_batches(
    cfg: Config, cached: CachedFeatures, prepared: PreparedData
) -> tuple[TensorBatches, TensorBatches, EpochSampler]:
    x_train, y_train = cached.select("train", with_copies=True)
    x_val, y_val = cached.select("val", with_copies=False)
    groups = cached_groups(cfg.train.balance, cached, prepared)
    sampler = EpochSampler(y_train.tolist(), cfg.data.seed, is_balanced(cfg.train.balance), groups=groups)
    in_order = EpochSampler(y_val.tolist(), cfg.data.seed, shuffle=False)
    train = TensorBatches(x_train, y_train, sampler, cfg.train.batch_size)
    return train, TensorBatches(x_val, y_val, in_order, max(64, cfg.train.batch_size)), sampler


def _image_loaders(cfg: Config, prepared: PreparedData, spec: ModelSpec) -> tuple[DataLoader, DataLoader, EpochSampler]:
    tc = cfg.train
    manifest, split, lm = prepared.manifest, prepared.split, prepared.label_map
    pre = spec.preprocess
    ops = preset(tc.augment, tc.augment_ops)
    augment = build_augment(ops, spec.input_size) if ops else None
    train_records, val_records = split.records(manifest, "train"), split.records(manifest, "val")
    films = _films(cfg, spec, manifest.root, train_records + val_records)
    train_ds = XrayDataset(
        manifest.root, train_records, lm, pre, augment, cfg.data.max_pixels, copies=tc.augment_copies,
        seed=cfg.data.seed, films=FilmRows(films.locations[: len(train_records)]),
    )  # fmt: skip
    val_ds = XrayDataset(manifest.root, val_records, lm, pre, max_pixels=cfg.data.max_pixels,
                         films=FilmRows(films.locations[len(train_records) :]))  # fmt: skip
    groups = balance_groups(tc.balance, train_ds.targets, [r.source for r in train_ds.records] * (1 + train_ds.copies))
    sampler = EpochSampler(train_ds.targets, cfg.data.seed, is_balanced(tc.balance), dataset=train_ds, groups=groups)
    in_order = EpochSampler(val_ds.targets, cfg.data.seed, shuffle=False)
    n, pin = tc.num_workers, tc.accelerator != "cpu" and torch.cuda.is_available()
    loading = {"num_workers": n, "pin_memory": pin, "persistent_workers": n > 0}
    train = DataLoader(Indexed(train_ds), batch_size=tc.batch_size, sampler=sampler, **loading)  # type: ignore[arg-type]
    val = DataLoader(Indexed(val_ds), batch_size=tc.batch_size, sampler=in_order, **loading)  # type: ignore[arg-type]
    return train, val, sampler


def _films(cfg: Config, spec: ModelSpec, root: Path, records: list[Record]) -> FilmRows:
    """The films the epochs read, from the film cache (decoded, and cut to their lungs on the run's device, once)."""
    tc = cfg.train
    with use(tc.accelerator, tc.precision, tc.devices):
        store = film_store(cache_folder(tc), spec.preprocess, spec.lung_model, cfg.data.max_pixels)
        return cached_films(store, root, records, spec.preprocess, cfg.data.max_pixels, tc.num_workers)


def _result(run_dir: Path, spec: ModelSpec, state: TrainState) -> TrainResult:
    return TrainResult(run_dir, spec, state.best_epoch, state.best_val_loss, state.epochs_run, state.cache_hit)


@contextmanager
def quiet_lightning() -> Iterator[None]:
    """Lightning's tips (loggers, workers, hardware) are noise for CLI users; real warnings still show."""
    loggers = [logging.getLogger(n) for n in ("lightning.pytorch", "lightning.fabric")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings():
            for message in (
                ".*does not have many workers.*",
                ".*number of training batches.*",
                ".*exists and is not empty.*",
                ".*treespec.*",
                ".*in eval mode at the start.*",
            ):
                warnings.filterwarnings("ignore", message=message)
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)
