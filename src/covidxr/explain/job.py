"""`explain` (images), `filters` (the network), and the run-level analysis behind the report's Explanations
section: CAM gallery, localisation on phantoms, CAM energy outside the lungs, MC-dropout referral curve.

The report stage draws the figures of what explain.json holds (the referral curve); the CAM gallery and the
first-layer filters are drawn here, from network internals the run does not store."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure

from covidxr.atomic import write_json
from covidxr.data.readers import iter_image_files, read_image
from covidxr.errors import CovidxrError, ImageReadError
from covidxr.evaluation.bootstrap import patient_bootstrap
from covidxr.explain.activations import dead_filters, feature_maps, first_conv, top_channels, weight_stats
from covidxr.explain.gradcam import DEFAULT_CAM_METHOD, cam_name, grad_cam, overlay
from covidxr.explain.localisation import chance_rate, energy_inside, pointing_hit
from covidxr.explain.uncertainty import mc_dropout, referral_curve
from covidxr.lungs.as_seen import record_lungs
from covidxr.models.ensemble import is_ensemble
from covidxr.models.factory import CovidxrNet
from covidxr.models.spec import ModelSpec
from covidxr.results import Explanation, Filters, Localisation
from covidxr.run import Run
from covidxr.rundir import RunDir

EXPLAIN_FILE = RunDir.explain
MANY_DEAD = 0.5
EXPLAINED_FILMS = 400  # test films explained at most (CAMs, MC dropout, localisation), spread over the split


def _save(fig: Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)  # explanations may come before the report's figures
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    return path


def _feature_grid(name: str, maps: torch.Tensor, path: Path) -> Path:
    tiles = top_channels(maps, 16)
    fig = Figure(figsize=(6, 6))
    axes = fig.subplots(4, 4)
    for ax, tile in zip(axes.flat, list(tiles) + [None] * (16 - len(tiles)), strict=True):
        if tile is not None:
            ax.imshow(tile, cmap="viridis")
        ax.axis("off")
    fig.suptitle(f"{name}: {maps.shape[0]} channels, {maps.shape[1]}x{maps.shape[2]} (16 most active)", fontsize=9)
    return _save(fig, path)


def explain_images(run: Run | Path | str, paths: list[Path], out: Path | str, mc_passes: int = 30) -> dict[str, Any]:
    """Feature maps (one PNG per layer), CAM overlays (predicted and positive class) and MC-dropout uncertainty
    per image; unreadable files are listed with their reason and the rest still explained."""
    run = Run.open(run)
    if is_ensemble(run.root):
        raise CovidxrError(f"{run.root} is an ensemble: feature maps belong to its members; explain one of them")
    net, spec = run.net, run.spec
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    pre = spec.preprocess
    results, skipped = [], []
    for path in iter_image_files(paths):
        try:
            gray = read_image(path).pixels
        except ImageReadError as exc:
            skipped.append({"path": str(path), "problem": exc.problem, "detail": exc.detail})
            continue
        x = pre(gray)
        folder = out / path.stem
        folder.mkdir(exist_ok=True)
        for layer, maps in feature_maps(net, x).items():
            _feature_grid(layer, maps, folder / f"features_{layer.replace('.', '_')}.png")
        for which in ("predicted", "positive"):
            cam = grad_cam(net, spec, x[None], which)[0]
            _save_rgb(overlay(gray, cam), folder / f"cam_{which}.png")
        u = mc_dropout(net, x[None], spec, mc_passes)
        score = u["mean"][0]
        label = spec.classes[int(spec.decide(score[None])[0])]
        results.append(
            {
                "path": str(path),
                "label": label,
                "scores": dict(zip(spec.classes, map(float, score), strict=True)),
                "std": float(u["std"][0]),
                "entropy": float(u["entropy"][0]),
                "outputs": str(folder),
            }
        )
    summary = {"run": str(run.root), "mc_passes": mc_passes, "images": results, "skipped": skipped}
    write_json(out / RunDir.uncertainty, summary)
    return summary


def _save_rgb(rgb: np.ndarray, path: Path) -> Path:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgb).save(path)
    return path


def _sample_batches(run: Run, n: int = 32, split: str = "val") -> tuple[list[Any], torch.Tensor]:
    """Up to `n` of the run's images of one split part, spread evenly over it, as listed (only these are
    decoded), preprocessed."""
    manifest, every = run.listed, run.records(split, listed=True)
    records = every[:: max(1, len(every) // n)][:n]
    x = torch.stack([run.spec.preprocess(read_image(manifest.abspath(r)).pixels) for r in records])
    return [(manifest, r) for r in records], x


def filters_report(run: Run | Path | str, n_images: int = 32) -> Filters:
    """First-layer kernels (PNG), per-layer weight statistics, and the dead-filter table over sample images."""
    run = Run.open(run)
    net = run.net
    out = run.dir.plots
    out.mkdir(exist_ok=True)
    conv = first_conv(net)
    kernels = conv.weight.detach().float().cpu()
    n = min(32, kernels.shape[0])
    fig = Figure(figsize=(8, 4.2))
    axes = fig.subplots(4, 8)
    for i, ax in enumerate(axes.flat):
        if i < n:
            k = kernels[i].permute(1, 2, 0).numpy()
            k = k[..., 0] if k.shape[-1] == 1 else k  # a one-channel network's kernels, in grey
            ax.imshow((k - k.min()) / max(float(k.max() - k.min()), 1e-8), cmap="gray")
        ax.axis("off")
    fig.suptitle(f"first-layer filters ({kernels.shape[0]} of {tuple(kernels.shape[1:])})", fontsize=9)
    _save(fig, out / "filters.png")
    _, x = _sample_batches(run, n_images)
    table = dead_filters(net, list(x.split(8)))
    what = {"activation": "channels never activate", "weights": "filters have near-zero weights"}
    notes = [
        f"{r.layer}: {r.dead} of {r.channels} {what[r.kind]} on {len(x)} images ({r.fraction:.0%}); candidates "
        "for pruning"
        for r in table
        if r.fraction >= MANY_DEAD
    ]
    result = Filters(list(kernels.shape), weight_stats(net), table, notes)
    write_json(run.dir.filters, result.to_json())
    return result


def explain_run(
    run: Run | Path | str,
    mc_passes: int = 30,
    gallery: int = 4,
    cam_layer: str | None = None,
    cam_method: str = DEFAULT_CAM_METHOD,
) -> Explanation:
    """The report's Explanations: CAM gallery (correct and wrong test predictions), localisation on images
    with lesion masks, CAM energy inside each film's own lungs per class, MC-dropout referral curve; plus filters.
    A Run the caller holds gives its loaded network and current calibration; `cam_layer`: another module of
    the backbone than the registry's CAM layer, `cam_method` another of explain.gradcam.CAM_METHODS."""
    run = Run.open(run)
    net, spec = run.net, run.spec
    pairs, x = _sample_batches(run, n=EXPLAINED_FILMS, split="test")
    u = mc_dropout(net, x, spec, mc_passes)
    targets = np.array([spec.classes.index(_class_of(spec, r.label)) for _, r in pairs])
    preds = spec.decide(u["mean"])
    correct = preds == targets
    cams = np.concatenate([grad_cam(net, spec, chunk, "predicted", cam_layer, cam_method) for chunk in x.split(16)])
    inside, area, lungs_from = _cam_in_lungs(pairs, cams, spec)
    groups = np.array([r.group for _, r in pairs])
    result = Explanation(
        mc_passes, float(1 - inside.mean()) if len(inside) else float("nan"), referral_curve(correct, u["std"]),
        uncertainty_wrong_vs_right=[
            float(u["std"][~correct].mean()) if (~correct).any() else None,
            float(u["std"][correct].mean()) if correct.any() else None,
        ],
        filters=filters_report(run),
        localisation=_localisation(net, spec, pairs, x, targets, preds, cam_layer, cam_method),
        cam_in_lungs={c: _mean_with_ci(inside[preds == k], groups[preds == k]) for k, c in enumerate(spec.classes)
                      if (preds == k).any()},
        lungs_from=lungs_from,
        lung_area=area,
        cam=cam_name(spec, cam_layer, cam_method),
        sample=[len(pairs), len(run.records("test", listed=True))],
    )  # fmt: skip
    _cam_gallery(pairs, cams, correct, preds, spec, run.dir.plots / "cam_gallery.png", gallery)
    write_json(run.dir.explain, result.to_json())  # last: its presence means the explanations are complete
    run.explanation = result
    return result


