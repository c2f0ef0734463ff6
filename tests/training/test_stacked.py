"""Stacked heads train as the head loop trains each of them alone: each with its own optimizer over its slice of
the stack, the same sample order and dropout masks, per-trial early stopping and schedule, and a resume after a
kill."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from covidxr.engine.history import read_history
from covidxr.engine.loop import LoopResult, fit, make_fabric
from covidxr.models.head import ClassifierHead
from covidxr.training.sampling import EpochSampler
from covidxr.training.stacked import NAMES, HeadPoint, _runs, train_heads
from covidxr.training.steps import ClassifierSteps, TensorBatches, make_optimizer, make_schedule

Pair = tuple[torch.Tensor, torch.Tensor]


def _features(n: int, seed: int) -> Pair:
    generator = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 2
    x = torch.randn(n, 24, generator=generator) + 0.8 * y[:, None].float()
    return x, y


def _alone(head: ClassifierHead, train: Pair, val: Pair, p: HeadPoint, folder: Path, seed: int) -> LoopResult:
    """The head trained alone, as a run trains it: the one loop on its cached features."""
    sampler = EpochSampler(train[1].tolist(), seed)
    in_order = EpochSampler(val[1].tolist(), seed, shuffle=False)
    steps = ClassifierSteps("binary", TensorBatches(*train, sampler, p.batch_size), TensorBatches(*val, in_order, 64),
                            sampler)  # fmt: skip
    optimizer = make_optimizer(head, p.optimizer, p.lr, p.weight_decay, p.momentum)
    schedule = make_schedule(optimizer, "plateau" if p.plateau else "none")
    return fit(make_fabric(), head, optimizer, steps, folder, epochs=12, patience=3, seed=seed, schedule=schedule)


def test_stacked_heads_train_as_the_head_loop_trains_each_alone(tmp_path: Path) -> None:
    train, val = _features(72, 1), _features(30, 2)
    points = [
        HeadPoint(1e-2, "adam", 0.3, 8),
        HeadPoint(3e-2, "sgd", 0.5, 8, weight_decay=1e-3),
        HeadPoint(3e-3, "rmsprop", 0.3, 8, momentum=0.5),
        HeadPoint(1e-3, "adamw", 0.3, 16, weight_decay=1e-2, plateau=True),
        HeadPoint(1e-2, "adam", 0.5, 8),  # the first's settings: one parameter group over both
        HeadPoint(1e-3, "adamw", 0.5, 16, weight_decay=1e-2),  # the scheduled one's: a group of its own each
    ]
    assert _runs([points[0], points[4]]) == [(0, 2)] and _runs([points[3], points[5]]) == [(0, 1), (1, 2)]
    outcomes = train_heads(points, train, val, "binary", 2, 16, epochs=12, patience=3, seed=7)
    for g, p in enumerate(points):
        torch.manual_seed(7)
        head = ClassifierHead(24, 2, 16, p.dropout)
        run = tmp_path / f"alone{g}"
        run.mkdir()
        alone = _alone(head, train, val, p, run, seed=7)
        history = read_history(run / "history.csv")
        stacked = outcomes[g]
        assert (stacked.best_epoch, stacked.epochs_run) == (alone.best_epoch, alone.epochs_run), g
        for column in ("val_loss", "train_loss", "train_f1", "val_auc"):  # batched sums round a little differently
            expected = [float(r[column]) for r in history]
            assert [r[column] for r in stacked.history] == pytest.approx(expected, abs=5e-4), (g, column)
        for name in NAMES:
            assert torch.allclose(stacked.best_state[name], alone.best_state[name], atol=1e-5), (g, name)


@pytest.mark.parametrize(("task", "outputs"), [("binary", 2), ("multiclass", 3)])
def test_the_written_out_gradients_are_autograds(task: str, outputs: int) -> None:
    """Every head's gradient of its mean loss (scaled per head: a stopped trial's is zero), with dropout masks,
    as autograd computes it through per_sample_loss."""
    from covidxr.training.stacked import _forward, _gradients
    from covidxr.training.steps import per_sample_loss

    generator = torch.Generator().manual_seed(0)
    g, h, d, b = 3, 16, 24, 8
    params = [torch.randn(g, *shape, generator=generator) for shape in ((h, d), (h,), (outputs, h), (outputs,))]
    x, y = torch.randn(b, d, generator=generator), torch.randint(0, outputs, (b,), generator=generator)
    masks = (torch.rand(g, b, h, generator=generator) > 0.3).float() / 0.7
    scale = torch.tensor([1.0, 0.0, 1.0])
    grads = [torch.full_like(p, float("nan")) for p in params]
    logits = _gradients(params, x, y, masks, task, scale, grads)
    leaves = [p.clone().requires_grad_(True) for p in params]
    expected = _forward(leaves, x, masks)
    losses = per_sample_loss(expected.reshape(-1, outputs), y.repeat(g), task).view(g, -1).mean(dim=1)
    (losses * scale).sum().backward()
    assert torch.allclose(logits, expected.detach(), atol=1e-6)
    for got, leaf in zip(grads, leaves, strict=True):
        assert leaf.grad is not None and torch.allclose(got, leaf.grad, atol=1e-6)
    assert not grads[0][1].any()  # the stopped head's gradient is zero


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
