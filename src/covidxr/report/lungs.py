"""lungs_report.html: a lung model's own page — held-out Dice with its CI, the worst films as overlays, every
film's Dice, and the training curve — in the run report's frame, self-contained like it."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from covidxr.atomic import write_text
from covidxr.evaluation.segmentation import WORST_FILE
from covidxr.lungs.train import HISTORY
from covidxr.report.html import Section, embed_png, render_page
from covidxr.results import SegmentationEvaluation

REPORT_FILE = "lungs_report.html"
LOW_DICE = 0.8  # below this a film's mask misses or adds a lobe's worth: the table marks it


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
    worst = embed_png(folder / WORST_FILE, "worst films: predicted outline red, shipped mask green")
    context = {"scored": scored, "films": films, "low": LOW_DICE, "worst": worst}
    sections = [Section("Dice on held-out films", "lungs_dice", context)]
    if history:
        sections.append(Section("Training", "lungs_training", {"history": history, "best": best}))
    warnings = []
    if scored.flagged:
        warnings.append(f"{scored.flagged} of {scored.n_images} predicted masks were implausible (flagged below): "
                        "those films fall back to the whole image wherever the model is used.")  # fmt: skip
    return write_text(folder / REPORT_FILE, render_page(f"lung model {folder.name}", sections, warnings, False))
