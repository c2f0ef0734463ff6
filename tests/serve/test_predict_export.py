"""Predict streams files, folders and DICOM with broken files listed; exports match PyTorch; engines agree."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from covidxr.errors import CovidxrError
from covidxr.serve.engine import load_engine
from covidxr.serve.export import PARITY_TOLERANCE, export_run
from covidxr.serve.predict import predict_to_file
from tests.imagefiles import write_dicom

pytestmark = pytest.mark.slow  # trains a model or starts a server: in `make test`, not in `make test-fast`


@pytest.fixture(scope="module")
def folder(phantoms: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("to-predict")
    sources = sorted((phantoms / "images").rglob("*.png"))[:9]
    (out / "sub").mkdir()
    for i, src in enumerate(sources[:8]):
        (out / ("sub" if i % 2 else ".") / src.name).write_bytes(src.read_bytes())
    pixels = np.asarray(Image.open(sources[8]), dtype=np.uint16) * 16  # as 12-bit DICOM
    write_dicom(out / "sub" / "scan.dcm", pixels, bits_stored=12)
    (out / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    (out / "notes.txt").write_text("not an image, not listed")
    return out


def test_predict_folder_with_broken_files_csv_and_json(run_dir: Path, folder: Path, tmp_path: Path) -> None:
    counts = predict_to_file(run_dir, [folder], tmp_path / "p.csv", batch_size=4)
    assert counts == {"predicted": 9, "skipped": 1, "already_written": 0}
    rows = list(csv.DictReader((tmp_path / "p.csv").open()))
    by_name = {Path(r["path"]).name: r for r in rows}
    assert by_name["broken.png"]["error"].startswith("corrupt or truncated")
    assert by_name["scan.dcm"]["label"] in ("COVID-19", "not COVID-19") and not by_name["scan.dcm"]["error"]
    ok = [r for r in rows if not r["error"]]
    assert len({round(float(r["score_COVID-19"]), 4) for r in ok}) > 1  # scores depend on the image
    assert all(
        r["label"] == ("COVID-19" if float(r["score_COVID-19"]) >= float(r["threshold"]) else "not COVID-19")
        for r in ok
    )  # the run's one decision rule, at its validated threshold
    in_process = predict_to_file(run_dir, [folder], tmp_path / "p0.csv", batch_size=4, workers=0)
    assert in_process == counts  # decoding in worker processes (the default) or here: the same rows
    assert (tmp_path / "p0.csv").read_text() == (tmp_path / "p.csv").read_text()
    predict_to_file(run_dir, [folder], tmp_path / "p.json", batch_size=3, mc=5, workers=2)
    items = json.loads((tmp_path / "p.json").read_text())
    assert len(items) == 10 and all(i["mc_std"] > 0 for i in items if "error" not in i)


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_export_matches_pytorch_on_real_images(run_dir: Path, fmt: str) -> None:
    result = export_run(run_dir, fmt)
    assert Path(result["path"]).is_file() and result["images"] >= 4
    assert result["max_abs_diff"] <= PARITY_TOLERANCE


def test_int8_export_is_gated_on_test_auc_and_labels_and_used_by_the_onnx_engine(
    phantoms: Path, tmp_path: Path
) -> None:
    from covidxr.config import Config, DataConfig, TrainConfig
    from covidxr.serve.engine import INT8_FILE, ONNX_FILE
    from covidxr.serve.quantize import MAX_AUC_DROP, MIN_AGREEMENT, quantize_int8
    from covidxr.training.job import train

    # A head of 3 epochs at lr 3e-4 on the shared run's cached features (seconds), whose 18 test scores sit far
    # enough from the threshold for INT8 to keep every label; runs with some scores within INT8's error of it (the
    # converged shared run, or 3 epochs at 1e-3: 17 of 18 agree) are refused by the 99% rule, as they should be.
    cfg = Config(DataConfig(paths=(str(phantoms),)), TrainConfig(epochs=3, lr=3e-4))
    copy = train(cfg, tmp_path / "run").run_dir
    result = export_run(copy, "onnx", quantize="int8")["int8"]
    assert result["path"] == str(copy / INT8_FILE) and (copy / INT8_FILE).is_file()
    assert result["auc_drop"] <= MAX_AUC_DROP and result["agreement"] >= MIN_AGREEMENT
    assert result["test_images"] > 10 and result["calibration_images"] > 10
    assert (copy / INT8_FILE).stat().st_size < (copy / ONNX_FILE).stat().st_size / 2  # 8-bit weights
    assert load_engine(copy, "onnx").path == copy / INT8_FILE  # type: ignore[attr-defined]
    assert load_engine(copy, "onnx-fp32").path == copy / ONNX_FILE  # type: ignore[attr-defined]
    saved = json.loads((copy / "export_onnx.json").read_text())
    assert saved["int8"]["agreement"] == result["agreement"]
    with pytest.raises(CovidxrError, match=r"INT8 model refused, the fp32 model.onnx is kept: .*labels agree on"):
        quantize_int8(copy, min_agreement=1.01)  # a gate no model passes: both weight ranges tried, then refused
    assert not (copy / INT8_FILE).exists() and (copy / ONNX_FILE).is_file()
    (copy / INT8_FILE).write_bytes(b"quantised from an earlier export")
    export_run(copy, "onnx")  # a new fp32 export drops the INT8 model quantised from the old one
    assert not (copy / INT8_FILE).exists()
    with pytest.raises(CovidxrError, match="only int8, and only with --format onnx"):
        export_run(copy, "torchscript", quantize="int8")


def test_onnx_engine_gives_the_same_labels_as_torch(run_dir: Path, folder: Path, tmp_path: Path) -> None:
    export_run(run_dir, "onnx")
    predict_to_file(run_dir, [folder], tmp_path / "torch.csv", engine="torch")
    predict_to_file(run_dir, [folder], tmp_path / "onnx.csv", engine="onnx")
    a = list(csv.DictReader((tmp_path / "torch.csv").open()))
    b = list(csv.DictReader((tmp_path / "onnx.csv").open()))
    assert [r["label"] for r in a] == [r["label"] for r in b]
    for x, y in zip(a, b, strict=True):
        if not x["error"]:
            assert abs(float(x["score_COVID-19"]) - float(y["score_COVID-19"])) < 1e-4
    with pytest.raises(CovidxrError, match="needs the torch engine"):
        predict_to_file(run_dir, [folder], tmp_path / "x.csv", engine="onnx", mc=3)
    with pytest.raises(CovidxrError, match="unknown engine"):
        load_engine(run_dir, "tensorrt")


def test_predict_cli(run_dir: Path, folder: Path, tmp_path: Path) -> None:
    command = [sys.executable, "-m", "covidxr", "predict", str(run_dir), str(folder), "--out", str(tmp_path / "p.csv")]
    out = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    assert "predicted 9 image(s), skipped 1 unreadable" in out.stdout


def test_the_runs_temperature_reaches_torch_and_onnx_scores_alike(run_dir: Path, folder: Path, tmp_path: Path) -> None:
    import shutil

    from covidxr.rundir import RunDir

    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy, ignore=shutil.ignore_patterns("*.onnx", "*.ckpt"))
    before = predict_to_file(copy, [folder], tmp_path / "t1.csv") and list(csv.DictReader((tmp_path / "t1.csv").open()))
    calibration = RunDir(copy).read_calibration()
    assert calibration is not None
    fitted = calibration.temperature
    RunDir(copy).write_calibration(replace(calibration, temperature=2.5))  # as calibration writes a fitted one
    export_run(copy, "onnx")
    predict_to_file(copy, [folder], tmp_path / "torch.csv", engine="torch")
    predict_to_file(copy, [folder], tmp_path / "onnx.csv", engine="onnx")
    torch_rows = list(csv.DictReader((tmp_path / "torch.csv").open()))
    onnx_rows = list(csv.DictReader((tmp_path / "onnx.csv").open()))
    for t1, t, o in zip(before, torch_rows, onnx_rows, strict=True):
        if t["error"]:
            continue
        p1, p, q = (float(r["score_COVID-19"]) for r in (t1, t, o))
        assert abs(p - q) < 1e-4  # the exported graph divides by the temperature itself
        z1, z = np.log(p1 / (1 - p1)), np.log(p / (1 - p))
        assert z == pytest.approx(z1 * fitted / 2.5, abs=1e-3)  # logit / T


def test_test_time_augmentation_is_chosen_once_and_used_everywhere(run_dir: Path, tmp_path: Path) -> None:
    import shutil

    import torch

    from covidxr.evaluation.job import evaluate_run
    from covidxr.models.tta import TestTimeAugmented, tta_thetas
    from covidxr.serve.export import sample_batch

    net = load_engine(run_dir).net
    x = torch.from_numpy(sample_batch(run_dir, 4))
    with torch.no_grad():
        identity = TestTimeAugmented(net, tta_thetas()[:1]).eval()(x)
        assert torch.allclose(identity, net(x), atol=1e-4)  # the identity view is the image itself
        assert not torch.allclose(TestTimeAugmented(net).eval()(x), net(x), atol=1e-4)  # the moved views count
    tta_run = Path(shutil.copytree(run_dir, tmp_path / "tta-run"))
    plain = load_engine(tta_run).scores(x.numpy())
    trained = (tta_run / "model.json").read_bytes()
    metrics = evaluate_run(tta_run, n_resamples=0, audit=False, tta=True)
    assert (tta_run / "model.json").read_bytes() == trained  # evaluation leaves the training stage's file alone
    assert metrics.tta and json.loads((tta_run / "calibration.json").read_text())["tta"] is True
    engine = load_engine(tta_run)
    assert isinstance(engine.scoring, TestTimeAugmented)
    assert not np.allclose(engine.scores(x.numpy()), plain, atol=1e-4)
    export_run(tta_run, "onnx")  # parity with the TTA network is checked inside, or the export is refused
    assert np.allclose(load_engine(tta_run, "onnx").scores(x.numpy()), engine.scores(x.numpy()), atol=1e-4)


def test_predict_killed_with_sigkill_resumes_without_losing_or_repeating_rows(
    run_dir: Path, phantoms: Path, tmp_path: Path
) -> None:
    import os
    import signal
    import time

    many = tmp_path / "many"
    many.mkdir()
    sources = sorted((phantoms / "images").rglob("*.png"))
    for i in range(240):
        (many / f"img{i:03d}.png").hardlink_to(sources[i % len(sources)])
    out = tmp_path / "p.csv"
    command = [sys.executable, "-m", "covidxr", "predict", str(run_dir), str(many), "--out", str(out)]
    proc = subprocess.Popen([*command, "--batch-size", "4"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and (not out.exists() or out.read_text().count("\n") < 30):
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    before = out.read_text().count("\n") - 1
    assert 0 < before < 240, before  # killed part way
    with out.open("a") as fh:
        fh.write(f"{many}/img999.png,COVID-")  # what a kill in mid-row would leave: cut on resume
    resumed = subprocess.run([*command, "--resume"], capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert f"{before} row(s) kept from before" in resumed.stdout
    rows = list(csv.DictReader(out.open()))
    assert sorted(Path(r["path"]).name for r in rows) == sorted(p.name for p in many.iterdir())  # each exactly once
    assert all(r["label"] in ("COVID-19", "not COVID-19") for r in rows)
    with pytest.raises(CovidxrError, match=r"--resume needs a \.csv"):
        (tmp_path / "p.json").write_text("[\n")
        predict_to_file(run_dir, [many], tmp_path / "p.json", resume=True)
