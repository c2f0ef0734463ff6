"""MC-dropout uncertainty (Ghoshal & Tucker 2020): T stochastic passes with dropout on, BatchNorm untouched."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from covidxr.device import current
from covidxr.models.spec import ModelSpec

CHUNK = 64  # films through the backbone at once: memory stays flat in the number of films


def enable_dropout(net: nn.Module, on: bool = True) -> None:
    net.eval()
    for m in net.modules():
        if isinstance(m, nn.Dropout):
            m.train(on)


@torch.no_grad()
def mc_dropout(
    net: nn.Module, x: torch.Tensor, spec: ModelSpec, passes: int = 30, dropout: bool = True
) -> dict[str, np.ndarray]:
    """Per image: mean (calibrated) class scores, std of the positive score, predictive entropy of the mean."""
    task = spec.task
    place = current().stage("mc-dropout")
    net, x = place.module(net), place.put(x)
    enable_dropout(net, dropout)
    backbone, head = getattr(net, "backbone", None), getattr(net, "head", None)
    if backbone is not None and head is not None and not any(isinstance(m, nn.Dropout) for m in backbone.modules()):
        with place.autocast():  # deterministic: pay for it once, in chunks, and sample only the head
            features = torch.cat([backbone(chunk).float() for chunk in x.split(CHUNK)])
        samples = torch.stack([spec.scores(head(features)) for _ in range(passes)])
    else:
        samples = torch.stack([spec.scores(net(x)) for _ in range(passes)])  # (T, B, C)
    enable_dropout(net, False)
    samples = samples.float().cpu()
    mean = samples.mean(dim=0)
    probs = mean if task != "binary" else torch.stack([1 - mean[:, 1], mean[:, 1]], dim=1)
    probs = probs / probs.sum(dim=1, keepdim=True)
    entropy = -(probs * probs.clamp(min=1e-12).log()).sum(dim=1)
    column = 1 if task == "binary" else None
    std = samples[..., column].std(dim=0) if column is not None else samples.std(dim=0).max(dim=1).values
    return {"mean": mean.numpy(), "std": std.numpy(), "entropy": entropy.numpy()}


def referral_curve(correct: np.ndarray, uncertainty: np.ndarray, steps: int = 11) -> list[tuple[float, float]]:
    """(fraction referred, accuracy on the images kept) as the most uncertain are sent to a radiologist."""
    order = np.argsort(-uncertainty, kind="stable")
    n = len(correct)
    curve = []
    for fraction in np.linspace(0, 0.9, steps):
        kept = order[round(fraction * n) :]
        curve.append((float(fraction), float(np.mean(correct[kept])) if len(kept) else float("nan")))
    return curve
