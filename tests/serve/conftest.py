"""One small trained run shared by the serving tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from covidxr.config import Config, DataConfig, TrainConfig
from covidxr.training.job import train


@pytest.fixture(scope="session")
def run_dir(phantoms: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("serve-run")
    cfg = Config(DataConfig(paths=(str(phantoms),)), TrainConfig(epochs=3, lr=1e-3))  # the session's feature cache
    return train(cfg, root / "run").run_dir
