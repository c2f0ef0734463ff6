"""The CLI: subcommands listed, usable data exits 0, broken input is one clear line, never a traceback."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from covidxr.data.synth import generate
from tests.imagefiles import mixed_folder


def covidxr(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "covidxr", *args], capture_output=True, text=True, cwd=cwd, timeout=600
    )


def _commands(help_text: str) -> set[str]:
    """The names in the help's Commands panel: the first word of each row that starts one ("│ name  text")."""
    panel = help_text.split("Commands", 1)[1]
    return {line.split()[1] for line in panel.splitlines() if line.startswith("│ ") and line[2:3].isalpha()}


def test_help_lists_subcommands() -> None:
    out = covidxr("--help")
    assert out.returncode == 0
    expected = {"data", "demo", "train", "augment", "run", "evaluate", "ensemble", "search", "serve", "predict"}
    assert _commands(out.stdout) >= expected
    assert _commands(covidxr("data", "--help").stdout) >= {"inspect", "split", "synth", "formats"}


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


@pytest.mark.slow
def test_synth_then_split_then_reuse(tmp_path: Path) -> None:
    assert covidxr("data", "synth", str(tmp_path / "ph"), "--n", "60").returncode == 0
    first = covidxr("data", "split", str(tmp_path / "ph"), "--out", str(tmp_path / "run"), "--seed", "4")
    assert first.returncode == 0 and "splits.csv written" in first.stdout
    again = covidxr("data", "split", str(tmp_path / "ph"), "--out", str(tmp_path / "run"))
    assert again.returncode == 0 and "splits.csv reused" in again.stdout


@pytest.mark.slow
def test_demo_runs_the_main_job_and_ends_with_the_report_path(tmp_path: Path) -> None:
    out = covidxr("demo", "--out", str(tmp_path / "demo"), "--n", "80", "--epochs", "2")
    assert out.returncode == 0, out.stderr
    assert "generated 80 phantoms" in out.stdout
    assert "80 usable" in out.stdout and "usable: yes" in out.stdout
    assert "trained tf_efficientnet_lite0" in out.stdout and "roc_auc" in out.stdout
    assert out.stderr.count("checking: started, 80 img") == 1  # the data are decoded once for every stage
    report = tmp_path / "demo" / "run" / "report.html"
    assert out.stdout.strip().endswith(f"report: {report}")
    for name in ("splits.csv", "best.safetensors", "model.json", "history.csv", "metrics.json", "predictions.csv"):
        assert (tmp_path / "demo" / "run" / name).is_file()
    again = covidxr("demo", "--out", str(tmp_path / "demo"), "--n", "80", "--epochs", "2")
    assert again.returncode == 0 and "generated" not in again.stdout  # phantoms and run are reused


