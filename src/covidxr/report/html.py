"""One self-contained report.html per run: every image embedded, opens offline in any browser.

The report is a list of sections. Each is built by a small function that reads the run's typed results and
hands them to its Jinja partial (templates/sections/); a section whose inputs do not exist yet is left out, so
later stages (search, explain) add theirs by adding a function and a partial.
"""

from __future__ import annotations

import base64
import csv
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from jinja2 import Environment, PackageLoader, select_autoescape
from markupsafe import Markup

from covidxr import __version__
from covidxr.atomic import write_text
from covidxr.data.validate import short_source
from covidxr.evaluation.audit import METADATA_WARN_AUC, OCCLUSION_WARN_AUC
from covidxr.evaluation.by_source import read_by_source
from covidxr.evaluation.fair import fair_summary
from covidxr.explain.localisation import TOLERANCE
from covidxr.report.inputs import RunFiles
from covidxr.report.plots import run_plots
from covidxr.results import SETTINGS, FairScore, LeaderboardRow
from covidxr.run import Run
from covidxr.training.linear_probe import ProbeResult


@dataclass
class Section:
    title: str
    anchor: str  # also the partial's name: templates/sections/<anchor>.html.j2
    context: dict[str, Any] = field(default_factory=dict)


def configuration(files: RunFiles) -> Section | None:
    run, spec = files.run, files.spec
    if files.config is None:
        return None
    facts: list[list[Any]] = []
    if spec is not None:
        facts = [[k, getattr(spec, k)] for k in ("backbone", "weights", "task", "classes", "input_size", "freeze")]
        facts += [["threshold", spec.threshold], ["temperature", spec.temperature]]
    t = files.config.train.resolved()
    recipe = f"{t.recipe} (lr {t.lr}, up to {t.epochs} epochs, patience {t.patience}, schedule {t.lr_schedule})"
    facts.append(["training recipe", recipe])
    return Section("Configuration", "config", {"facts": facts, "config_text": run.config.read_text()})


def data_section(files: RunFiles) -> Section | None:
    run, report = files.run, files.data_report
    if report is None:
        return None
    labels = list(report.per_label)
    by_source = report.label_by_source if len(report.label_by_source) > 1 else {}
    context: dict[str, Any] = {
        "report": report,
        "labels": labels,
        "label_rows": [
            [label, c["images"], c["patients"], ", ".join(report.raw_labels.get(label, []))]
            for label, c in report.per_label.items()
        ],
        "source_rows": [[short_source(s), *(c.get(label, 0) for label in labels)] for s, c in by_source.items()],
        "skipped_rows": [[s.path, s.problem] for s in report.skipped],
        "split_rows": [],
    }
    if run.splits.is_file():
        with run.splits.open() as fh:
            counts = Counter((r["split"], r["label"]) for r in csv.DictReader(fh))
        context["split_labels"] = sorted({label for _, label in counts})
        context["split_rows"] = [[s, *(counts[(s, lab)] for lab in context["split_labels"])]
                                 for s in ("train", "val", "test")]  # fmt: skip
    return Section("Data", "data", context)


def training_section(files: RunFiles) -> Section | None:
    if not files.run.history.is_file():
        return None
    return Section("Training curves", "training", {"state": files.state})


def metrics_section(files: RunFiles) -> Section | None:
    evaluation = files.evaluation
    if evaluation is None:
        return None
    test = evaluation.test
    context: dict[str, Any] = {
        "evaluation": evaluation,
        "metric_rows": [[name, value, *test.ci95.get(name, ["", ""])] for name, value in test.metrics.items()],
        "class_rows": [],
        "fair": _fair_context(evaluation.test_fair),
    }
    if test.per_class:
        context["class_columns"] = list(next(iter(test.per_class.values())))
        context["class_rows"] = [[c, *row.values()] for c, row in test.per_class.items()]
    return Section("Test metrics", "metrics", context)


def probe_section(files: RunFiles) -> Section | None:
    """The linear-probe baseline beside the model, chosen and compared on validation only."""
    probe = ProbeResult.read(files.run.root)
    if probe is None or files.spec is None:
        return None
    head = files.spec.head
    rows: list[list[Any]] = [["linear probe", probe.val_nll, probe.val_auc, probe.test_auc, probe.test_acc]]
    if probe.model_val_nll is not None:
        rows.insert(0, [f"model ({head} head)", probe.model_val_nll, probe.model_val_auc, "", ""])
    return Section("Linear-probe baseline", "probe", {"probe": probe, "rows": rows, "head": head})


