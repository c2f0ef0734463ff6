"""Test-time augmentation limited to what a radiograph tolerates: the image, four shifts and two scales.

Mean logits over the views. Only small geometric moves: intensity or flip changes would feed the model inputs
its training never showed it (a flipped film puts the heart on the wrong side). Grad-CAM and MC dropout keep
using the single view.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from covidxr.models.spec import ModelSpec

SHIFT = 0.04  # of the image width (affine_grid coordinates span 2, hence the factor below)
SCALES = (0.95, 1.05)


def tta_thetas(shift: float = SHIFT, scales: tuple[float, ...] = SCALES) -> torch.Tensor:
    """2x3 affine matrices (views, 2, 3): identity, +-shift in x and y, then each scale about the centre."""
    d = 2 * shift
    moves = [(0.0, 0.0), (d, 0.0), (-d, 0.0), (0.0, d), (0.0, -d)]
    views = [[[1.0, 0.0, dx], [0.0, 1.0, dy]] for dx, dy in moves]
    views += [[[1 / s, 0.0, 0.0], [0.0, 1 / s, 0.0]] for s in scales]
    return torch.tensor(views)


class TestTimeAugmented(nn.Module):
    """Mean logits of `net` over the views; edges repeat the border pixels (no black bands the model never saw)."""

    def __init__(self, net: nn.Module, thetas: torch.Tensor | None = None) -> None:
        super().__init__()
        self.net = net
        self.register_buffer("thetas", tta_thetas() if thetas is None else thetas, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        outs = []
        thetas: torch.Tensor = self.get_buffer("thetas")
        for theta in thetas:
            grid = F.affine_grid(theta.expand(b, 2, 3).to(x.dtype), list(x.shape), align_corners=False)
            outs.append(self.net(F.grid_sample(x, grid, padding_mode="border", align_corners=False)))
        return torch.stack(outs).mean(dim=0)


def scoring_net(net: nn.Module, spec: ModelSpec) -> nn.Module:
    """The network that scores images for this spec: wrapped in TTA when the run chose it."""
    return TestTimeAugmented(net).eval() if spec.tta else net
