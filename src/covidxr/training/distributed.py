"""Which process this is in distributed training. Lightning's launcher re-runs the same command for ranks
other than 0 (with LOCAL_RANK / NODE_RANK set) before the process group exists, so the environment says it
first; once the group is up, torch.distributed does."""

from __future__ import annotations

import os

import torch


def rank_and_world() -> tuple[int, int]:
    """This process's rank and the number of processes (0, 1 outside distributed training)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def is_main_process() -> bool:
    """True everywhere but in the helper processes of a distributed run: only the main one writes run files,
    prints, evaluates and explains."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank() == 0
    return all(int(os.environ.get(name, "0") or 0) == 0 for name in ("RANK", "LOCAL_RANK", "NODE_RANK"))