def audit_section(files: RunFiles) -> Section | None:
    evaluation = files.evaluation
    audit = evaluation.audit if evaluation else None
    if evaluation is None or audit is None:
        return None
    labels = sorted({label for counts in audit.label_by_source.values() for label in counts})
    per_source = evaluation.test_by_source if len(evaluation.test_by_source) > 1 else {}
    folds = read_by_source(files.run.root) or []
    context: dict[str, Any] = {
        "audit": audit,
        "metadata_warn": METADATA_WARN_AUC,
        "occlusion_warn": OCCLUSION_WARN_AUC,
        "explanation": files.explanation,
        "occ_n": evaluation.test.n_images,
        "cam_rows": [[c, *v[:3], int(v[3])] for c, v in (files.explanation.cam_in_lungs or {}).items()]
        if files.explanation
        else [],
        "source_labels": labels,
        "label_rows": [[short_source(s), *(c.get(lab, 0) for lab in labels)] for s, c in audit.label_by_source.items()],
        "called": next(iter(per_source.values())).called if per_source else "",
        "per_source_rows": [
            [short_source(s), v.n_images, _rates(v.rate_called), v.auc if v.auc is not None else "one class only"]
            for s, v in per_source.items()
        ],
        "fold_called": (folds[0].called or "positive") if folds else "",
        "fold_rows": [
            [
                short_source(f.source),
                f.n_images,
                f.skipped or _rates(f.rate_called),
                f.auc if f.auc is not None else "-",
            ]
            for f in folds
        ],
    }
    return Section("Shortcut audit", "audit", context)


def _fair_context(fair: FairScore | None) -> dict[str, Any] | None:
    """The within-source headline and its per-source rows (evaluation.fair), for the metrics and external parts."""
    if fair is None:
        return None
    rows = [[short_source(s), a.n_positive, a.n_negative, a.auc, a.sensitivity, a.specificity]
            for s, a in fair.sources.items()]  # fmt: skip
    return {"summary": fair_summary(fair), "measured": fair.within_source_auc is not None, "rows": rows,
            "mixed": fair.cross_source_share > 0}  # fmt: skip


def _rates(rate_called: dict[str, float]) -> str:
    return ", ".join(f"{label} {rate:.0%}" for label, rate in rate_called.items())


def explanations_section(files: RunFiles) -> Section | None:
    explanation = files.explanation
    if explanation is None:
        return None
    dead = [[r.layer, r.kind, r.channels, r.dead, f"{r.fraction:.0%}"] for r in explanation.filters.dead if r.dead]
    context = {"explanation": explanation, "tolerance_px": f"{TOLERANCE * 224:.0f}", "dead_rows": dead}
    return Section("Explanations", "explanations", context)


def mistakes_section(files: RunFiles) -> Section | None:
    drawn = (files.run.plots / "mistakes.png").is_file()
    return Section("Most confident mistakes (test)", "mistakes") if drawn else None


def augmentation_section(files: RunFiles) -> Section | None:
    if not (files.run.plots / "augment.png").is_file():
        return None
    return Section("Augmentation and sample images in HSV", "augmentation")


def external_section(files: RunFiles) -> Section | None:
    results = files.run.external_results()
    if not results:
        return None
    tables = []
    for r in results:
        internal, external = r.internal.metrics, r.external.metrics
        metric_rows = [
            [m, internal[m], *((b, b - internal[m]) if (b := external[m]) == b else ("not defined", ""))]
            for m in internal
            if m in external
        ]
        label_rows = [
            [label, v.n_images, f"{v.rate_called:.1%}", f"{v.rate_called_ci95[0]:.0%}-{v.rate_called_ci95[1]:.0%}",
             v.score_quantiles["0.5"]]
            for label, v in r.per_label.items()
        ]  # fmt: skip
        called = next(iter(r.per_label.values())).called if r.per_label else ""
        tables.append({"result": r, "metric_rows": metric_rows, "label_rows": label_rows, "called": called,
                       "fair": _fair_context(r.fair)})  # fmt: skip
    return Section("External validation", "external", {"results": tables})


