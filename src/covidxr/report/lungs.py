"""lungs_report.html: a lung model's own page — held-out Dice with its CI, the worst films as overlays, every
film's Dice, and the training curve — in the run report's frame, self-contained like it."""

from __future__ import annotations

import base64
import csv
import time
from pathlib import Path
from typing import Any

from jinja2 import Environment, PackageLoader, select_autoescape
from markupsafe import Markup

from covidxr import __version__
from covidxr.atomic import write_text
from covidxr.evaluation.segmentation import WORST_FILE
from covidxr.lungs.train import HISTORY
from covidxr.report.html import Section
from covidxr.results import SegmentationEvaluation

REPORT_FILE = "lungs_report.html"
LOW_DICE = 0.8  # below this a film's mask misses or adds a lobe's worth: the table marks it


def _embedded(path: Path, alt: str) -> Markup:
    if not path.is_file():
        return Markup("")
    data = base64.b64encode(path.read_bytes()).decode()
    return Markup('<img src="data:image/png;base64,{}" alt="{}">').format(data, alt)


def _history(folder: Path) -> list[dict[str, Any]]:
    path = folder / HISTORY
    if not path.is_file():
        return []
    with path.open(newline="") as fh:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(fh)]


def write_lungs_report(folder: Path, scored: SegmentationEvaluation) -> Path:
    """Write `folder`/lungs_report.html from an evaluation whose files (lungs_worst.png) are in `folder`."""
    history = _history(folder)
    best = max(history, key=lambda r: r["val_dice"]) if history else None
    films = sorted(scored.films, key=lambda f: f.dice)
    worst = _embedded(folder / WORST_FILE, "worst films: predicted outline red, shipped mask green")
    context = {"scored": scored, "films": films, "low": LOW_DICE, "worst": worst}
    sections = [Section("Dice on held-out films", "lungs_dice", context)]
    if history:
        sections.append(Section("Training", "lungs_training", {"history": history, "best": best}))
    env = Environment(loader=PackageLoader("covidxr.report", "templates"), autoescape=select_autoescape(["j2"]))
    env.filters["num"] = lambda v: f"{v:.3f}" if isinstance(v, float) else str(v)
    bodies = [Markup(env.get_template(f"sections/{s.anchor}.html.j2").render(**s.context)) for s in sections]
    warnings = []
    if scored.flagged:
        warnings.append(f"{scored.flagged} of {scored.n_images} predicted masks were implausible (flagged below): "
                        "those films fall back to the whole image wherever the model is used.")  # fmt: skip
    html = env.get_template("report.html.j2").render(
        run_name=f"lung model {folder.name}",
        generated=time.strftime("%Y-%m-%d %H:%M"),
        version=__version__,
        warnings=warnings,
        audited=False,
        sections=list(zip(sections, bodies, strict=True)),
    )
    return write_text(folder / REPORT_FILE, html)
