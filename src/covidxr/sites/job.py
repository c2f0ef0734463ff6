"""`adapt_run`: a finished run and a site's films -> a new run directory adapted to that site.

The adapted run is a run like any other (evaluate, explain, predict, serve, export, ensembles open it): the base
run's files, its network with the adapted head, the site's calibration (fitted on the site's held-out films,
kept by evaluation), and adapted.json saying where it came from. The base run is never changed.
"""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np

from covidxr.atomic import write_json
from covidxr.errors import CovidxrError
from covidxr.models.factory import save_weights
from covidxr.run import Run
from covidxr.rundir import RunDir
from covidxr.site_results import Adaptation
from covidxr.sites.adapt import Site, base_rows, recentred
from covidxr.sites.curve import adapt_on, score_site, split_held_out

COPIED = (RunDir.config, RunDir.data_report, RunDir.splits, RunDir.history, RunDir.state, RunDir.lungs)
MODES = ("head", "recentre")


def adapt_run(
    run: Run, site: Site, out: Path, mode: str = "head", base_ratio: float = 1.0, seed: int = 0
) -> Adaptation:
    """Adapt `run` to `site` into `out`: `head` retrains the head on the site's labelled films (a held-out part
    of its patients stops training and fits temperature and threshold); `recentre` moves the site's features to
    the base training features' statistics (no labels used; threshold unchanged)."""
    if mode not in MODES:
        raise CovidxrError(f"unknown --mode {mode!r}; choose one of {', '.join(MODES)}")
    out = Path(out)
    if out.resolve() == run.root.resolve() or (out / RunDir.spec).exists():
        raise CovidxrError(f"{out}: already holds a run; adapt writes a new run directory (choose another --out)")
    everything = np.arange(len(site.y))
    if mode == "head":
        if len(np.unique(site.y)) < 2:
            only = run.spec.classes[int(site.y[0])]
            raise CovidxrError(f"{site.name}: --mode head needs labelled films of both classes; every film is "
                               f"{only!r} (--mode recentre takes unlabelled films)")  # fmt: skip
        _, held = split_held_out(site.y, site.groups, np.random.default_rng(seed))
        head, calibration = adapt_on(run, site, everything, seed, base_ratio)
        before = score_site(run, run.net.head, None, site, held, seed=seed)[0] if len(held) else None
        after = score_site(run, head, calibration, site, held, seed=seed)[0] if len(held) else None
        note = "before/after are on the held-out site films that also chose the threshold: optimistic; the curve is not"
    else:
        xb, _ = base_rows(run, 10_000, seed)
        head, calibration = recentred(run.net.head, xb, site.x), run.spec.calibration
        held, note = everything, "no labels used: the threshold is the base run's, and cannot move without labels"
        both = len(np.unique(site.y)) > 1
        before = score_site(run, run.net.head, None, site, everything, seed=seed)[0] if both else None
        after = score_site(run, head, calibration, site, everything, seed=seed)[0] if both else None
    labelled = mode == "head"
    record = Adaptation(str(run.root), site.name, site.fingerprint, mode, len(site.y), len(set(site.groups)),
                        base_ratio if labelled else 0.0, len(held) if labelled else 0, before, after, note)  # fmt: skip
    _write(run, out, head, calibration, record)
    return record


def _write(run: Run, out: Path, head: object, calibration: object, record: Adaptation) -> None:
    """The base run's files, the network with the adapted head, its calibration, provenance in model.json."""
    out.mkdir(parents=True, exist_ok=True)
    for name in COPIED:
        source = run.root / name
        if source.is_dir():
            shutil.copytree(source, out / name, dirs_exist_ok=True)
        elif source.is_file():
            shutil.copy2(source, out / name)
    net = run.net
    original = net.head
    net.head = head  # type: ignore[assignment]
    try:
        save_weights(net.cpu(), out)
    finally:
        net.head = original
    provenance = {"base_run": record.base_run, "site": record.site, "site_fingerprint": record.site_fingerprint,
                  "mode": record.mode}  # fmt: skip
    spec = replace(run.spec, extra=run.spec.extra | {"adapted": provenance})
    spec.write(out)
    RunDir(out).write_calibration(calibration)  # type: ignore[arg-type]
    write_json(RunDir(out).adapted, record.to_json())