def site_section(files: RunFiles) -> Section | None:
    """An adapted run (covidxr adapt): the base run, the site, what changed, and the learning curve if drawn."""
    adapted = files.run.read_adaptation()
    if adapted is None:
        return None
    curve = files.run.read_site_curve()
    scores = [[when, s.films, s.auc, f"{s.auc_ci95[0]:.2f}-{s.auc_ci95[1]:.2f}", s.sensitivity, s.specificity]
              for when, s in (("before", adapted.before), ("after", adapted.after)) if s is not None]  # fmt: skip
    points = [[p.k, p.draws, p.auc, f"{p.auc_ci95[0]:.2f}-{p.auc_ci95[1]:.2f}", p.sensitivity, p.specificity]
              for p in (curve.points if curve else [])]  # fmt: skip
    context = {"adapted": adapted, "scores": scores, "curve": curve, "points": points}
    return Section("Adaptation to a site", "site", context)


def comparison_section(files: RunFiles) -> Section | None:
    """Written by a search into its winner's run: every trial's settings and validation metrics."""
    if not files.run.leaderboard.is_file():
        return None
    rows = LeaderboardRow.read_all(files.run.leaderboard)
    columns = [c for c in SETTINGS if c != "epochs" and (len({r.value(c) for r in rows}) > 1 or c == "backbone")]
    metrics = ["val_f1", "val_auc", "val_precision", "val_recall"]
    body = [
        [i, *(r.value(c) for c in columns), *(r.metrics.get(m, "") for m in metrics), r.epochs_run, r.train_seconds]
        for i, r in enumerate(rows, 1)
    ]
    best: dict[str, Any] = {}
    for r in rows:  # sorted best first
        best.setdefault(str(r.value("backbone")), r)
    context = {
        "n_rows": len(rows),
        "columns": columns,
        "metrics": [*metrics, "epochs_run", "train_seconds"],
        "rows": body,
        "best_rows": [[b, r.metrics.get("val_f1", ""), r.metrics.get("val_auc", "")] for b, r in best.items()],
    }
    return Section("Comparison across configurations", "comparison", context)


def credits_section(files: RunFiles) -> Section | None:
    try:
        records = files.manifest.records
    except Exception:  # the data may have moved since training; credits then come from elsewhere
        return None
    sources = sorted({(r.source, r.meta.get("license", "")) for r in records if r.source})
    if not sources:
        return None
    rows = [[s, lic or "see the data set"] for s, lic in sources]
    report = files.data_report
    return Section("Data credits", "credits", {"rows": rows, "data_source": report.source if report else ""})


SECTIONS: list[Callable[[RunFiles], Section | None]] = [
    configuration,
    data_section,
    training_section,
    metrics_section,
    probe_section,
    audit_section,
    explanations_section,
    mistakes_section,
    augmentation_section,
    external_section,
    site_section,
    comparison_section,
    credits_section,
]


def embed_png(path: Path, alt: str) -> Markup:
    """A PNG embedded as a data URI (the page stays one file); nothing where it was not drawn."""
    if not path.is_file():
        return Markup("")
    data = base64.b64encode(path.read_bytes()).decode()
    return Markup('<img src="data:image/png;base64,{}" alt="{}">').format(data, alt)


def _img(plots: Path, name: str) -> Markup:
    """A figure of the run, by name."""
    return embed_png(plots / f"{name}.png", name.replace("_", " "))


def _num(value: Any) -> str:
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def render_page(
    title: str, sections: list[Section], warnings: list[str], audited: bool, plots: Path | None = None
) -> str:
    """The page (templates/report.html.j2) around its sections' partials: warnings first, then each section."""
    env = Environment(loader=PackageLoader("covidxr.report", "templates"), autoescape=select_autoescape(["j2"]))
    if plots is not None:
        env.globals["plot"] = partial(_img, plots)
    env.filters["num"] = _num
    bodies = [Markup(env.get_template(f"sections/{s.anchor}.html.j2").render(**s.context)) for s in sections]
    return env.get_template("report.html.j2").render(
        run_name=title,
        generated=time.strftime("%Y-%m-%d %H:%M"),
        version=__version__,
        warnings=warnings,
        audited=audited,
        sections=list(zip(sections, bodies, strict=True)),
    )


def write_report(run: Run | Path | str) -> Path:
    """Draw the run's figures from its files, then write the self-contained report.html."""
    files = RunFiles(Run.open(run))
    folder = files.run
    plots = run_plots(files)
    sections = [s for s in (build(files) for build in SECTIONS) if s is not None]
    evaluation = files.evaluation
    warnings = evaluation.warnings if evaluation else []
    html = render_page(folder.root.name, sections, warnings, bool(evaluation and evaluation.audit), plots)
    return write_text(folder.report, html)