def _cam_in_lungs(pairs: list[Any], cams: np.ndarray, spec: ModelSpec) -> tuple[np.ndarray, float, dict[str, int]]:
    """Share of each CAM's energy inside its own film's lungs as the network saw them (lungs.as_seen), the mean
    share of the input those lungs cover, and where the lungs came from."""
    shares, areas, sources = [], [], Counter[str]()
    for (manifest, record), cam in zip(pairs, cams, strict=True):
        lungs, source = record_lungs(
            spec.preprocess, manifest.root, record, read_image(manifest.abspath(record)).pixels
        )
        shares.append(energy_inside(cam, lungs))
        areas.append(float(lungs.mean()))
        sources[source] += 1
    return np.array(shares), float(np.mean(areas)) if areas else float("nan"), dict(sources)


def _mean_with_ci(values: np.ndarray, groups: np.ndarray, n_resamples: int = 1000) -> list[float]:
    """[mean, CI low, CI high, n] with a patient-bootstrap CI."""
    lo, hi = patient_bootstrap(lambda i: {"m": float(values[i].mean())}, groups, n_resamples)["m"]
    return [float(values.mean()), lo, hi, float(len(values))]


def _class_of(spec: ModelSpec, label: str) -> str:
    if spec.task == "binary":
        return spec.classes[int(label == spec.positive)]
    return label


