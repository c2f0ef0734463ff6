"""The study's classifier head: Dense(64, ReLU) -> Dropout(0.3) -> Dense(n) on pooled backbone features."""

from __future__ import annotations

import torch
from torch import nn


class ClassifierHead(nn.Sequential):
    def __init__(self, in_features: int, num_outputs: int, hidden: int = 64, dropout: float = 0.3) -> None:
        super().__init__(
            nn.Linear(in_features, hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(hidden, num_outputs),
        )


def positive_scores(logits: torch.Tensor, task: str) -> torch.Tensor:
    """Per-class probabilities: independent sigmoids for the study's binary head, softmax for multiclass."""
    return torch.sigmoid(logits) if task == "binary" else torch.softmax(logits, dim=-1)
