"""Stacked heads train as the head loop trains each of them alone: each with its own optimizer over its slice of
the stack, the same sample order and dropout masks, per-trial early stopping and schedule, and a resume after a
kill."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from covidxr.config import TrainConfig
from covidxr.models.head import ClassifierHead
from covidxr.training.callbacks import read_history
from covidxr.training.head_loop import fit_on_tensors
from covidxr.training.stacked import NAMES, HeadPoint, train_heads


def _features(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 2
    x = torch.randn(n, 24, generator=generator) + 0.8 * y[:, None].float()
    return x, y


def test_stacked_heads_train_as_the_head_loop_trains_each_alone(tmp_path: Path) -> None:
    train, val = _features(72, 1), _features(30, 2)
    points = [
        HeadPoint(1e-2, "adam", 0.3, 8),
        HeadPoint(3e-2, "sgd", 0.5, 8, weight_decay=1e-3),
        HeadPoint(3e-3, "rmsprop", 0.3, 8, momentum=0.5),
        HeadPoint(1e-3, "adamw", 0.3, 16, weight_decay=1e-2, plateau=True),
    ]
    outcomes = train_heads(points, train, val, "binary", 2, 16, epochs=12, patience=3, seed=7)
    for g, p in enumerate(points):
        torch.manual_seed(7)
        head = ClassifierHead(24, 2, 16, p.dropout)
        schedule = "plateau" if p.plateau else "none"
        tc = TrainConfig(optimizer=p.optimizer, lr=p.lr, batch_size=p.batch_size, weight_decay=p.weight_decay,
                         momentum=p.momentum, epochs=12, patience=3, lr_schedule=schedule)  # fmt: skip
        run = tmp_path / f"alone{g}"
        run.mkdir()
        alone = fit_on_tensors(head, "binary", train, val, tc, 7, None, run, run / "last.ckpt")
        history = read_history(run / "history.csv")
        stacked = outcomes[g]
        assert (stacked.best_epoch, stacked.epochs_run) == (alone.best_epoch, alone.epochs_run), g
        for column in ("val_loss", "train_loss", "train_f1", "val_auc"):  # batched sums round a little differently
            expected = [float(r[column]) for r in history]
            assert [r[column] for r in stacked.history] == pytest.approx(expected, abs=5e-4), (g, column)
        for name in NAMES:
            assert torch.allclose(stacked.best_state[name], alone.best_state[name], atol=1e-5), (g, name)


def test_a_killed_stacked_run_resumes_to_the_same_heads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import covidxr.training.stacked as stacked

    train, val = _features(64, 3), _features(24, 4)
    points = [HeadPoint(1e-2, "adam", 0.3, 8), HeadPoint(1e-2, "rmsprop", 0.5, 8)]
    straight = train_heads(points, train, val, "binary", 2, 8, epochs=8, patience=8, seed=1)
    monkeypatch.setattr(stacked, "SAVE_EVERY_S", 0.0)
    end_epoch = stacked._Group._end_epoch

    def killed_in_epoch_5(self: stacked._Group, *args: object) -> None:
        if self.epoch == 5:
            raise RuntimeError("simulated kill -9 in epoch 5")
        end_epoch(self, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(stacked._Group, "_end_epoch", killed_in_epoch_5)
    with pytest.raises(RuntimeError, match="simulated kill"):
        train_heads(points, train, val, "binary", 2, 8, epochs=8, patience=8, seed=1, checkpoint_dir=tmp_path)
    monkeypatch.setattr(stacked._Group, "_end_epoch", end_epoch)
    resumed = train_heads(points, train, val, "binary", 2, 8, epochs=8, patience=8, seed=1, checkpoint_dir=tmp_path)
    for a, b in zip(straight, resumed, strict=True):
        assert [r["val_loss"] for r in a.history] == [r["val_loss"] for r in b.history]
        assert all(torch.equal(a.best_state[n], b.best_state[n]) for n in NAMES)
