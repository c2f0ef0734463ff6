"""Leave-one-source-out: a source holding a whole label is named and not scored; a source sharing its labels is
scored by a model that never saw it; a run with one source per label is refused with a clear message."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from covidxr.config import Config, DataConfig, TrainConfig
from covidxr.data.synth import generate
from covidxr.errors import CovidxrError
from covidxr.evaluation.by_source import by_source_table, leave_one_source_out, read_by_source
from covidxr.training.job import train

pytestmark = pytest.mark.slow  # trains a model or starts a server: in `make test`, not in `make test-fast`


def _relabel_source(folder: Path, source: str, keep: str | None = None) -> None:
    """Give every image of a generated set one source; with `keep`, list only that label."""
    path = folder / "labels.csv"
    with path.open() as fh:
        rows = [r for r in csv.DictReader(fh) if keep is None or r["label"] == keep]
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows({**r, "source": source} for r in rows)


@pytest.fixture(scope="module")
def two_sources(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("by-source")
    generate(root / "hospital-a", n=60, seed=11)
    _relabel_source(root / "hospital-a", "Hospital A")
    generate(root / "hospital-b", n=50, seed=12)
    _relabel_source(root / "hospital-b", "Hospital B", keep="normal")
    return root


def test_each_source_is_scored_by_a_model_that_never_saw_it(two_sources: Path) -> None:
    data = (str(two_sources / "hospital-a"), str(two_sources / "hospital-b"))
    cfg = Config(
        DataConfig(paths=data), TrainConfig(epochs=3, lr=1e-3, augment="none", cache_dir=str(two_sources / "cache"))
    )
    run_dir = train(cfg, two_sources / "run").run_dir
    folds = {f.source: f for f in leave_one_source_out(run_dir)}
    assert set(folds) == {"Hospital A", "Hospital B"}
    a, b = folds["Hospital A"], folds["Hospital B"]
    assert a.skipped is not None and "COVID-19" in a.skipped and not a.rate_called  # A holds every positive
    assert b.skipped is None and b.trained_on == ["Hospital A"] and set(b.rate_called) == {"normal"}
    assert b.auc is None  # one class only in the held-out source
    fold_split = (run_dir / "by_source" / "Hospital-B" / "splits.csv").read_text()
    assert "hospital-b/" not in fold_split and ",test," not in fold_split  # held out whole, no test split
    assert read_by_source(run_dir) == list(folds.values())
    table = by_source_table(list(folds.values()))
    assert "Hospital B (" in table and "not held out" in table


def test_one_source_per_label_is_refused(phantoms: Path, tmp_path: Path) -> None:
    Config(DataConfig(paths=(str(phantoms),)), TrainConfig()).write_yaml(tmp_path / "config.yaml")
    with pytest.raises(CovidxrError, match="no label comes from two or more sources"):
        leave_one_source_out(tmp_path)  # refused before anything is trained
