"""The main job on real X-rays (the audit must warn on cxr-dev), and `covidxr run` killed with SIGKILL during
evaluation and again during explanation, resuming where it stopped without retraining."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from covidxr.config import Config, DataConfig, TrainConfig
from covidxr.pipeline import run

pytestmark = pytest.mark.slow  # trains a model or starts a server: in `make test`, not in `make test-fast`


def test_cxr_dev_run_raises_the_shortcut_warnings(cxr_dev: Path, tmp_path: Path) -> None:
    cfg = Config(DataConfig(paths=(str(cxr_dev),)), TrainConfig(epochs=5, augment_copies=0))
    result = run(cfg, tmp_path / "run", n_resamples=200, explain=False)  # the audit is the point here
    audit = result.metrics.audit
    assert audit is not None and audit.metadata_baseline.warning and audit.metadata_baseline.auc >= 0.8
    assert {name for name, _ in audit.metadata_baseline.top_features[:3]} & {
        "width",
        "height",
        "pixels",
        "aspect",
    }
    html = result.report.read_text()
    assert html.index("Warning:") < html.index('id="config"')  # the report opens with it
    assert "Labels are predictable without looking at the lungs" in html
    assert "Hannover Medical School" in html and "CC BY 4.0" in html  # data credits
    # Every COVID-19 film is Hannover's and no other source holds one: the test AUC cannot measure the finding,
    # and the first thing said about the test split, in the terminal and the report, is exactly that.
    fair = result.metrics.test_fair
    assert fair is not None and fair.within_source_auc is None and fair.verdict.startswith("cannot measure")
    summary = result.summary().splitlines()
    first = next(i for i, line in enumerate(summary) if line.startswith("test split"))
    assert "cannot measure the finding" in summary[first] and "roc_auc*" in result.summary()
    assert html.index("cannot measure the finding") < html.index("Test split:")


def test_run_killed_in_evaluation_then_in_explanation_resumes_without_retraining(
    phantoms: Path, tmp_path: Path
) -> None:
    import os
    import signal
    import time

    run_dir = tmp_path / "run"
    cli = [sys.executable, "-m", "covidxr", "run"]
    env = dict(os.environ)  # the session's feature cache: the phantoms' features are often there already

    def kill_when(command: list[str], ready: Callable[[], bool]) -> None:
        proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
        deadline = time.monotonic() + 600
        while not ready() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()

    def trained() -> bool:
        state = run_dir / "state.json"
        return state.is_file() and '"finished"' in state.read_text()

    kill_when([*cli, "--data", str(phantoms), "--out", str(run_dir), "--epochs", "2", "--lr", "1e-3"], trained)
    assert trained() and not (run_dir / "metrics.json").exists()  # killed during evaluation
    weights = (run_dir / "best.safetensors").stat().st_mtime_ns
    history = (run_dir / "history.csv").read_text()
    kill_when([*cli, "--resume", str(run_dir)], (run_dir / "metrics.json").is_file)
    assert not (run_dir / "explain.json").exists()  # killed during explanation
    evaluated = (run_dir / "metrics.json").stat().st_mtime_ns
    done = subprocess.run([*cli, "--resume", str(run_dir)], capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stderr
    assert (run_dir / "best.safetensors").stat().st_mtime_ns == weights  # never retrained
    assert (run_dir / "history.csv").read_text() == history
    assert (run_dir / "metrics.json").stat().st_mtime_ns == evaluated  # evaluation not redone
    assert (run_dir / "explain.json").is_file() and (run_dir / "report.html").is_file()
    assert "test split" in done.stdout
