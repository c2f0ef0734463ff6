"""How many of its own films a hospital must label: the learning curve of adaptation on one site.

For each k (0, 10, 20, 50, 100, ...), several draws of k labelled films (whole patients, stratified by label) are
adapted on, and the rest of the site — patients never labelled — is scored: within-site AUC (CI over draws and
patients pooled), sensitivity and specificity at the threshold fitted on the labelled films' held-out part (at
k = 0, the base run's own). The curve says at which k it reaches the AUC asked for, or that it does not within
the site's films.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from covidxr.evaluation.bootstrap import patient_bootstrap
from covidxr.evaluation.metrics import roc_auc
from covidxr.progress import progress
from covidxr.results import RunCalibration
from covidxr.run import Run
from covidxr.site_results import CurvePoint, SiteCurve, SiteScore
from covidxr.sites.adapt import Site, base_rows, fit_head, head_logits, site_calibration

DEFAULT_KS = (0, 10, 20, 50, 100)
HELD_OUT = 0.3  # of the labelled patients: early stopping, temperature and threshold


def draw_patients(y: np.ndarray, groups: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """Indices of about k films of whole patients, each label in its share of the site (at least one patient of
    each where k > 0)."""
    if k <= 0:
        return np.zeros(0, dtype=int)
    patients = defaultdict(list)
    for i, g in enumerate(groups):
        patients[g].append(i)
    by_label = defaultdict(list)
    for g, rows in patients.items():
        by_label[int(np.bincount(y[rows]).argmax())].append(g)
    chosen: list[int] = []
    for label, members in sorted(by_label.items()):
        want = max(1, round(k * float(np.mean(y == label))))
        taken = 0
        for g in rng.permutation(np.array(members, dtype=object)):
            if taken >= want:
                break
            chosen += patients[g]
            taken += len(patients[g])
    return np.array(sorted(chosen), dtype=int)


def split_held_out(y: np.ndarray, groups: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Labelled films -> (train, held out), by patient, about HELD_OUT of each label's patients held out; where a
    label has one patient only, it trains (and the held-out part lacks it)."""
    held: list[int] = []
    for label in np.unique(y):
        members = np.unique(groups[y == label])
        n = round(len(members) * HELD_OUT) if len(members) > 1 else 0
        picked = set(rng.permutation(members)[: max(n, 1 if len(members) > 1 else 0)])
        held += [int(i) for i in np.flatnonzero(y == label) if groups[i] in picked]
    out = np.array(sorted(set(held)), dtype=int)
    return np.setdiff1d(np.arange(len(y)), out), out


def adapt_on(
    run: Run, site: Site, idx: np.ndarray, seed: int, base_ratio: float
) -> tuple[torch.nn.Module, RunCalibration]:
    """The head adapted on the site films `idx` (with base films mixed in) and its site calibration."""
    rng = np.random.default_rng(seed)
    train, held = split_held_out(site.y[idx], site.groups[idx], rng)
    train, held = idx[train], idx[held]
    xb, yb = base_rows(run, round(base_ratio * len(train)), seed)
    x = np.concatenate([site.x[train], xb]) if len(xb) else site.x[train]
    y = np.concatenate([site.y[train], yb]) if len(yb) else site.y[train]
    fitting = held if len(np.unique(site.y[held])) > 1 else idx  # a held-out part of one class cannot rank
    head = fit_head(run, (x, y), (site.x[fitting], site.y[fitting]), seed, float(run.config.train.lr or 1e-3))
    calibration = site_calibration(run, head_logits(head, site.x[fitting]), site.y[fitting])
    return head, calibration


def score_site(run: Run, head: torch.nn.Module, calibration: RunCalibration | None, site: Site, idx: np.ndarray,
               n_resamples: int = 200, seed: int = 0) -> tuple[SiteScore, list[float]]:  # fmt: skip
    """A head under a calibration on the site films `idx`: the score and its bootstrap AUCs."""
    spec = replace(run.spec, calibration=calibration) if calibration is not None else run.spec
    scores = spec.scores(torch.from_numpy(head_logits(head, site.x[idx]))).numpy()[:, 1]
    y, groups = site.y[idx], site.groups[idx]
    auc = roc_auc(y, scores)
    samples: list[float] = []

    def keep(i: np.ndarray) -> dict[str, float]:
        value = roc_auc(y[i], scores[i])
        samples.append(value)
        return {"auc": value}

    lo, hi = patient_bootstrap(keep, groups, n_resamples, seed)["auc"]
    called = scores >= spec.threshold
    sens = float(called[y == 1].mean()) if (y == 1).any() else float("nan")
    spec_ = float((~called[y == 0]).mean()) if (y == 0).any() else float("nan")
    score = SiteScore(len(idx), len(set(groups)), auc, [lo, hi], sens, spec_, spec.threshold)
    return score, [s for s in samples if not np.isnan(s)]


