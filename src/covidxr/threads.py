"""How many cores this process may use, and thread pools sized to them.

A process may run on fewer cores than the machine has: its CPU affinity (taskset, a scheduler's cpuset) and its
cgroup's CPU quota (a container's `--cpus`, a Slurm or Kubernetes limit). PyTorch and ONNX Runtime size their pools
by the machine, so two jobs on one machine, or one in a container, oversubscribe the cores and each spins waiting
for the other. Every process sizes torch's intra- and inter-op threads, its loader workers and ONNX Runtime's
threads from `usable_cores()` (or `--threads`).
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
from functools import cache
from pathlib import Path

_CGROUP_V2 = Path("/sys/fs/cgroup/cpu.max")
_CGROUP_V1 = (Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us"), Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us"))


def cgroup_quota(v2: Path = _CGROUP_V2, v1: tuple[Path, Path] = _CGROUP_V1) -> float | None:
    """Cores the cgroup's quota allows (a fraction rounds up), None without a quota."""
    try:
        if v2.is_file():
            quota, period = v2.read_text().split()[:2]
            return None if quota == "max" else int(quota) / int(period)
        if v1[0].is_file() and v1[1].is_file():
            quota_us, period_us = int(v1[0].read_text()), int(v1[1].read_text())
            return None if quota_us <= 0 else quota_us / period_us
    except (OSError, ValueError):
        return None
    return None


@cache
def usable_cores() -> int:
    """Cores this process may use: its affinity, capped by its cgroup's quota; COVIDXR_THREADS overrides."""
    configured = os.environ.get("COVIDXR_THREADS")
    if configured and configured.isdigit() and int(configured) > 0:
        return int(configured)
    allowed = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    quota = cgroup_quota()
    return max(1, min(allowed, math.ceil(quota)) if quota else allowed)


def loader_workers(requested: int | None = None) -> int:
    """Decoding processes beside the main one: the cores left over, at most 8; none on one or two cores (a
    worker there takes a core from the network)."""
    if requested is not None:
        return requested
    cores = usable_cores()
    return 0 if cores <= 2 else min(8, cores - 1)


def apply(threads: int | None = None) -> int:
    """Size this process's pools (and its children's, through the environment) to `threads` or the usable
    cores; returns the number. Call before heavy work starts (inter-op threads are fixed at first use)."""
    if threads is not None:
        os.environ["COVIDXR_THREADS"] = str(threads)
        usable_cores.cache_clear()
    n = usable_cores()
    os.environ["OMP_NUM_THREADS"] = str(n)  # read by torch at import, here and in every child process
    if "torch" in sys.modules:  # imported already: tell it too
        torch = sys.modules["torch"]
        torch.set_num_threads(n)
        with contextlib.suppress(RuntimeError):  # fixed already by earlier parallel work in this process
            torch.set_num_interop_threads(max(1, min(n, 4)))
    return n
