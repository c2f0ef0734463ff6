"""The CLI: subcommands listed, usable data exits 0, broken input is one clear line, never a traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from covidxr.data.synth import generate
from tests.imagefiles import mixed_folder


def covidxr(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "covidxr", *args], capture_output=True, text=True, cwd=cwd, timeout=600
    )


def test_help_lists_subcommands() -> None:
    out = covidxr("--help")
    assert out.returncode == 0
    for name in ("data", "demo", "train", "augment", "run", "evaluate"):
        assert name in out.stdout
    data_help = covidxr("data", "--help").stdout
    for name in ("inspect", "split", "synth"):
        assert name in data_help


def test_inspect_mixed_folder_names_every_broken_file_without_traceback(tmp_path: Path) -> None:
    broken = mixed_folder(tmp_path / "data")
    out = covidxr("data", "inspect", str(tmp_path / "data"), "--report", str(tmp_path / "r.json"))
    assert out.returncode == 0, out.stderr
    assert "Traceback" not in out.stdout + out.stderr
    for path in broken:
        assert path in out.stdout
    assert (tmp_path / "r.json").is_file()


def test_unusable_data_exits_1_and_missing_path_exits_2_with_one_line(tmp_path: Path) -> None:
    generate(tmp_path / "ph", n=12, seed=0)
    (tmp_path / "ph" / "labels.csv").write_text("path,label\n" + "images/x.png,normal\n")
    out = covidxr("data", "inspect", str(tmp_path / "ph"), "--report", str(tmp_path / "r.json"))
    assert out.returncode == 1 and "UNUSABLE" in out.stdout and "Traceback" not in out.stderr
    missing = covidxr("data", "inspect", str(tmp_path / "nowhere"))
    assert missing.returncode == 2
    assert missing.stderr.strip() == f"error: {tmp_path / 'nowhere'}: no such file or folder"


def test_split_refuses_unusable_data_in_one_line(tmp_path: Path) -> None:
    (tmp_path / "d" / "COVID-19").mkdir(parents=True)
    generate(tmp_path / "ph", n=12, seed=0)
    for p in sorted((tmp_path / "ph" / "images" / "COVID-19").glob("*.png")):
        p.rename(tmp_path / "d" / "COVID-19" / p.name)
    out = covidxr("data", "split", str(tmp_path / "d"), "--out", str(tmp_path / "run"))
    assert out.returncode == 2
    assert "unusable data set: only one class" in out.stderr and "Traceback" not in out.stderr


def test_synth_then_split_then_reuse(tmp_path: Path) -> None:
    assert covidxr("data", "synth", str(tmp_path / "ph"), "--n", "60").returncode == 0
    first = covidxr("data", "split", str(tmp_path / "ph"), "--out", str(tmp_path / "run"), "--seed", "4")
    assert first.returncode == 0 and "splits.csv written" in first.stdout
    again = covidxr("data", "split", str(tmp_path / "ph"), "--out", str(tmp_path / "run"))
    assert again.returncode == 0 and "splits.csv reused" in again.stdout


def test_demo_runs_the_main_job_and_ends_with_the_report_path(tmp_path: Path) -> None:
    out = covidxr("demo", "--out", str(tmp_path / "demo"), "--n", "80", "--epochs", "2")
    assert out.returncode == 0, out.stderr
    assert "generated 80 phantoms" in out.stdout
    assert "80 usable" in out.stdout and "usable: yes" in out.stdout
    assert "trained tf_efficientnet_lite0" in out.stdout and "roc_auc" in out.stdout
    report = tmp_path / "demo" / "run" / "report.html"
    assert out.stdout.strip().endswith(f"report: {report}")
    for name in ("splits.csv", "best.safetensors", "model.json", "history.csv", "metrics.json", "predictions.csv"):
        assert (tmp_path / "demo" / "run" / name).is_file()
    again = covidxr("demo", "--out", str(tmp_path / "demo"), "--n", "80", "--epochs", "2")
    assert again.returncode == 0 and "generated" not in again.stdout  # phantoms and run are reused
