"""Shared fixtures: the real cxr-dev set (skipped only where absent), a small generated phantom set, and one run
trained, evaluated and explained on it.

Under pytest-xdist (`make test` runs two workers or more, a test file per worker) the CPU threads are split
between the workers."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from covidxr.data.synth import generate

if TYPE_CHECKING:
    from covidxr.pipeline import RunResult

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach for the network, even where it exists


def pytest_configure(config: pytest.Config) -> None:
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0") or 0)
    if workers > 1:  # each worker (and the CLI processes its tests start) gets its share of the cores
        threads = str(max(1, (os.cpu_count() or 1) // workers))
        os.environ["OMP_NUM_THREADS"] = threads
        import torch

        torch.set_num_threads(int(threads))


def cxr_dev_path() -> Path:
    """`COVIDXR_CXR_DEV`, else ../shared/data/cxr-dev beside the repository."""
    configured = os.environ.get("COVIDXR_CXR_DEV", "../shared/data/cxr-dev")
    path = Path(configured)
    return path if path.is_absolute() else (REPO / path).resolve()


@pytest.fixture(scope="session")
def cxr_dev() -> Path:
    path = cxr_dev_path()
    if not (path / "labels.csv").is_file():
        pytest.skip(f"real chest X-rays not found at {path} (set COVIDXR_CXR_DEV); CI always has them")
    return path


@pytest.fixture(scope="session", autouse=True)
def _private_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    os.environ["COVIDXR_CACHE"] = str(tmp_path_factory.mktemp("cache"))


@pytest.fixture(scope="session")
def phantoms(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("phantoms")
    generate(out, n=120, seed=7)
    return out


@pytest.fixture(scope="session")
def phantom_run(phantoms: Path, tmp_path_factory: pytest.TempPathFactory) -> RunResult:
    """`covidxr run` on the phantoms (default recipe: trained, evaluated, audited, explained, reported), once per
    test process and shared by the evaluation, explain, serve and CLI tests. A test that changes the run's model or
    its evaluation works on a copy; adding files (an export, an external score) is fine."""
    from covidxr.config import Config, DataConfig, TrainConfig
    from covidxr.pipeline import run

    root = tmp_path_factory.mktemp("phantom-run")
    return run(Config(DataConfig(paths=(str(phantoms),)), TrainConfig(lr=1e-3)), root / "run", n_resamples=200)


@pytest.fixture(scope="session")
def run_dir(phantom_run: RunResult) -> Path:
    return phantom_run.report.parent
