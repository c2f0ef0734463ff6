"""The sites stage's typed result files (adapted.json, site_curve.json), read and written like every result."""

from __future__ import annotations

from dataclasses import dataclass

from covidxr.results import JsonRecord


@dataclass
class SiteScore(JsonRecord):
    """A model on a site's films it did not learn from: within-site AUC (patient-bootstrap CI), and sensitivity
    and specificity at its threshold."""

    films: int
    patients: int
    auc: float
    auc_ci95: list[float]
    sensitivity: float
    specificity: float
    threshold: float


@dataclass
class Adaptation(JsonRecord):
    """adapted.json: where an adapted run came from and what changed."""

    base_run: str
    site: str
    site_fingerprint: str  # the site's listing (paths, labels, patients), data.manifest.Manifest.fingerprint
    mode: str  # head (labelled films) | recentre (unlabelled: features moved to the site's statistics)
    films: int  # site films adapted on
    patients: int
    base_ratio: float  # base training films mixed in per site training film
    held_out: int  # site films that stopped training and fitted temperature and threshold (head mode)
    before: SiteScore | None = None  # the base run on the held-out site films
    after: SiteScore | None = None  # the adapted run on them (they chose its threshold: optimistic; see the curve)
    note: str | None = None


@dataclass
class CurvePoint(JsonRecord):
    """k labelled site films (whole patients): the rest of the site scored, over several draws."""

    k: int
    draws: int
    auc: float  # mean over draws
    auc_ci95: list[float]  # over draws and patients (each draw's patient bootstrap, pooled)
    sensitivity: float
    specificity: float
    scored_films: float  # mean films scored per draw


@dataclass
class SiteCurve(JsonRecord):
    """site_curve.json: within-site AUC against the number of the site's own labelled films."""

    base_run: str
    site: str
    films: int
    patients: int
    points: list[CurvePoint]
    target_auc: float | None = None
    reached_at: int | None = None  # the smallest k whose mean AUC reached the target; None: not within the site
