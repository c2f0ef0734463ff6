"""`covidxr lungs train`: the segmenter on films with lung masks, split by patient, resumable after kill -9.

Dice + BCE on the segmenter's logits, AdamW, early stopping on validation Dice, in the one training loop
(engine.loop): its `last.ckpt` lets a killed job rerun with the same folder continue where it stopped.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch.nn import functional as F

from covidxr.config import DataConfig
from covidxr.data.labels import LabelMap
from covidxr.data.manifest import Manifest
from covidxr.data.prepare import inspect_data
from covidxr.data.split import DEFAULT_FRACTIONS, Split, load_or_make_split
from covidxr.engine.loop import fit, make_fabric
from covidxr.errors import DataError
from covidxr.lungs.films import MaskedFilms, augment, with_masks
from covidxr.lungs.segmenter import SegmenterSpec, build_net, save_lung_model, to_input
from covidxr.rundir import RunDir

log = logging.getLogger(__name__)
HISTORY = RunDir.history  # the same names as a classifier run's (and last.ckpt): a lung model folder reads like one


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
    accelerator: str = "cpu"  # Lightning's names: cpu, gpu, auto


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
    device = next(net.parameters()).device
    for start in range(0, len(films), batch_size):
        x, y = _batch(films, torch.arange(start, min(start + batch_size, len(films))), spec, train=False)
        pred = (torch.sigmoid(net(x.to(device))) >= spec.threshold).flatten(1).cpu()
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
    if not len(parts["val"]):
        raise DataError(f"{name or manifest.root}: no validation film with a lung mask; give more films with masks")
    fabric = make_fabric(cfg.accelerator)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps = SegmenterSteps(parts["train"], parts["val"], spec, cfg.batch_size)
    loop = fit(fabric, net, opt, steps, out, epochs=cfg.epochs, patience=cfg.patience, seed=cfg.seed)
    net.load_state_dict(loop.best_state)
    save_lung_model(out, spec, net.cpu())
    log.info("lungs: best val Dice %.4f at epoch %d of %d", loop.best_value, loop.best_epoch, loop.epochs_run)
    return LungTrainResult(out, loop.best_epoch, loop.best_value, loop.epochs_run, split, len(masked.records))


class SegmenterSteps:
    """The segmenter's part of the one loop (training.loop): Dice + BCE on augmented training films in a
    shuffled order, validation Dice as the number to beat."""

    monitor, maximize = "val_dice", True
    columns: tuple[str, ...] = ("epoch", "train_loss", "val_dice", "seconds")

    def __init__(self, train: MaskedFilms, val: MaskedFilms, spec: SegmenterSpec, batch_size: int) -> None:
        self.train, self.val, self.spec, self.batch_size = train, val, spec, batch_size
        self._losses: list[float] = []

    def train_batches(self, epoch: int) -> list[torch.Tensor]:
        """The epoch's shuffle (drawn after the loop seeded the epoch): indices of each batch."""
        self._losses = []
        return list(torch.randperm(len(self.train)).split(self.batch_size))

    def train_loss(self, net: torch.nn.Module, index: torch.Tensor) -> torch.Tensor:
        x, y = _batch(self.train, index, self.spec, train=True)
        device = next(net.parameters()).device
        loss = loss_fn(net(x.to(device)), y.to(device))
        self._losses.append(float(loss.detach()))
        return loss

    def epoch_numbers(self, fabric: L.Fabric, net: torch.nn.Module) -> dict[str, float]:
        return {
            "train_loss": float(np.mean(self._losses)),
            "val_dice": mean_dice(net, self.val, self.spec, self.batch_size),
        }