def learning_curve(run: Run, site: Site, ks: tuple[int, ...] = DEFAULT_KS, draws: int = 5, seed: int = 0,
                   base_ratio: float = 1.0, target_auc: float | None = None) -> SiteCurve:  # fmt: skip
    """Within-site AUC against the number of labelled site films, each k over `draws` draws."""
    n = len(site.y)
    usable = [k for k in ks if k < n * 0.8]  # leave a site to score
    points = []
    with progress(len(usable) * draws, "site curve", "draw") as bar:
        for k in usable:
            rows, pooled = [], []
            for d in range(draws):
                rng = np.random.default_rng(seed * 1000 + d)
                labelled = draw_patients(site.y, site.groups, k, rng)
                rest = np.setdiff1d(np.arange(n), labelled)
                head, calibration = run.net.head, None
                if k:
                    head, calibration = adapt_on(run, site, labelled, seed + d, base_ratio)
                score, samples = score_site(run, head, calibration, site, rest, seed=seed + d)
                rows.append(score)
                pooled += samples
                bar.update(1)
            points.append(_point(k, rows, pooled))
    reached = next((p.k for p in points if target_auc is not None and p.auc >= target_auc), None)
    return SiteCurve(str(run.root), site.name, n, len(set(site.groups)), points, target_auc, reached)


def _point(k: int, rows: list[SiteScore], pooled: list[float]) -> CurvePoint:
    lo, hi = np.percentile(pooled, [2.5, 97.5]).tolist() if pooled else [float("nan")] * 2

    def mean(values: list[float]) -> float:
        return float(np.nanmean(values))

    return CurvePoint(k, len(rows), mean([r.auc for r in rows]), [float(lo), float(hi)],
                      mean([r.sensitivity for r in rows]), mean([r.specificity for r in rows]),
                      mean([float(r.films) for r in rows]))  # fmt: skip


def curve_table(curve: SiteCurve) -> str:
    lines = [f"{'k labelled':>10}{'draws':>7}{'AUC':>8}{'95% CI':>17}{'sens':>7}{'spec':>7}{'scored':>8}"]
    for p in curve.points:
        lines.append(f"{p.k:>10}{p.draws:>7}{p.auc:>8.3f}   [{p.auc_ci95[0]:.2f}, {p.auc_ci95[1]:.2f}]"
                     f"{p.sensitivity:>7.2f}{p.specificity:>7.2f}{p.scored_films:>8.0f}")  # fmt: skip
    if curve.target_auc is not None:
        lines.append(f"AUC {curve.target_auc:.2f} reached at k = {curve.reached_at}" if curve.reached_at is not None
                     else f"AUC {curve.target_auc:.2f} not reached within the site's {curve.films} films")  # fmt: skip
    return "\n".join(lines)


def plot_curve(curve: SiteCurve, path: Path) -> Path:
    """Within-site AUC (CI band) against labelled films, with the target where one was asked for."""
    from matplotlib.figure import Figure

    ks = [p.k for p in curve.points]
    fig = Figure(figsize=(5.5, 3.6))
    ax = fig.subplots()
    ax.fill_between(ks, [p.auc_ci95[0] for p in curve.points], [p.auc_ci95[1] for p in curve.points], alpha=0.25)
    ax.plot(ks, [p.auc for p in curve.points], marker="o", label="within-site AUC (mean over draws)")
    if curve.target_auc is not None:
        ax.axhline(curve.target_auc, linestyle="--", color="grey", label=f"target {curve.target_auc:.2f}")
    ax.axhline(0.5, linestyle=":", color="lightgrey")
    ax.set(xlabel="labelled films of the site (whole patients)", ylabel="AUC on the rest of the site", ylim=(0.3, 1.0),
           title=f"{curve.site}: {curve.films} films, {curve.patients} patients")  # fmt: skip
    ax.legend(loc="lower right", fontsize=8)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    return path
