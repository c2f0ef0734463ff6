"""The study's from-scratch network: blocks of conv -> ReLU -> Dropout(0.3) -> max pooling, then global pooling.

It is the no-transfer baseline every comparison needs; the classifier head is added by the factory as for
any other backbone.
"""

from __future__ import annotations

import torch
from torch import nn


class SimpleCNN(nn.Module):
    def __init__(self, widths: tuple[int, ...] = (32, 64, 128, 128), dropout: float = 0.3, in_chans: int = 3) -> None:
        super().__init__()
        blocks = []
        for width in widths:
            blocks.append(
                nn.Sequential(
                    nn.Conv2d(in_chans, width, kernel_size=3, padding=1),
                    nn.ReLU(inplace=True),
                    nn.Dropout(dropout),  # the study's 30% dropout between convolution and max pooling
                    nn.MaxPool2d(2),
                )
            )
            in_chans = width
        self.blocks = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.num_features = widths[-1]

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.forward_features(x)).flatten(1)
