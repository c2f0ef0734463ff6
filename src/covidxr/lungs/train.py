"""`covidxr lungs train`: the segmenter on films with lung masks, split by patient, resumable after kill -9.

Dice + BCE on the segmenter's logits, AdamW, early stopping on validation Dice; `last.ckpt` (tensors and numbers
only) is written whole after every epoch, so a killed job rerun with the same folder continues where it stopped.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from covidxr.atomic import write_csv, write_with
from covidxr.config import DataConfig
from covidxr.data.labels import LabelMap
from covidxr.data.manifest import Manifest
from covidxr.data.prepare import inspect_data
from covidxr.data.split import DEFAULT_FRACTIONS, Split, load_or_make_split
from covidxr.errors import DataError
from covidxr.lungs.films import MaskedFilms, augment, with_masks
from covidxr.lungs.segmenter import SegmenterSpec, build_net, save_lung_model, to_input
from covidxr.rundir import RunDir

log = logging.getLogger(__name__)
CHECKPOINT = RunDir.last_ckpt  # the same names as a classifier run's: a lung model folder reads like one
HISTORY = RunDir.history


@dataclass(frozen=True)
class LungTrainConfig:
    epochs: int = 40
    patience: int = 6
    batch_size: int = 8
    lr: float = 1e-3
    weight_decay: float = 1e-4
    input_size: int = 256
    encoder_weights: Path | None = None  # ImageNet weights for the encoder (the bundled file); None: random init
    seed: int = 0


@dataclass
class LungTrainResult:
    folder: Path
    best_epoch: int
    best_val_dice: float
    epochs_run: int
    split: Split
    films: int


def loss_fn(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """BCE + (1 - soft Dice) per image, averaged: Dice for overlap, BCE for well-behaved early gradients."""
    probs = torch.sigmoid(logits).flatten(1)
    flat = target.flatten(1)
    soft_dice = (2 * (probs * flat).sum(1) + 1) / (probs.sum(1) + flat.sum(1) + 1)
    return F.binary_cross_entropy_with_logits(logits, target) + (1 - soft_dice).mean()


def _batch(films: MaskedFilms, index: torch.Tensor, spec: SegmenterSpec, train: bool) -> tuple[torch.Tensor, ...]:
    xs, ys = [], []
    for i in index.tolist():
        film = films.films[i][None].float() / 255
        mask = films.masks[i][None].float()
        if train:
            film, mask = augment(film, mask)
        xs.append(to_input(film[0].numpy(), spec))
        ys.append(mask)
    return torch.stack(xs), torch.stack(ys)


@torch.inference_mode()
def mean_dice(net: torch.nn.Module, films: MaskedFilms, spec: SegmenterSpec, batch_size: int) -> float:
    net.eval()
    scores = []
    for start in range(0, len(films), batch_size):
        x, y = _batch(films, torch.arange(start, min(start + batch_size, len(films))), spec, train=False)
        pred = (torch.sigmoid(net(x)) >= spec.threshold).flatten(1)
        truth = y.flatten(1).bool()
        total = pred.sum(1) + truth.sum(1)
        scores += torch.where(total > 0, 2 * (pred & truth).sum(1) / total.clamp(min=1), 1.0).tolist()
    return float(np.mean(scores)) if scores else float("nan")


def train_lungs(data: DataConfig, out: Path | str, cfg: LungTrainConfig = LungTrainConfig()) -> LungTrainResult:
    """Train (or resume) a lung model in `out` from every film of `data` that carries a lung mask."""
    manifest, report = inspect_data(data)
    return train_lungs_on(manifest, out, cfg, report.duplicate_links(), data.split_fractions, " + ".join(data.paths))


def train_lungs_on(
    manifest: Manifest, out: Path | str, cfg: LungTrainConfig, duplicate_links: list[list[str]] | None = None,
    fractions: tuple[float, float, float] = DEFAULT_FRACTIONS, name: str = "",
) -> LungTrainResult:  # fmt: skip
    """The same on usable films already listed (a classifier run passes its own training films)."""
    out = Path(out)
    masked = manifest.subset(with_masks(manifest))
    if len(masked.records) < 3:
        raise DataError(
            f"{name or manifest.root}: {len(masked.records)} film(s) with a lung mask; training a lung segmenter "
            "needs a lung_mask column (CSV), masks/ folders (COVID-19 Radiography Database) or another layout "
            "that ships masks; or pass a trained one with --lung-model"
        )
    out.mkdir(parents=True, exist_ok=True)
    label_map = LabelMap.from_labels(masked.labels, "multiclass")
    split, _ = load_or_make_split(masked, label_map, out, duplicate_links, fractions, cfg.seed)
    parts = {s: MaskedFilms.load(masked.root, split.records(masked, s), cfg.input_size) for s in ("train", "val")}
    spec = SegmenterSpec(input_size=cfg.input_size)
    net, origin = build_net(spec, cfg.encoder_weights)
    spec = SegmenterSpec(**(asdict(spec) | {"weights": origin}))
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    state = _resume(out / CHECKPOINT, net, opt)
    history: list[dict[str, float]] = state["history"]
    epoch, best, best_epoch, stale = state["epoch"], state["best"], state["best_epoch"], state["stale"]
    while epoch < cfg.epochs and stale < cfg.patience:
        started = time.perf_counter()
        torch.manual_seed(cfg.seed * 10_007 + epoch)  # the shuffle and augmentation of an epoch, wherever it resumes
        net.train()
        losses = []
        for index in torch.randperm(len(parts["train"])).split(cfg.batch_size):
            x, y = _batch(parts["train"], index, spec, train=True)
            loss = loss_fn(net(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
        val_dice = mean_dice(net, parts["val"], spec, cfg.batch_size)
        epoch += 1
        if val_dice > best:
            best, best_epoch, stale = val_dice, epoch, 0
            save_lung_model(out, spec, net)
        else:
            stale += 1
        history.append({"epoch": epoch, "train_loss": float(np.mean(losses)), "val_dice": val_dice,
                        "seconds": time.perf_counter() - started})  # fmt: skip
        write_csv(out / HISTORY, list(history[0]), history)
        _checkpoint(out / CHECKPOINT, net, opt, epoch, best, best_epoch, stale, history)
        log.info("lungs epoch %d/%d: loss %.4f, val Dice %.4f (best %.4f at %d)", epoch, cfg.epochs,
                 history[-1]["train_loss"], val_dice, best, best_epoch)  # fmt: skip
    return LungTrainResult(out, best_epoch, best, epoch, split, len(masked.records))


def _checkpoint(path: Path, net: torch.nn.Module, opt: torch.optim.Optimizer, epoch: int, best: float,
                best_epoch: int, stale: int, history: list[dict[str, float]]) -> None:  # fmt: skip
    payload = {"net": net.state_dict(), "opt": opt.state_dict(), "epoch": epoch, "best": best,
               "best_epoch": best_epoch, "stale": stale, "history": history}  # fmt: skip
    write_with(path, lambda fh: torch.save(payload, fh), binary=True)


def _resume(path: Path, net: torch.nn.Module, opt: torch.optim.Optimizer) -> dict:
    if not path.is_file():
        return {"epoch": 0, "best": -1.0, "best_epoch": 0, "stale": 0, "history": []}
    state = torch.load(path, map_location="cpu", weights_only=True)
    net.load_state_dict(state["net"])
    opt.load_state_dict(state["opt"])
    log.info("lungs: resuming %s after epoch %d", path.parent, state["epoch"])
    return state
