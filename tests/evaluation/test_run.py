"""The main job end to end: report sections and plots exist, the audit speaks exactly when it should,
the threshold never looks at test labels, external validation works, and the report renders in a browser."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from covidxr.config import Config
from covidxr.data.synth import generate
from covidxr.evaluation.job import comparison_table, evaluate_external, evaluate_run
from covidxr.pipeline import RunResult
from covidxr.results import Evaluation
from covidxr.rundir import RunDir
from tests.browser import images_in_chromium
from tests.imagefiles import flip_test_labels

pytestmark = pytest.mark.slow  # trains a model or starts a server: in `make test`, not in `make test-fast`

SECTIONS = ("config", "data", "training", "metrics", "audit", "explanations", "mistakes", "augmentation", "credits")
PLOTS = (
    "loss", "accuracy", "roc", "pr", "confusion", "reliability", "mistakes", "occlusion", "augment", "augment_hsv",
    "cam_gallery", "referral", "filters",
)  # fmt: skip


def test_phantom_report_is_complete_and_the_audit_stays_quiet(phantom_run: RunResult) -> None:
    run_dir = phantom_run.report.parent
    html = phantom_run.report.read_text()
    for anchor in SECTIONS:
        assert f'id="{anchor}"' in html
    for plot in PLOTS:
        assert (run_dir / "plots" / f"{plot}.png").is_file(), plot
    metrics = phantom_run.metrics
    assert metrics.test.metrics["roc_auc"] > 0.85
    audit = metrics.audit
    assert audit is not None and audit.warnings == [] and "Warning:" not in html
    assert audit.metadata_baseline.auc < 0.8 and audit.lung_occlusion.auc_occluded < 0.8
    assert metrics.threshold is not None
    calibration = json.loads((run_dir / "calibration.json").read_text())  # the one place the decision rule lives
    assert calibration["threshold"] == metrics.threshold.value and calibration["fitted_on"] == "val"
    assert calibration["temperature"] == metrics.calibration.temperature
    assert {"threshold", "temperature", "tta"}.isdisjoint(json.loads((run_dir / "model.json").read_text()))
    saved = json.loads((run_dir / "metrics.json").read_text())  # the file is the result, and reads back whole
    assert json.dumps(Evaluation.from_json(saved).to_json()) == json.dumps(saved) == json.dumps(metrics.to_json())
    with (run_dir / "predictions.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == metrics.val.n_images + metrics.test.n_images
    assert {"path", "patient_id", "label", "score_COVID-19", "predicted"} <= set(rows[0])
    lo, hi = metrics.test.ci95["roc_auc"]
    assert lo <= metrics.test.metrics["roc_auc"] <= hi


def test_trained_phantom_model_points_at_its_lesions(phantom_run: RunResult) -> None:
    explain = RunDir(phantom_run.report.parent).read_explanation()
    assert explain is not None and explain.localisation is not None
    loc = explain.localisation
    assert loc.true_positives >= 5
    assert loc.pointing_game >= max(0.6, 3 * loc.chance), loc  # hit within 15 px vs a random point
    assert explain.cam == "layercam at blocks.4"  # what the maps were taken with, recorded
    assert loc.energy_inside_mask > 1.5 * loc.mask_area, loc
    assert explain.lungs_from == {"the data set's lung masks": sum(int(v[3]) for v in explain.cam_in_lungs.values())}
    assert explain.lung_area is not None
    outside_share = 1 - explain.lung_area  # a CAM spread evenly over each film: this much outside its own lungs
    assert explain.cam_energy_outside_lungs < outside_share  # phantom lesions sit inside the lungs: the CAM too
    for share, lo, hi, _ in explain.cam_in_lungs.values():
        assert lo <= share <= hi


def test_explain_and_filters_commands(phantom_run: RunResult, tmp_path: Path) -> None:
    run_dir = phantom_run.report.parent
    data = Path(yaml.safe_load((run_dir / "config.yaml").read_text())["data"]["paths"][0])
    folder = tmp_path / "imgs"
    folder.mkdir()
    for src in sorted((data / "images" / "COVID-19").glob("*.png"))[:2]:
        shutil.copy(src, folder / src.name)
    (folder / "broken.png").write_bytes(b"not a png")
    command = [sys.executable, "-m", "covidxr"]
    out = subprocess.run([*command, "explain", str(run_dir), str(folder), "--out", str(tmp_path / "x"), "--mc", "5"],
                         capture_output=True, text=True, timeout=600)  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "skipped" in out.stdout and "broken.png: not an image" in out.stdout
    summary = json.loads((tmp_path / "x" / "uncertainty.json").read_text())
    assert len(summary["images"]) == 2 and all(i["std"] >= 0 for i in summary["images"])
    first = tmp_path / "x" / Path(summary["images"][0]["path"]).stem
    assert (first / "cam_predicted.png").is_file() and (first / "cam_positive.png").is_file()
    assert len(list(first.glob("features_*.png"))) >= 4
    filters = subprocess.run([*command, "filters", str(run_dir)], capture_output=True, text=True, timeout=600)
    assert filters.returncode == 0 and "filters.json" in filters.stdout


def test_threshold_does_not_change_when_test_labels_do(phantom_run: RunResult, tmp_path: Path) -> None:
    run_dir = phantom_run.report.parent
    original = Path(yaml.safe_load((run_dir / "config.yaml").read_text())["data"]["paths"][0])
    data = flip_test_labels(original, run_dir / "splits.csv", tmp_path / "data")
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    cfg = yaml.safe_load((copy / "config.yaml").read_text())
    cfg["data"]["paths"] = [str(data)]
    (copy / "config.yaml").write_text(yaml.safe_dump(cfg))
    flipped = evaluate_run(copy, n_resamples=50, audit=False)
    assert flipped.threshold == phantom_run.metrics.threshold
    assert flipped.val.metrics == phantom_run.metrics.val.metrics
    assert flipped.test.metrics["roc_auc"] < 0.5 < phantom_run.metrics.test.metrics["roc_auc"]


def test_external_validation_on_a_second_data_set(phantom_run: RunResult, tmp_path: Path) -> None:
    generate(tmp_path / "other", n=60, seed=99)
    run_dir = phantom_run.report.parent
    result = evaluate_external(run_dir, tmp_path / "other", n_resamples=100)
    assert result.external.n_images == 60 and phantom_run.metrics.threshold is not None
    assert result.threshold == phantom_run.metrics.threshold.value
    fair = result.fair
    assert fair is not None and fair.verdict == "within-source" and fair.cross_source_share == 0
    assert fair.within_source_auc == pytest.approx(result.external.metrics["roc_auc"])  # one source: the same pairs
    table = comparison_table(result)
    assert "internal test" in table and "roc_auc" in table and "roc_auc*" not in table
    # Positives from one hospital, negatives from another: the case that fooled us. Scored together, the set
    # is declared unable to measure the finding, in the terminal and in the report.
    for name, keep, source in (("pos", ",COVID-19,", "hospital A"), ("neg", ",normal,", "hospital B")):
        generate(tmp_path / name, n=40, seed=97)
        rows = (tmp_path / name / "labels.csv").read_text().splitlines()
        kept = [r.replace(",covidxr synthetic phantom,", f",{source},") for r in rows[1:] if keep in r]
        (tmp_path / name / "labels.csv").write_text("\n".join([rows[0], *kept]) + "\n")
    command = [sys.executable, "-m", "covidxr", "evaluate", str(run_dir), "--data", str(tmp_path / "pos"),
               "--data", str(tmp_path / "neg")]  # fmt: skip
    out = subprocess.run([*command, "--bootstrap", "50"], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    first = out.stdout.splitlines()[0]
    assert first.startswith("FAIR") and "cannot measure the finding" in first
    assert "roc_auc*" in out.stdout and "measures the hospital as much as the finding" in out.stdout
    report = (run_dir / "report.html").read_text()
    assert 'id="external"' in report and "cannot measure the finding" in report


def test_a_one_class_external_set_is_scored_with_what_it_allows(phantom_run: RunResult, tmp_path: Path) -> None:
    generate(tmp_path / "other", n=60, seed=98)
    rows = (tmp_path / "other" / "labels.csv").read_text().splitlines()
    (tmp_path / "other" / "labels.csv").write_text("\n".join([rows[0], *(r for r in rows[1:] if ",normal," in r)]))
    run_dir, out = phantom_run.report.parent, tmp_path / "ext"
    command = [sys.executable, "-m", "covidxr", "evaluate", str(run_dir), "--data", str(tmp_path / "other")]
    result = subprocess.run(
        [*command, "--out", str(out), "--bootstrap", "50"], capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr
    assert "external set holds one class only (not COVID-19): AUCs are not defined" in result.stdout
    saved = json.loads((out / "metrics.json").read_text())
    with (out / "predictions.csv").open() as fh:
        predicted = [int(r["predicted"]) for r in csv.DictReader(fh)]
    normal = saved["per_label"]["normal"]
    assert normal["n_images"] == len(predicted) and normal["called"] == "COVID-19"
    assert normal["rate_called"] == pytest.approx(sum(predicted) / len(predicted))
    assert saved["external"]["metrics"]["specificity"] == pytest.approx(1 - normal["rate_called"])
    lo, hi = normal["rate_called_ci95"]
    assert lo <= normal["rate_called"] <= hi


def test_report_renders_without_broken_images_in_chromium(phantom_run: RunResult, tmp_path: Path) -> None:
    n_images, broken = images_in_chromium(phantom_run.report, tmp_path)
    assert n_images >= len(PLOTS) - 1 and broken == 0, (n_images, broken)


def test_an_ensemble_is_a_run_of_the_mean_calibrated_scores(phantom_run: RunResult, tmp_path: Path) -> None:
    import torch

    from covidxr.explain.gradcam import grad_cam
    from covidxr.models.factory import load_model
    from covidxr.serve.predict import predict_to_file
    from covidxr.training.job import train

    first = phantom_run.report.parent
    second = tmp_path / "linear"
    second.mkdir()
    shutil.copy(first / "splits.csv", second / "splits.csv")  # one split for both members
    cfg = Config.from_yaml(first / "config.yaml")
    cfg.train.head = "linear"
    train(cfg, second)
    out = subprocess.run(
        [sys.executable, "-m", "covidxr", "ensemble", str(first), str(second), "--out", str(tmp_path / "ens"),
         "--bootstrap", "20"], capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "ensemble of 2 runs: test" in out.stdout and (tmp_path / "ens" / "report.html").is_file()
    net, spec = load_model(tmp_path / "ens")
    members = [load_model(first), load_model(second)]
    x = torch.randn(4, 3, spec.input_size, spec.input_size)
    with torch.no_grad():
        mean = torch.stack([s.scores(n(x)) for n, s in members]).mean(0)[:, 1]
        assert torch.allclose(torch.sigmoid(net(x)[:, 1]), mean, atol=1e-5)
    assert grad_cam(net, spec, x[:2]).shape == (2, spec.input_size, spec.input_size)
    counts = predict_to_file(tmp_path / "ens", [Path(cfg.data.paths[0]) / "images"], tmp_path / "p.csv")
    assert counts["predicted"] > 0 and counts["skipped"] == 0
    assert json.loads((tmp_path / "ens" / "metrics.json").read_text())["test"]["n_images"] > 0  # evaluated by the CLI
    other = tmp_path / "other-split"
    shutil.copytree(second, other)
    (other / "splits.csv").write_text((other / "splits.csv").read_text().replace(",test,", ",val,", 1))
    bad = subprocess.run([sys.executable, "-m", "covidxr", "ensemble", str(first), str(other), "--out",
                          str(tmp_path / "bad")], capture_output=True, text=True, timeout=600)  # fmt: skip
    assert bad.returncode == 2 and "another split" in bad.stderr


def test_one_run_handle_reads_each_fact_once_through_evaluate_explain_and_report(
    phantom_run: RunResult, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Evaluate, explain and report handed one Run read config.yaml once, check (decode) the data once and load
    the network once; explain sees the calibration evaluate just fitted."""
    import covidxr.run as run_module
    from covidxr.explain.job import explain_run
    from covidxr.report.html import write_report
    from covidxr.run import Run

    copy = tmp_path / "run"
    shutil.copytree(phantom_run.report.parent, copy)
    for name in (RunDir.metrics, RunDir.explain, RunDir.calibration):
        (copy / name).unlink()
    calls: dict[str, int] = {}

    def counted(name: str, function: object) -> object:
        def wrapper(*args: object, **kwargs: object) -> object:
            calls[name] = calls.get(name, 0) + 1
            return function(*args, **kwargs)  # type: ignore[operator]

        return wrapper

    for name in ("load_model", "usable_data", "list_data"):
        monkeypatch.setattr(run_module, name, counted(name, getattr(run_module, name)))
    monkeypatch.setattr(Config, "from_yaml", classmethod(counted("config", Config.from_yaml.__func__)))  # type: ignore[attr-defined]
    run = Run(copy)
    evaluate_run(run, n_resamples=0, audit=False)
    explanation = explain_run(run, mc_passes=2, gallery=1)
    write_report(run)
    assert calls == {"config": 1, "usable_data": 1, "load_model": 1}  # explain samples the checked images
    assert run.spec.calibration == RunDir(copy).read_calibration() is not None
    assert explanation.mc_passes == 2 and (copy / "report.html").is_file()
