"""The lung stage: post-processing and plausibility, a segmenter trained (and resumed) on phantoms' lung masks,
films segmented to masks and overlays (DICOM and broken files included), Dice scored against shipped masks."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from covidxr.config import DataConfig
from covidxr.data.synth import generate
from covidxr.errors import CovidxrError
from covidxr.lungs import LungGeometry, clean_mask, dice, load_lung_model
from covidxr.lungs.train import HISTORY, LungTrainConfig, train_lungs
from covidxr.models.registry import get_backbone
from covidxr.models.weights import bundled_weights_file
from tests.browser import images_in_chromium
from tests.imagefiles import write_dicom
from tests.servers import serve

ENCODER = bundled_weights_file(get_backbone("tf_efficientnet_lite0"))
SMALL = LungTrainConfig(epochs=2, patience=5, input_size=64, batch_size=8, encoder_weights=ENCODER)


def _two_lungs(h: int = 100, w: int = 100) -> np.ndarray:
    mask = np.zeros((h, w), dtype=bool)
    mask[20:80, 15:45] = True
    mask[20:80, 55:85] = True
    return mask


def test_cleaning_keeps_the_two_lungs_fills_holes_and_drops_specks() -> None:
    noisy = _two_lungs()
    noisy[40:45, 25:30] = False  # a hole in the left lung
    noisy[90:93, 5:8] = True  # a speck below
    noisy[2:6, 90:95] = True  # another one
    cleaned = clean_mask(noisy)
    assert dice(cleaned, _two_lungs()) == 1.0


@pytest.mark.parametrize(
    ("mask", "reason"),
    [
        (np.pad(np.ones((4, 4), bool), 48), "lung area"),  # a speck: 0.16% of the film
        (np.pad(np.ones((90, 12), bool), 5)[:, :100], "width/height"),  # one tall sliver
    ],
)
def test_an_implausible_mask_is_flagged_and_the_film_falls_back_to_itself(mask: np.ndarray, reason: str) -> None:
    g = LungGeometry.from_probability(mask.astype(float))
    assert not g.plausible and reason in (g.flagged or "")
    assert g.crop_box() == (0.0, 0.0, 1.0, 1.0)
    good = LungGeometry.from_probability(_two_lungs().astype(float))
    assert good.plausible
    x0, y0, x1, y1 = good.crop_box()
    assert (x0, y0) < (0.15, 0.20) and (x1, y1) > (0.85, 0.80) and x1 - x0 < 0.8  # the box plus a small margin


def test_dice_against_hand_counts() -> None:
    a, b = np.zeros((10, 10), bool), np.zeros((10, 10), bool)
    a[:, :4], b[:, 2:6] = True, True  # 40 and 40 pixels, 20 shared
    assert dice(a, b) == pytest.approx(0.5)
    assert dice(a, np.zeros_like(a)) == 0.0


@pytest.fixture(scope="module")
def lung_model(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    data = tmp_path_factory.mktemp("lung-phantoms")
    generate(data, n=48, seed=3)
    out = tmp_path_factory.mktemp("lung-model") / "model"
    train_lungs(DataConfig(paths=(str(data),)), out, SMALL)
    return data, out


@pytest.mark.slow
def test_segmenter_trains_on_shipped_masks_and_resumes_where_it_stopped(
    lung_model: tuple[Path, Path], tmp_path: Path
) -> None:
    data, trained = lung_model
    out = Path(shutil.copytree(trained, tmp_path / "model"))  # resumed on a copy: the other tests use the 2-epoch one
    model = load_lung_model(out)
    assert model.spec.weights.startswith("imagenet:") and len(model.sha256) == 64
    with (out / HISTORY).open() as fh:
        rows = list(csv.DictReader(fh))
    assert [int(r["epoch"]) for r in rows] == [0, 1]
    assert float(rows[-1]["val_dice"]) > 0.5  # two epochs at 64 px already find the phantoms' lungs
    resumed = train_lungs(DataConfig(paths=(str(data),)), out, LungTrainConfig(**{**vars(SMALL), "epochs": 3}))
    with (out / HISTORY).open() as fh:
        assert [int(r["epoch"]) for r in csv.DictReader(fh)] == [0, 1, 2]  # epochs 0-1 kept, not redone
    assert resumed.epochs_run == 3


def test_lungs_train_takes_an_accelerator_and_names_one_it_cannot_use(tmp_path: Path) -> None:
    data = tmp_path / "phantoms"
    generate(data, n=12, seed=1)
    out = subprocess.run(
        [sys.executable, "-m", "covidxr", "lungs", "train", "--data", str(data), "--out", str(tmp_path / "m"),
         "--size", "32", "--epochs", "1", "--accelerator", "quantum"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
    assert "accelerator 'quantum'" in out.stderr and "invalid accelerator name" in out.stderr


@pytest.mark.slow
def test_segment_writes_a_mask_and_overlay_per_film_and_names_the_broken_file(
    lung_model: tuple[Path, Path], tmp_path: Path
) -> None:
    data, model = lung_model
    films = tmp_path / "films"
    films.mkdir()
    first = next((data / "images" / "COVID-19").glob("*.png"))
    Image.open(first).save(films / "a.png")
    write_dicom(films / "b.dcm", np.asarray(Image.open(first), dtype=np.uint16) * 16, bits_stored=12)
    (films / "c.png").write_bytes(b"not a png")
    out = subprocess.run(
        [sys.executable, "-m", "covidxr", "lungs", "segment", str(model), str(films), "--out", str(tmp_path / "o")],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "Traceback" not in out.stderr and "1 unreadable" in out.stdout
    with (tmp_path / "o" / "segment.csv").open() as fh:
        rows = {Path(r["file"]).name: r for r in csv.DictReader(fh)}
    assert rows["c.png"]["error"] and not rows["a.png"]["error"] and not rows["b.dcm"]["error"]
    mask_a = np.asarray(Image.open(tmp_path / "o" / "a.png")) > 0
    mask_b = np.asarray(Image.open(tmp_path / "o" / "b.png")) > 0
    assert mask_a.shape == np.asarray(Image.open(first)).shape and 0.05 < mask_a.mean() < 0.75
    assert dice(mask_a, mask_b) > 0.95  # the same film as PNG and as 12-bit DICOM
    assert (tmp_path / "o" / "a_overlay.png").is_file()


@pytest.mark.slow
def test_lungs_evaluate_scores_dice_with_a_ci_and_draws_the_worst(
    lung_model: tuple[Path, Path], tmp_path: Path
) -> None:
    data, model = lung_model
    scored = tmp_path / "scored"
    scored.mkdir()
    shutil.copy(model / HISTORY, scored / HISTORY)  # as in a model folder: the report adds the training curve
    out = subprocess.run(
        [sys.executable, "-m", "covidxr", "lungs", "evaluate", str(model), "--data", str(data), "--out",
         str(scored), "--bootstrap", "50"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    metrics = json.loads((scored / "lungs_metrics.json").read_text())
    assert metrics["n_images"] == 48 and len(metrics["films"]) == 48
    lo, hi = metrics["dice_ci95"]
    assert lo <= metrics["mean_dice"] <= hi and metrics["mean_dice"] > 0.5
    assert (scored / "lungs_worst.png").is_file()
    page = scored / "lungs_report.html"
    assert f"report: {page}" in out.stdout
    html = page.read_text()
    assert f"{metrics['mean_dice']:.3f} [{lo:.3f}, {hi:.3f}]" in html
    worst = min(metrics["films"], key=lambda f: f["dice"])["path"]
    assert html.index(worst) < min(html.index(f["path"]) for f in metrics["films"] if f["path"] != worst)
    assert '<h2 id="lungs_training">' in html
    assert images_in_chromium(page, tmp_path) == (1, 0)  # the worst films, embedded, not broken


def test_a_folder_that_is_no_lung_model_is_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(CovidxrError, match="not a lung model"):
        load_lung_model(tmp_path)
    (tmp_path / "lungs.json").write_text("{}")
    (tmp_path / "lungs.safetensors").write_bytes(b"junk")
    with pytest.raises(CovidxrError, match=r"lungs\.safetensors"):
        load_lung_model(tmp_path)


def test_training_without_masks_says_what_it_needs(tmp_path: Path) -> None:
    from covidxr.errors import DataError

    generate(tmp_path / "p", n=6, seed=1)
    rows = (tmp_path / "p" / "labels.csv").read_text().splitlines()
    (tmp_path / "p" / "labels.csv").write_text("\n".join(r.rsplit(",", 1)[0] for r in rows) + "\n")  # no lung_mask
    with pytest.raises(DataError, match="lung_mask column"):
        train_lungs(DataConfig(paths=(str(tmp_path / "p"),)), tmp_path / "m", SMALL)


def test_cxr_lungs_films_and_masks_line_up(cxr_dev: Path) -> None:
    from covidxr.data.prepare import list_data
    from covidxr.lungs.films import MaskedFilms, with_masks

    manifest = list_data(DataConfig(paths=(str(cxr_dev.parent / "cxr-lungs"),)))
    records = with_masks(manifest)
    assert len(records) == len(manifest.records) == 134
    films = MaskedFilms.load(manifest.root, records[:12], 64)
    area = films.masks.float().mean(dim=(1, 2))
    assert films.films.shape == (12, 64, 64) and bool(((area > 0.05) & (area < 0.75)).all())


def test_mask_input_keeps_only_the_films_own_lungs_and_crop_keeps_their_box() -> None:
    from covidxr.data.dataset import Preprocess

    rng = np.random.default_rng(0)
    film = rng.random((100, 120)).astype(np.float32)
    lungs = _two_lungs(100, 120)
    box = (0.1, 0.15, 0.75, 0.85)

    def finder(px: np.ndarray) -> tuple[np.ndarray | None, tuple[float, float, float, float]]:
        return lungs, box

    masked = Preprocess(64, (0.5,) * 3, (0.5,) * 3, lungs="mask", finder=finder).to_unit_gray(film)
    cropped = Preprocess(64, (0.5,) * 3, (0.5,) * 3, lungs="crop", finder=finder).to_unit_gray(film)
    assert masked.shape == cropped.shape == (70, 78)  # rows 15-85, columns 12-90
    inside = lungs[15:85, 12:90]
    assert np.array_equal(cropped, film[15:85, 12:90]) and np.array_equal(masked[inside], cropped[inside])
    assert np.allclose(masked[~inside], film[lungs].mean())  # nothing outside the lungs left to see
    flagged = Preprocess(64, (0.5,) * 3, (0.5,) * 3, lungs="mask", finder=lambda px: (None, (0, 0, 1, 1)))
    assert np.array_equal(flagged.to_unit_gray(film), film)  # an implausible mask: the whole film, not noise
    with pytest.raises(CovidxrError, match="no lung model"):
        Preprocess(64, (0.5,) * 3, (0.5,) * 3, lungs="crop").to_unit_gray(film)


@pytest.mark.slow
def test_a_run_with_lung_input_carries_its_lung_model_to_every_later_stage(
    lung_model: tuple[Path, Path], tmp_path: Path
) -> None:

    from covidxr.config import Config, TrainConfig
    from covidxr.evaluation.job import evaluate_run
    from covidxr.lungs.segmenter import WEIGHTS_FILE
    from covidxr.models.spec import ModelSpec
    from covidxr.training.job import train

    data, model = lung_model
    cfg = Config(DataConfig(paths=(str(data),)), TrainConfig(epochs=3, lung_model=str(model), augment="none",
                                                             cache_dir=str(tmp_path / "cache")))  # fmt: skip
    result = train(cfg, tmp_path / "run")
    run = result.run_dir
    saved = json.loads((run / "model.json").read_text())
    assert saved["lungs"] == "mask" and saved["lung_model"] == load_lung_model(model).sha256  # --lung-model alone
    assert "finder" not in saved and (run / "lungs" / WEIGHTS_FILE).is_file()
    assert result.cache_hit is False
    spec = ModelSpec.read(run)  # what evaluate, explain, predict, export and serve open the run with
    film = np.asarray(Image.open(next((data / "images" / "normal").glob("*.png"))), dtype=np.float32) / 255
    cut = spec.preprocess.to_unit_gray(film)
    assert cut.size < 0.9 * film.size  # its own lung box, not the film
    _, counts = np.unique(cut, return_counts=True)
    assert counts.max() > 0.1 * cut.size  # everything outside its lungs flattened to one value
    metrics = evaluate_run(run, n_resamples=20)
    assert metrics.audit is not None
    assert metrics.audit.lung_occlusion.lungs_from == {"the run's lung model": metrics.test.n_images}
    exported = subprocess.run([sys.executable, "-m", "covidxr", "export", str(run), "--format", "onnx"],
                              capture_output=True, text=True, timeout=600)  # fmt: skip
    assert exported.returncode == 0, exported.stderr
    assert json.loads((run / "export_onnx.json").read_text())["lungs"]["max_abs_diff"] < 1e-4
    torch_rows = subprocess.run(
        [sys.executable, "-m", "covidxr", "predict", str(run), str(data / "images" / "normal"), "--out",
         str(tmp_path / "p.csv")], capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert torch_rows.returncode == 0, torch_rows.stderr
    with (tmp_path / "p.csv").open() as fh:
        predicted = {Path(r["path"]).name: r for r in csv.DictReader(fh)}
    assert len(predicted) == len(list((data / "images" / "normal").glob("*.png")))
    _served_like_predict(run, sorted((data / "images" / "normal").glob("*.png"))[:3], predicted, spec.lung_model)
    plain = train(Config(cfg.data, TrainConfig(epochs=3, augment="none", cache_dir=cfg.train.cache_dir)),
                  tmp_path / "plain")  # fmt: skip
    assert plain.cache_hit is False  # the lung model is part of the feature-cache key
    (run / "lungs" / WEIGHTS_FILE).unlink()
    shutil.copy(plain.run_dir / "best.safetensors", run / "lungs" / WEIGHTS_FILE)  # any other file
    with pytest.raises(CovidxrError, match="lung"):
        ModelSpec.read(run)


def _served_like_predict(run: Path, films: list[Path], predicted: dict[str, dict[str, str]], sha: str | None) -> None:
    """The service, started as users start it, cuts each upload to its lungs as `predict` did: same scores."""
    import httpx

    proc, url = serve(run)
    try:
        about = httpx.get(f"{url}/v1/model", timeout=30).json()
        assert about["lungs"] == "mask" and about["lung_model"] == sha
        for film in films:
            answer = httpx.post(f"{url}/v1/predict", files={"file": (film.name, film.read_bytes())}, timeout=120)
            assert answer.status_code == 200, answer.text
            served = answer.json()["probabilities"]["COVID-19"]
            assert served == pytest.approx(float(predicted[film.name]["score_COVID-19"]), abs=1e-5)
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_the_data_report_gives_each_labels_lung_area_and_box(tmp_path: Path) -> None:
    from covidxr.data.prepare import inspect_data

    generate(tmp_path / "p", n=20, seed=2)
    _, report = inspect_data(DataConfig(paths=(str(tmp_path / "p"),)))
    for label in ("COVID-19", "normal"):
        g = report.geometry[label]
        assert g["lung_masks"] == report.per_label[label]["images"]
        assert 0.1 < g["median_lung_area"] < 0.5 and 0.3 < g["median_lung_box_width"] < 1
    assert "lung area" in report.format_table()