def _relabel(labels_csv: Path, out: Path, relabel: dict[str, str], patients_every: int = 3) -> Path:
    """A copy of a phantom set's labels.csv (images linked) where every n-th patient of a label gets another."""
    import csv

    rows = list(csv.DictReader(labels_csv.open()))
    patients = sorted({r["patient_id"] for r in rows})
    chosen = set(patients[::patients_every])
    for r in rows:
        if r["patient_id"] in chosen and r["label"] in relabel:
            r["label"] = relabel[r["label"]]
    out.mkdir(parents=True)
    (out / "images").symlink_to(labels_csv.parent / "images")
    with (out / "labels.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return out


@pytest.mark.slow
def test_kermany_tree_inspects_with_its_labels_patients_and_official_split(tmp_path: Path) -> None:
    from tests.public_layouts import kermany

    top = kermany(tmp_path / "download")
    out = covidxr("data", "inspect", str(top), "--report", str(tmp_path / "r.json"), "--task", "multiclass")
    assert out.returncode == 0, out.stderr
    lines = {line.split()[0]: line.split() for line in out.stdout.splitlines() if line.strip()}
    assert lines["normal"][1:3] == ["15", "13"] and lines["pneumonia"][1:3] == ["14", "12"]  # images, patients
    assert "NORMAL" in lines["normal"] and "train" not in lines and "test" not in lines
    assert "split: official available (use --split official)" in out.stdout
    split = covidxr(
        "data", "split", str(top), "--out", str(tmp_path / "run"), "--split", "official", "--positive", "PNEUMONIA"
    )
    assert split.returncode == 0, split.stderr
    assert "split: official; test = the data set's own test list" in split.stdout


@pytest.mark.slow
def test_multiclass_training_and_external_evaluation_need_no_yaml(tmp_path: Path) -> None:
    generate(tmp_path / "ph", n=90, seed=3)
    data = _relabel(tmp_path / "ph" / "labels.csv", tmp_path / "three", {"normal": "pneumonia"})
    run = tmp_path / "run"
    out = covidxr("train", "--data", str(data), "--task", "multiclass", "--epochs", "2", "--augment", "none",
                  "--out", str(run))  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert json.loads((run / "model.json").read_text())["classes"] == ["COVID-19", "normal", "pneumonia"]
    generate(tmp_path / "ph2", n=40, seed=4)
    other = _relabel(tmp_path / "ph2" / "labels.csv", tmp_path / "ext", {"normal": "tuberculosis"})
    n_tb = sum(line.split(",")[1] == "tuberculosis" for line in (other / "labels.csv").read_text().splitlines())
    ext = covidxr("evaluate", str(run), "--data", str(other), "--out", str(tmp_path / "ext-out"), "--bootstrap", "20")
    assert ext.returncode == 0, ext.stderr
    assert f"dropped {n_tb} image(s) labelled 'tuberculosis': not a class of this run" in ext.stdout
    saved = json.loads((tmp_path / "ext-out" / "metrics.json").read_text())
    assert saved["dropped_labels"] == {"tuberculosis": n_tb} and saved["external"]["n_images"] == 40 - n_tb
    assert set(saved["per_label"]) == {"COVID-19", "normal"}
    mapped = covidxr("evaluate", str(run), "--data", str(other), "--out", str(tmp_path / "m"), "--bootstrap", "0",
                     "--label-map", "tuberculosis=pneumonia")  # fmt: skip
    assert mapped.returncode == 0 and "dropped" not in mapped.stdout
    refused = covidxr("evaluate", str(run), "--out", str(tmp_path / "x"))
    assert refused.returncode == 2 and "--out and --label-map go with --data" in refused.stderr
    bad = covidxr("evaluate", str(run), "--threshold", "foo")
    assert bad.returncode == 2 and "Traceback" not in bad.stderr and "'foo' is not one of" in bad.stderr


@pytest.mark.parametrize(
    ("blocked", "command", "extra"),
    [
        ("optuna", ["search", "--data", "d", "--grid", "g.yaml"], "search"),
        ("fastapi", ["serve", "some-run"], "serve"),
        ("onnxruntime", ["predict", "some-run", "x.png", "--engine", "onnx"], "export"),
    ],
)
def test_a_missing_optional_package_is_one_error_with_the_install_line(
    blocked: str, command: list[str], extra: str, tmp_path: Path
) -> None:
    script = (
        f"import sys; sys.modules[{blocked!r}] = None; sys.argv = ['covidxr', *{command!r}]\n"
        "from covidxr.cli import main; main()"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert f"pip install 'covidxr[{extra}]'" in out.stderr and blocked in out.stderr


def test_train_refuses_a_device_setting_before_any_data_work(tmp_path: Path) -> None:
    data = tmp_path / "phantoms"
    generate(data, n=12, seed=2)
    out = covidxr("train", "--data", str(data), "--out", str(tmp_path / "run"), "--accelerator", "quantum")
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
    assert "accelerator 'quantum'" in out.stderr and not (tmp_path / "run").exists()  # nothing read or written
