"""Training-step throughput: covidxr (Lightning module + trainer, full fine-tuning) vs a bare timm + PyTorch
loop, same model, batch, inputs and loss. Target: covidxr >= 0.9x the bare loop.

Runs alternate (bare, covidxr, bare, covidxr, ...) so that drift in machine speed hits both alike.
Usage: python benchmarks/bench_train_step.py [--steps 6] [--batch 16] [--repeats 2] [--models resnet50 ...]
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings

import lightning as L
import timm
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from benchmarks.common import write_result
from covidxr.config import TrainConfig
from covidxr.models.factory import apply_freeze, build_model, spec_for
from covidxr.training.job import quiet_lightning
from covidxr.training.module import ClassifierModule

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


def bare_loop(name: str, batches: list[tuple[torch.Tensor, torch.Tensor]]) -> float:
    """Images per second of the plainest correct loop: forward, BCE on one-hot, backward, Adam step."""
    net = bare_net(name).train()
    opt = torch.optim.Adam(net.parameters(), lr=1e-4)
    stamps = []
    for x, y in batches:
        opt.zero_grad(set_to_none=True)
        loss = F.binary_cross_entropy_with_logits(net(x), F.one_hot(y, 2).float())
        loss.backward()
        opt.step()
        stamps.append(time.perf_counter())
    return _rate(stamps, len(batches[0][1]))


class _Stamps(L.Callback):
    def __init__(self) -> None:
        self.stamps: list[float] = []

    def on_train_batch_end(self, *args: object) -> None:
        self.stamps.append(time.perf_counter())


def covidxr_loop(name: str, batches: list[tuple[torch.Tensor, torch.Tensor]]) -> float:
    net, _ = make_net(name)
    module = ClassifierModule(net, "binary", TrainConfig(optimizer="adam", lr=1e-4, lr_schedule="none"))
    x = torch.cat([b[0] for b in batches])
    y = torch.cat([b[1] for b in batches])
    loader = DataLoader(TensorDataset(x, y), batch_size=len(batches[0][1]), shuffle=False)
    stamps = _Stamps()
    with quiet_lightning(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*no `val_dataloader`.*")
        trainer = L.Trainer(
            max_epochs=1, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
            enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0, callbacks=[stamps],
        )  # fmt: skip
        trainer.fit(module, loader)
    return _rate(stamps.stamps, len(batches[0][1]))


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
        bare, ours = [], []
        for _ in range(args.repeats):
            bare.append(bare_loop(name, batches))
            ours.append(covidxr_loop(name, batches))
        results[name] = {
            "input_size": size,
            "bare_images_per_s": round(statistics.median(bare), 2),
            "covidxr_images_per_s": round(statistics.median(ours), 2),
            "ratio": round(statistics.median(ours) / statistics.median(bare), 3),
            "runs": {"bare": [round(v, 2) for v in bare], "covidxr": [round(v, 2) for v in ours]},
        }
    write_result(
        "train_step",
        {"target": "covidxr >= 0.9x bare timm loop", "batch": args.batch, "steps": args.steps, "models": results},
    )


if __name__ == "__main__":
    main()