def _localisation(net: CovidxrNet, spec: ModelSpec, pairs: list[Any], x: torch.Tensor, targets: np.ndarray,
                  preds: np.ndarray, layer: str | None, method: str) -> Localisation | None:  # fmt: skip
    """Pointing game and energy inside the lesion mask for true positives that carry a mask (phantoms)."""
    from PIL import Image

    hits, energy, chance, area = [], [], [], []
    for i, (manifest, record) in enumerate(pairs):
        mask_rel = record.meta.get("mask_path")
        if not mask_rel or targets[i] != 1 or preds[i] != 1:
            continue
        mask = np.asarray(Image.open(manifest.root / mask_rel)) > 0
        cam = grad_cam(net, spec, x[i : i + 1], "positive", layer, method)[0]
        hits.append(pointing_hit(cam, mask))
        energy.append(energy_inside(cam, mask))
        chance.append(chance_rate(mask))
        area.append(float(mask.mean()))
    if not hits:
        return None
    return Localisation(len(hits), float(np.mean(hits)), float(np.mean(energy)), float(np.mean(chance)),
                        float(np.mean(area)))  # fmt: skip


def _cam_gallery(pairs: list[Any], cams: np.ndarray, correct: np.ndarray, preds: np.ndarray, spec: ModelSpec,
                 path: Path, n: int) -> Path:  # fmt: skip
    chosen = list(np.flatnonzero(correct)[:n]) + list(np.flatnonzero(~correct)[:n])
    fig = Figure(figsize=(2.3 * max(len(chosen), 1), 2.8))
    axes = np.atleast_1d(fig.subplots(1, max(len(chosen), 1)))
    for ax, i in zip(axes, chosen, strict=False):
        manifest, record = pairs[i]
        gray = read_image(manifest.abspath(record)).pixels
        ax.imshow(overlay(gray, cams[i]))
        ax.set_title(
            f"{'right' if correct[i] else 'WRONG'}: {spec.classes[preds[i]]}\n(true {record.label})", fontsize=7
        )
        ax.axis("off")
    for ax in axes[len(chosen) :]:
        ax.axis("off")
    return _save(fig, path)
