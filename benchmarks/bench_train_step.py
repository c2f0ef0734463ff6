"""Training-step throughput: covidxr (its one training loop on Lightning Fabric, full fine-tuning, as `train` sets
it up: convolutions channels-last, PyTorch's fused Adam) vs a bare timm + PyTorch loop, same model, batch, inputs
and loss — plain (contiguous, Adam's default kernel) and with the same two settings, so the layout's gain and the
loop's own cost show apart. Target: covidxr >= 0.9x the plain bare loop.

Runs alternate (bare, covidxr, bare, covidxr, ...) so that drift in machine speed hits both alike.
Usage: python benchmarks/bench_train_step.py [--steps 6] [--batch 16] [--repeats 2] [--models resnet50 ...]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import timm
import torch
import torch.nn.functional as F

from benchmarks.common import write_result
from covidxr.engine.loop import fit, make_fabric
from covidxr.models.factory import apply_freeze, build_model, spec_for
from covidxr.training.job import quiet_lightning
from covidxr.training.sampling import EpochSampler
from covidxr.training.steps import ClassifierSteps, make_optimizer

WARMUP = 2


def make_net(name: str):  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    spec = spec_for(name, ["not COVID-19", "COVID-19"], "binary", "COVID-19")
    net = build_model(spec, "none")
    apply_freeze(net, "full")
    return net, spec.input_size


def bare_net(name: str) -> torch.nn.Module:
    """The same architecture written directly with timm and torch.nn, no covidxr code."""
    torch.manual_seed(0)
    backbone = timm.create_model(name, pretrained=False, num_classes=0)
    width = getattr(backbone, "head_hidden_size", None) or backbone.num_features
    head = torch.nn.Sequential(
        torch.nn.Linear(width, 64), torch.nn.ReLU(), torch.nn.Dropout(0.3), torch.nn.Linear(64, 2)
    )
    return torch.nn.Sequential(backbone, head)


def bare_loop(name: str, batches: list[tuple[torch.Tensor, torch.Tensor]], fast: bool = False) -> float:
    """Images per second of the plainest correct loop: forward, BCE on one-hot, backward, Adam step; `fast`:
    channels-last weights and the fused Adam."""
    net = bare_net(name).train()
    if fast:
        net = net.to(memory_format=torch.channels_last)
    opt = torch.optim.Adam(net.parameters(), lr=1e-4, fused=fast or None)
    stamps = []
    for x, y in batches:
        opt.zero_grad(set_to_none=True)
        loss = F.binary_cross_entropy_with_logits(net(x), F.one_hot(y, 2).float())
        loss.backward()
        opt.step()
        stamps.append(time.perf_counter())
    return _rate(stamps, len(batches[0][1]))


class _Stamped:
    """The training batches, noting the time each is asked for (the end of the step before)."""

    def __init__(self, batches: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]) -> None:
        self.batches, self.stamps = batches, []

    def __iter__(self):  # type: ignore[no-untyped-def]
        for batch in self.batches:
            self.stamps.append(time.perf_counter())
            yield batch
        self.stamps.append(time.perf_counter())


def covidxr_loop(name: str, batches: list[tuple[torch.Tensor, torch.Tensor]]) -> float:
    """One epoch of covidxr's training loop (engine.loop on Fabric, the classifier's steps) over the batches."""
    net, _ = make_net(name)
    n = len(batches[0][1])
    indexed = [(x, y, torch.arange(k * n, (k + 1) * n)) for k, (x, y) in enumerate(batches)]
    stamped = _Stamped(indexed)
    sampler = EpochSampler([int(v) for _, y in batches for v in y], 0, shuffle=False)
    steps = ClassifierSteps("binary", stamped, indexed[:1], sampler)
    optimizer = make_optimizer(net, "adam", 1e-4, 0.0, 0.9)  # the net built channels-last, as every covidxr net
    with tempfile.TemporaryDirectory() as folder, quiet_lightning():
        fit(make_fabric(), net, optimizer, steps, Path(folder), epochs=1, patience=1, seed=0)
    return _rate(stamped.stamps[1:], n)


def _rounded(values: list[float]) -> list[float]:
    return [round(v, 2) for v in values]


def _rate(stamps: list[float], batch: int) -> float:
    timed = stamps[WARMUP - 1 :]  # from the end of the last warm-up step
    return batch * (len(timed) - 1) / (timed[-1] - timed[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=6, help="timed steps per run (after warm-up)")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--models", nargs="+", default=["tf_efficientnet_lite0", "resnet50"])
    args = parser.parse_args()
    results = {}
    for name in args.models:
        _, size = make_net(name)
        g = torch.Generator().manual_seed(0)
        batches = [
            (torch.randn(args.batch, 3, size, size, generator=g), torch.randint(0, 2, (args.batch,), generator=g))
            for _ in range(args.steps + WARMUP)
        ]
        bare, fast, ours = [], [], []
        for _ in range(args.repeats):
            bare.append(bare_loop(name, batches))
            fast.append(bare_loop(name, batches, fast=True))
            ours.append(covidxr_loop(name, batches))
        b, f, o = (statistics.median(v) for v in (bare, fast, ours))
        results[name] = {
            "input_size": size,
            "bare_images_per_s": round(b, 2),
            "bare_channels_last_fused_images_per_s": round(f, 2),
            "covidxr_images_per_s": round(o, 2),
            "ratio": round(o / b, 3),
            "ratio_vs_bare_with_the_same_settings": round(o / f, 3),
            "channels_last_fused_vs_plain": round(f / b, 3),
            "runs": {"bare": _rounded(bare), "bare_fast": _rounded(fast), "covidxr": _rounded(ours)},
        }
    write_result(
        "train_step",
        {"target": "covidxr >= 0.9x bare timm loop", "batch": args.batch, "steps": args.steps, "models": results},
    )


if __name__ == "__main__":
    main()
