"""The cached head's speed in the one training loop: covidxr's loop (engine.loop on Fabric, the classifier's
steps over feature tensors, history.csv and last.ckpt written as a run writes them) vs the plainest correct
loop over the same tensors (index, forward, BCE, backward, Adam step; validation each epoch). Target: today's
speed of the cached head kept — the plain head loop this loop replaced measured 1.28x the bare loop here (2 cores,
the same bare loop beside it, 20 epochs of 600 rows, median of 5); covidxr <= 1.35x.

Runs alternate (bare, covidxr, bare, ...) so that drift in machine speed hits both alike.
Usage: python -m benchmarks.bench_head_loop [--epochs 20] [--train 600] [--repeats 5]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from benchmarks.common import write_result
from covidxr.engine.loop import fit, make_fabric
from covidxr.models.head import ClassifierHead
from covidxr.training.job import quiet_lightning
from covidxr.training.sampling import EpochSampler
from covidxr.training.steps import ClassifierSteps, TensorBatches, make_optimizer

FEATURES, BATCH = 1280, 16  # Lite0's pooled features; the study's batch


def _data(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 2
    return torch.randn(n, FEATURES, generator=generator) + 0.3 * y[:, None].float(), y


def bare(train: tuple[torch.Tensor, torch.Tensor], val: tuple[torch.Tensor, torch.Tensor], epochs: int) -> float:
    torch.manual_seed(0)
    head = ClassifierHead(FEATURES, 2, 64, 0.3)
    opt = torch.optim.Adam(head.parameters(), lr=1e-3)
    started = time.perf_counter()
    for epoch in range(epochs):
        head.train()
        for index in torch.randperm(len(train[1]), generator=torch.Generator().manual_seed(epoch)).split(BATCH):
            loss = F.binary_cross_entropy_with_logits(head(train[0][index]), F.one_hot(train[1][index], 2).float())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        head.eval()
        with torch.no_grad():
            F.binary_cross_entropy_with_logits(head(val[0]), F.one_hot(val[1], 2).float())
    return time.perf_counter() - started


def covidxr(train: tuple[torch.Tensor, torch.Tensor], val: tuple[torch.Tensor, torch.Tensor], epochs: int) -> float:
    torch.manual_seed(0)
    head = ClassifierHead(FEATURES, 2, 64, 0.3)
    sampler, in_order = EpochSampler(train[1].tolist(), 0), EpochSampler(val[1].tolist(), 0, shuffle=False)
    steps = ClassifierSteps("binary", TensorBatches(*train, sampler, BATCH), TensorBatches(*val, in_order, 64), sampler)
    optimizer = make_optimizer(head, "adam", 1e-3, 0.0, 0.9)
    with tempfile.TemporaryDirectory() as folder, quiet_lightning():
        started = time.perf_counter()
        fit(make_fabric(), head, optimizer, steps, Path(folder), epochs=epochs, patience=epochs, seed=0)
        return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--train", type=int, default=600)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    train, val = _data(args.train, 1), _data(args.train // 5, 2)
    with torch.inference_mode(False):
        torch.set_num_threads(1)  # the loop trains pooled-feature heads on one thread (as job.train does)
        times: dict[str, list[float]] = {"bare": [], "covidxr": []}
        for _ in range(args.repeats):
            times["bare"].append(bare(train, val, args.epochs))
            times["covidxr"].append(covidxr(train, val, args.epochs))
    median = {k: statistics.median(v) for k, v in times.items()}
    write_result(
        "head_loop",
        {
            "target": "covidxr <= 1.35x the bare loop's time (the replaced head loop: 1.28x)",
            "train_rows": args.train, "features": FEATURES, "batch": BATCH, "epochs": args.epochs,
            "bare_s": round(median["bare"], 3), "covidxr_s": round(median["covidxr"], 3),
            "ratio": round(median["covidxr"] / median["bare"], 3),
            "runs": {k: [round(t, 3) for t in v] for k, v in times.items()},
        },
    )  # fmt: skip


if __name__ == "__main__":
    main()
