"""Weight files, shared by the lung and classifier stages: content digests, and packages ported from another
implementation loaded layer by layer. Tensors only: nothing here unpickles code."""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
from torch import nn

from covidxr.errors import CovidxrError


def load_by_order(module: nn.Module, state: dict[str, torch.Tensor], origin: str) -> None:
    """Packages ported from another implementation name keys differently but keep their order and shapes."""
    target = module.state_dict()
    source = list(state.values())
    if len(source) != len(target):  # a feature extractor: leave the source's ImageNet classifier out
        source = [v for k, v in state.items() if not k.startswith(("_fc.", "fc.", "classifier."))]
    if len(source) != len(target) or any(s.shape != t.shape for s, t in zip(source, target.values(), strict=True)):
        raise CovidxrError(f"{origin}: bundled weights do not match the backbone layer by layer")
    module.load_state_dict(dict(zip(target, source, strict=True)), strict=True)


def file_digest(path: Path, full: bool = False) -> str:
    """sha256 of a file: its first 12 hex digits (a name), or all of them (`full`: an identity to record)."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest() if full else digest.hexdigest()[:12]
