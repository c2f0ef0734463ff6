"""Loss, sampling and config: the small parts the trainer relies on."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from covidxr.config import Config, DataConfig, TrainConfig
from covidxr.errors import CovidxrError
from covidxr.training.sampling import EpochSampler, balance_groups, class_weights
from covidxr.training.steps import classification_loss, make_optimizer


def test_binary_loss_is_bce_on_one_hot_targets() -> None:
    logits = torch.tensor([[0.2, -1.0], [1.5, 0.3]])
    targets = torch.tensor([1, 0])
    manual = F.binary_cross_entropy(torch.sigmoid(logits), torch.tensor([[0.0, 1.0], [1.0, 0.0]]))
    assert classification_loss(logits, targets, "binary") == pytest.approx(manual.item(), rel=1e-6)
    multi = torch.randn(4, 3)
    assert classification_loss(multi, torch.tensor([0, 1, 2, 1]), "multiclass") == pytest.approx(
        F.cross_entropy(multi, torch.tensor([0, 1, 2, 1])).item()
    )


def test_class_weights_upweight_the_rare_class() -> None:
    weights = class_weights([0] * 90 + [1] * 10, 2)
    assert weights[1] / weights[0] == pytest.approx(9.0)
    logits = torch.tensor([[2.0, -2.0], [2.0, -2.0]])  # both called class 0: right on the first, wrong on the rare one
    targets = torch.tensor([0, 1])
    per_item = [classification_loss(logits[i : i + 1], targets[i : i + 1], "binary").item() for i in range(2)]
    weighted = classification_loss(logits, targets, "binary", weights)
    expected = (weights[0] * per_item[0] + weights[1] * per_item[1]) / weights.sum()
    assert weighted == pytest.approx(expected.item())  # the weighted mean, dominated by the rare class's error
    assert weighted > classification_loss(logits, targets, "binary") > per_item[0]


def test_epoch_sampler_is_reproducible_per_epoch_and_can_balance() -> None:
    targets = [0] * 90 + [1] * 10
    sampler = EpochSampler(targets, seed=5)
    first = list(sampler)
    assert sorted(first) == list(range(100))
    assert list(EpochSampler(targets, seed=5)) == first
    sampler.set_epoch(1)
    assert list(sampler) != first
    balanced = EpochSampler(targets, seed=5, balanced=True)
    counts = Counter(targets[i] for i in balanced)
    assert 0.35 < counts[1] / 100 < 0.65


def test_source_balanced_draws_even_out_each_source_and_class_pair() -> None:
    # class 0 from two hospitals (80 vs 10 films), class 1 from one: a class-balanced draw would take hospital
    # A's class-0 films eight times as often as hospital B's; a source-balanced one takes each pair alike
    targets = [0] * 90 + [1] * 30
    sources = ["A"] * 80 + ["B"] * 10 + ["C"] * 30
    groups = balance_groups("source", targets, sources)
    assert groups is not None and balance_groups("sampler", targets, sources) is None
    draws = Counter()
    for epoch in range(10):
        sampler = EpochSampler(targets, seed=1, balanced=True, groups=groups)
        sampler.set_epoch(epoch)
        draws.update(sources[i] for i in sampler)
    total = sum(draws.values())
    for source in "ABC":
        assert 0.28 < draws[source] / total < 0.39, draws


def test_sharded_sampler_covers_the_epoch_once_with_equal_shards_and_a_new_draw_each_epoch() -> None:
    targets = [0] * 45 + [1] * 6  # 51 items: two shards of 26, one item repeated as padding
    for balanced in (False, True):
        whole = EpochSampler(targets, seed=3, balanced=balanced)
        shards = [EpochSampler(targets, seed=3, balanced=balanced, rank=r, world=2) for r in (0, 1)]
        for s in (whole, *shards):
            s.set_epoch(4)
        a, b = (list(s) for s in shards)
        assert len(a) == len(b) == len(shards[0]) == 26
        order = whole.full_order()
        assert [x for pair in zip(a, b, strict=True) for x in pair][:51] == order  # interleaved = one process
        shards[0].set_epoch(5)
        assert list(shards[0]) != a  # the epoch reaches the draw (balanced or shuffled)
    in_order = [list(EpochSampler(targets, 0, shuffle=False, rank=r, world=2)) for r in (0, 1)]
    assert sorted(set(in_order[0] + in_order[1])) == list(range(51)) and in_order[1][-1] == 0  # padding wraps


def test_unknown_optimizer_is_refused() -> None:
    with pytest.raises(CovidxrError, match="unknown optimizer"):
        make_optimizer(torch.nn.Linear(2, 2), "lbfgs", 1e-3, 0.0, 0.9)


def test_config_yaml_roundtrip_and_unknown_fields(tmp_path: Path) -> None:
    cfg = Config(DataConfig(paths=("x",), seed=4), TrainConfig(backbone="resnet50", lr=3e-4, input_size=128))
    cfg.write_yaml(tmp_path / "c.yaml")
    assert Config.from_yaml(tmp_path / "c.yaml") == cfg
    (tmp_path / "bad.yaml").write_text("train:\n  learning_rate: 0.1\n")
    with pytest.raises(CovidxrError, match=r"unknown field\(s\) \['learning_rate'\]"):
        Config.from_yaml(tmp_path / "bad.yaml")
    (tmp_path / "choice.yaml").write_text("train:\n  freeze: half\n")
    with pytest.raises(CovidxrError, match=r"freeze = 'half' is not one of 'head', 'last-k' or 'full'"):
        Config.from_yaml(tmp_path / "choice.yaml")
    with pytest.raises(CovidxrError, match=r"lr_schedule = 'cosine' is not one of 'none' or 'plateau'"):
        Config.from_dict({"train": {"lr_schedule": "cosine"}})  # an optional choice is checked too
    (tmp_path / "types.yaml").write_text("train:\n  epochs: ten\n  dropout: 0.5\n  lr: x\n")
    with pytest.raises(CovidxrError, match=r"epochs = 'ten': Input should be a valid integer.*; lr = 'x'"):
        Config.from_yaml(tmp_path / "types.yaml")  # every wrong type, each by its field
    # what YAML gives as other types: 1e-4 (text to YAML 1.1), a device count, numeric labels, lists
    (tmp_path / "yaml.yaml").write_text(
        "data:\n  label_map: {0: normal, 1: COVID-19}\n  split_fractions: [0.6, 0.2, 0.2]\n"
        "train:\n  lr: 1e-4\n  devices: 2\n  cnn_widths: [8, 16]\n"
    )
    read = Config.from_yaml(tmp_path / "yaml.yaml")
    assert (read.train.lr, read.train.devices, read.train.cnn_widths) == (1e-4, "2", (8, 16))
    assert (read.data.label_map, read.data.split_fractions) == ({"0": "normal", "1": "COVID-19"}, (0.6, 0.2, 0.2))
    assert Config.from_dict({"train": {"lr_schedule": None, "balance": "sampler"}}).train.balance == "sampler"


def test_recipes_fill_only_what_was_not_given() -> None:
    from covidxr.config import RECIPES

    default = TrainConfig().resolved()
    assert (default.recipe, default.lr, default.lr_schedule) == ("default", RECIPES["default"]["head"]["lr"], "plateau")
    assert default.epochs > 20 and default.patience > 5  # trains the head to convergence
    study = TrainConfig(recipe="study").resolved()
    assert (study.epochs, study.lr, study.batch_size, study.optimizer, study.lr_schedule) == (
        20,
        1e-4,
        16,
        "adam",
        "none",
    )
    assert TrainConfig(recipe="study", lr=3e-3).resolved().lr == 3e-3  # a flag given wins over the recipe
    assert TrainConfig(freeze="full").resolved().lr == RECIPES["default"]["other"]["lr"]
    with pytest.raises(CovidxrError, match="unknown recipe 'fast'"):
        TrainConfig(recipe="fast").resolved()  # type: ignore[arg-type]


@pytest.mark.parametrize("task", ["binary", "multiclass"])
def test_linear_probe_folds_into_one_linear_layer_with_the_same_scores(task: str) -> None:
    import numpy as np

    from covidxr.models.head import positive_scores
    from covidxr.training.linear_probe import C_GRID, LinearProbe

    rng = np.random.default_rng(0)
    k = 2 if task == "binary" else 3
    y = rng.integers(0, k, 300)
    x = rng.normal(size=(300, 12)) * rng.uniform(0.1, 50, 12) + rng.normal(size=12) * 10  # unscaled features
    x[:, 0] += y * 40
    probe = LinearProbe(task, k).fit(x[:200], y[:200], x[200:], y[200:])
    assert probe.C in C_GRID
    layer = probe.as_linear()
    with torch.no_grad():
        folded = positive_scores(layer(torch.as_tensor(x[200:], dtype=torch.float32)), task).numpy()
    expected = probe.scores(x[200:])
    columns = [1] if task == "binary" else list(range(k))
    assert np.abs(folded[:, columns] - expected[:, columns]).max() < 1e-4


@pytest.mark.parametrize("task", ["binary", "multiclass"])
def test_epoch_metrics_match_scikit_learn(task: str) -> None:
    from sklearn.metrics import accuracy_score, f1_score, precision_score, recall_score, roc_auc_score

    from covidxr.training.metrics import epoch_metrics, scores_to_predictions

    rng = np.random.default_rng(3)
    k = 2 if task == "binary" else 3
    for n in (5, 7, 60):
        targets = rng.integers(0, k, n)
        scores = rng.random((n, k)).round(1)  # rounded: ties in the AUC
        if task == "multiclass":
            scores /= scores.sum(axis=1, keepdims=True)
        preds = scores_to_predictions(scores, task)
        average = "binary" if task == "binary" else "macro"
        ours = epoch_metrics(scores, targets, task)
        assert ours["acc"] == pytest.approx(accuracy_score(targets, preds))
        assert ours["precision"] == pytest.approx(precision_score(targets, preds, average=average, zero_division=0))
        assert ours["recall"] == pytest.approx(recall_score(targets, preds, average=average, zero_division=0))
        assert ours["f1"] == pytest.approx(f1_score(targets, preds, average=average, zero_division=0))
        if len(np.unique(targets)) < k:  # a class missing: AUC is undefined (scikit-learn raises)
            assert np.isnan(ours["auc"])
            continue
        binary = task == "binary"
        probs = scores / scores.sum(axis=1, keepdims=True)  # as epoch_metrics hands them to the AUC
        auc = roc_auc_score(targets, scores[:, 1]) if binary else roc_auc_score(targets, probs, multi_class="ovr")
        assert ours["auc"] == pytest.approx(auc)
    assert np.isnan(epoch_metrics(np.full((3, k), 1 / k), np.zeros(3, int), task)["auc"])  # one class: undefined


@pytest.mark.parametrize("name", ["adam", "adamw", "sgd", "rmsprop"])
def test_timms_optimizer_factory_builds_what_plain_pytorch_would(name: str) -> None:
    """The choices keep their PyTorch meaning through timm: heavy-ball SGD (not Nesterov), RMSprop's alpha 0.99,
    weight decay on every trainable parameter, PyTorch's fused kernel where it has one; frozen parameters are
    left out."""
    from torch import nn

    net = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3), nn.Linear(3, 2))
    net[0].requires_grad_(False)
    trainable = [p for p in net.parameters() if p.requires_grad]
    plain = {
        "adam": lambda: torch.optim.Adam(trainable, lr=1e-3, weight_decay=0.01, fused=True),
        "adamw": lambda: torch.optim.AdamW(trainable, lr=1e-3, weight_decay=0.01, fused=True),
        "sgd": lambda: torch.optim.SGD(trainable, lr=1e-3, momentum=0.8, weight_decay=0.01, fused=True),
        "rmsprop": lambda: torch.optim.RMSprop(trainable, lr=1e-3, momentum=0.8, weight_decay=0.01),
    }[name]()
    ours = make_optimizer(net, name, 1e-3, 0.01, 0.8)
    assert type(ours) is type(plain) and len(ours.param_groups) == 1
    assert ours.param_groups[0]["params"] == trainable
    assert {k: v for k, v in ours.param_groups[0].items() if k != "params"} == {
        k: v for k, v in plain.param_groups[0].items() if k != "params"
    }
