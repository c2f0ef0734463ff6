"""One self-contained report.html per run: every image embedded, opens offline in any browser.

The report is a list of sections, each built by a small function from files in the run directory; a section
whose inputs do not exist yet is left out, so later stages (search, explain) add theirs by adding a function.
"""

from __future__ import annotations

import base64
import csv
import json
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from jinja2 import Environment, PackageLoader, select_autoescape
from markupsafe import Markup, escape

from covidxr import __version__
from covidxr.data.validate import short_source
from covidxr.evaluation.audit import METADATA_WARN_AUC, OCCLUSION_WARN_AUC
from covidxr.evaluation.by_source import read_by_source
from covidxr.explain.localisation import TOLERANCE
from covidxr.report.plots import PLOTS_DIR, run_plots
from covidxr.rundir import RunDir

REPORT_FILE = RunDir.report


@dataclass
class Section:
    title: str
    html: str
    anchor: str


def img(path: Path, alt: str) -> str:
    if not path.is_file():
        return ""
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<img src="data:image/png;base64,{data}" alt="{escape(alt)}">'


def table(header: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{escape(_fmt(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _fmt(value: Any) -> str:
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def _json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.is_file() else {}


def configuration(run: Path) -> Section | None:
    if not (run / RunDir.config).is_file():
        return None
    spec = _json(run / RunDir.spec)
    facts = [
        [k, spec[k]]
        for k in ("backbone", "weights", "task", "classes", "input_size", "freeze", "threshold", "temperature")
        if k in spec
    ]
    text = (run / RunDir.config).read_text()
    train = (yaml.safe_load(text) or {}).get("train") or {}
    if "recipe" in train:
        recipe = f"{train['recipe']} (lr {train.get('lr')}, up to {train.get('epochs')} epochs, "
        recipe += f"patience {train.get('patience')}, schedule {train.get('lr_schedule')})"
        facts.append(["training recipe", recipe])
    config = f"<details><summary>resolved config.yaml</summary><pre>{escape(text)}</pre></details>"
    return Section("Configuration", table(["model", "value"], facts) + config, "config")


def data_section(run: Path) -> Section | None:
    report = _json(run / RunDir.data_report)
    if not report:
        return None
    raw = report.get("raw_labels", {})
    rows = [
        [label, c["images"], c["patients"], ", ".join(raw.get(label, []))] for label, c in report["per_label"].items()
    ]
    html = f"<p>{escape(report['source'])} ({escape(report['layout'])} layout): {report['usable']} usable of "
    html += f"{report['listed']} listed, {len(report['skipped'])} skipped, {report['patients']} patients.</p>"
    html += table(["label", "images", "patients", "as named in the data"], rows)
    by_source = report.get("label_by_source", {})
    if len(by_source) > 1:
        labels = list(report["per_label"])
        source_rows = [[short_source(s), *(c.get(label, 0) for label in labels)] for s, c in by_source.items()]
        html += "<p>Images per source and label:</p>" + table(["source", *labels], source_rows)
    if report["skipped"]:
        html += table(["skipped file", "problem"], [[s["path"], s["problem"]] for s in report["skipped"]])
    html += "".join(f'<p class="note">Data warning: {escape(w)}</p>' for w in report["warnings"])
    if (run / RunDir.splits).is_file():
        with (run / RunDir.splits).open() as fh:
            counts = Counter((r["split"], r["label"]) for r in csv.DictReader(fh))
        labels = sorted({label for _, label in counts})
        split_rows = [[s, *(counts[(s, label)] for label in labels)] for s in ("train", "val", "test")]
        how = "the data set's own test list" if report.get("split") == "official" else "patient-level"
        html += f"<p>Split: {how} (no patient in two splits):</p>" + table(["split", *labels], split_rows)
    return Section("Data", html, "data")


def training_section(run: Path) -> Section | None:
    plots = run / PLOTS_DIR
    if not (plots / "loss.png").is_file():
        return None
    state = RunDir(run).read_state()
    text = (
        f"<p>Best epoch (lowest validation loss): {state.best_epoch}; epochs run: {state.epochs_run}.</p>"
        if state is not None and state.finished
        else "<p>Training has not finished: the curves show the epochs run so far.</p>"
    )
    return Section(
        "Training curves",
        text
        + '<div class="row">'
        + img(plots / "loss.png", "loss")
        + img(plots / "accuracy.png", "accuracy")
        + "</div>",
        "training",
    )


def metrics_section(run: Path) -> Section | None:
    metrics = _json(run / RunDir.metrics)
    if not metrics:
        return None
    test = metrics["test"]
    rows = [[name, value, *test["ci95"].get(name, ["", ""])] for name, value in test["metrics"].items()]
    html = f"<p>Test split: {test['n_images']} images, {test['n_patients']} patients. "
    html += "95% CIs by bootstrap over patients.</p>"
    html += table(["metric", "test", "CI low", "CI high"], rows)
    if "threshold" in metrics:
        t = metrics["threshold"]
        s95 = metrics["sensitivity_at_95_specificity"]
        html += (
            f"<p>Decision threshold {t['value']:.3f} ({t['method']}, chosen on the validation split only). "
            f"At the validation threshold for 95% specificity ({s95['threshold']:.3f}), test sensitivity is "
            f"{s95['test_sensitivity']:.3f} and test specificity {s95['test_specificity']:.3f}.</p>"
        )
    if "calibration" in metrics:
        c = metrics["calibration"]
        html += (
            f"<p>Calibration: temperature scaling fitted on the validation split (T = {c['temperature']:.2f}); "
            f"expected calibration error on test {c['test_before']['ece']:.3f} before, "
            f"{c['test_after']['ece']:.3f} after.</p>"
        )
    if "per_class" in test:
        classes = list(test["per_class"])
        names = list(test["per_class"][classes[0]])
        html += table(["class", *names], [[c, *(test["per_class"][c][m] for m in names)] for c in classes])
    plots = run / PLOTS_DIR
    html += (
        '<div class="row">'
        + "".join(img(plots / f"{p}.png", p) for p in ("roc", "pr", "confusion", "reliability"))
        + "</div>"
    )
    return Section("Test metrics", html, "metrics")


def probe_section(run: Path) -> Section | None:
    """The linear-probe baseline beside the model, chosen and compared on validation only."""
    probe = _json(run / RunDir.linear_probe)
    if not probe:
        return None
    spec = _json(run / RunDir.spec)
    html = (
        "<p>A linear baseline on the same frozen features: standardised, L2 logistic regression, its C "
        f"({probe['C']:g}) chosen by validation log-loss.</p>"
    )
    rows = [["linear probe", probe["val_nll"], probe["val_auc"], probe["test_auc"], probe["test_acc"]]]
    if probe.get("model_val_nll") is not None:
        rows.insert(
            0, [f"model ({spec.get('head', 'mlp')} head)", probe["model_val_nll"], probe["model_val_auc"], "", ""]
        )
    html += table(["", "val NLL", "val AUC", "test AUC", "test accuracy"], rows)
    if probe.get("beats_model_on_val"):
        html += (
            '<p class="note">The linear probe beats the trained head on validation (lower log-loss): the head '
            "learned nothing a linear model could not. <code>--head linear</code> makes the probe the model.</p>"
        )
    elif spec.get("head") == "linear":
        html += "<p>This run's model is the linear probe (<code>--head linear</code>).</p>"
    return Section("Linear-probe baseline", html, "probe")


def audit_section(run: Path) -> Section | None:
    audit = _json(run / RunDir.metrics).get("audit")
    if not audit:
        return None
    meta, occ = audit["metadata_baseline"], audit["lung_occlusion"]
    html = (
        "<p>Published COVID-19 X-ray models often learn hospital, age or text-marker shortcuts (DeGrave et al., "
        "<i>Nat. Mach. Intell.</i> 2021). Two checks:</p>"
        f"<p><b>Metadata-only baseline</b>: a random forest on image size, aspect, format, bit depth, global intensity "
        f"and border strips, trained on train, reaches test AUC <b>{meta['auc']:.3f}</b> (95% CI {meta['ci'][0]:.2f}-"
        f"{meta['ci'][1]:.2f}); it warns at {METADATA_WARN_AUC}. Most used facts: "
        + ", ".join(f"{escape(n)} ({v:.2f})" for n, v in meta["top_features"])
        + ".</p>"
        + (
            f"<p><b>The same on the network's input</b> (after this run's preprocessing, where size and format "
            "are gone): intensity and border facts alone reach test AUC "
            f"<b>{audit['input_baseline']['auc']:.3f}</b>.</p>"
            if "input_baseline" in audit
            else ""
        )
        + f"<p><b>Lung occlusion</b>: test AUC {occ['auc_full']:.3f} with the image as is, "
        f"<b>{occ['auc_occluded']:.3f}</b> "
        f"with an ellipse over both lung fields replaced by the image mean (95% CI {occ['auc_occluded_ci'][0]:.2f}-"
        f"{occ['auc_occluded_ci'][1]:.2f}); it warns at {OCCLUSION_WARN_AUC}.</p>"
    )
    explain = _json(run / RunDir.explain)
    if explain:
        html += (
            f"<p><b>Grad-CAM outside the lungs</b>: {explain['cam_energy_outside_lungs']:.0%} of the CAM energy on "
            "test images lies outside the lung ellipse (an evenly spread map would put about 55% there).</p>"
        )
    by_source = audit.get("label_by_source", {})
    if by_source:
        labels = sorted({label for counts in by_source.values() for label in counts})
        html += "<p><b>Label x source</b>: where each label's images came from (all splits).</p>"
        html += table(
            ["source", *labels], [[short_source(s), *(c.get(lab, 0) for lab in labels)] for s, c in by_source.items()]
        )
    per_source = _json(run / RunDir.metrics).get("test_by_source", {})
    if len(per_source) > 1:
        rows = [
            [short_source(s), v["n_images"], ", ".join(f"{lab} {r:.0%}" for lab, r in v["rate_called"].items()),
             v["auc"] if v["auc"] is not None else "one class only"]
            for s, v in per_source.items()
        ]  # fmt: skip
        called = next(iter(per_source.values()))["called"]
        html += (
            f"<p><b>Test split per source</b>: share called {escape(called)} per label, and AUC within the source.</p>"
        )
        html += table(["source", "images", f"called {called}", "AUC within source"], rows)
    folds = read_by_source(run)
    if folds:
        rates = [f.skipped or ", ".join(f"{lab} {r:.0%}" for lab, r in f.rate_called.items()) for f in folds]
        rows = [
            [short_source(f.source), f.n_images, rate, f.auc if f.auc is not None else "-"]
            for f, rate in zip(folds, rates, strict=True)
        ]
        html += (
            "<p><b>Leave one source out</b> (<code>covidxr evaluate RUN --by-source</code>): each source scored by the "
            "same recipe trained on the other sources only, the closest this data can come to a new hospital.</p>"
        )
        html += table(["held-out source", "images", f"called {folds[0].called or 'positive'}", "AUC"], rows)
    html += "".join(f'<div class="warning">{escape(w)}</div>' for w in audit["warnings"])
    html += img(run / PLOTS_DIR / "occlusion.png", "occlusion example")
    return Section("Shortcut audit", html, "audit")


def explanations_section(run: Path) -> Section | None:
    data = _json(run / RunDir.explain)
    if not data:
        return None
    plots = run / PLOTS_DIR
    html = "<p>Grad-CAM of the predicted class on test images (first correct, then wrong predictions):</p>"
    html += img(plots / "cam_gallery.png", "CAM gallery")
    html += (
        f"<p>Share of CAM energy outside the lung ellipse (test, mean): <b>{data['cam_energy_outside_lungs']:.2f}</b>. "
        "A model that reads the lungs puts most of its evidence inside them.</p>"
    )
    loc = data.get("localisation")
    if loc:
        html += (
            f"<p>Localisation on {loc['true_positives']} true positives with lesion masks: pointing-game hit rate "
            f"<b>{loc['pointing_game']:.2f}</b> (within {TOLERANCE * 224:.0f} px at 224; a random point: "
            f"{loc['chance']:.3f}); CAM energy inside "
            f"the lesion {loc['energy_inside_mask']:.3f} (lesion area {loc.get('mask_area', 0):.3f}).</p>"
        )
    wrong, right = data["uncertainty_wrong_vs_right"]
    if wrong is not None and right is not None:
        html += f"<p>MC dropout ({data['mc_passes']} passes): mean std of the score {wrong:.3f} on wrong vs "
        html += f"{right:.3f} on right predictions.</p>"
    html += img(plots / "referral.png", "referral curve")
    filters = data["filters"]
    html += "<p>Learned first-layer filters:</p>" + img(plots / "filters.png", "filters")
    dead = [r for r in filters["dead"] if r["dead"]]
    if dead:
        rows = [[r["layer"], r["kind"], r["channels"], r["dead"], f"{r['fraction']:.0%}"] for r in dead]
        html += "<p>Dead filters (no activation on any sample image, or near-zero weights):</p>"
        html += table(["layer", "kind", "channels", "dead", "share"], rows)
    html += "".join(f'<p class="note">{escape(n)}</p>' for n in filters["notes"])
    return Section("Explanations", html, "explanations")


def mistakes_section(run: Path) -> Section | None:
    path = run / PLOTS_DIR / "mistakes.png"
    return Section("Most confident mistakes (test)", img(path, "mistakes"), "mistakes") if path.is_file() else None


def augmentation_section(run: Path) -> Section | None:
    plots = run / PLOTS_DIR
    if not (plots / "augment.png").is_file():
        return None
    html = "<p>Training augmentation: originals and augmented versions; then the same images in HSV, "
    html += "as the study showed them.</p>"
    return Section(
        "Augmentation and sample images in HSV",
        html + img(plots / "augment.png", "augmentation") + img(plots / "augment_hsv.png", "HSV"),
        "augmentation",
    )


def external_section(run: Path) -> Section | None:
    folder = RunDir(run).external
    results = sorted(folder.glob(f"*/{RunDir.metrics}")) if folder.is_dir() else []
    if not results:
        return None
    html = ""
    for path in results:
        r = _json(path)
        internal, external = r["internal"]["metrics"], r["external"]["metrics"]
        rows = [
            [
                m,
                internal[m],
                *((external[m], external[m] - internal[m]) if external[m] == external[m] else ("not defined", "")),
            ]
            for m in internal
            if m in external
        ]
        html += f"<p>{escape(r['external']['data'])}: {r['external']['n_images']} images.</p>"
        html += table(["metric", "internal test", "external", "gap"], rows)
        per_label = r.get("per_label", {})
        if per_label:
            called = next(iter(per_label.values()))["called"]
            html += table(
                ["external label", "images", f"called {called}", "95% CI", "median score"],
                [
                    [label, v["n_images"], f"{v['rate_called']:.1%}",
                     f"{v['rate_called_ci95'][0]:.0%}-{v['rate_called_ci95'][1]:.0%}", v["score_quantiles"]["0.5"]]
                    for label, v in per_label.items()
                ],
            )  # fmt: skip
        for label, n in r.get("dropped_labels", {}).items():
            html += f'<p class="note">{n} image(s) labelled {escape(label)} dropped: not a class of this run.</p>'
    return Section("External validation", html, "external")


def comparison_section(run: Path) -> Section | None:
    """Written by a search into its winner's run: every trial's settings and validation metrics."""
    path = RunDir(run).leaderboard
    if not path.is_file():
        return None
    with path.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    columns = [c for c in ("backbone", "weights", "lr", "batch_size", "optimizer", "dropout", "freeze", "augment")
               if len({r.get(c) for r in rows}) > 1 or c == "backbone"]  # fmt: skip
    metrics = ["val_f1", "val_auc", "val_precision", "val_recall", "epochs_run", "train_seconds"]
    body = [[i, *(r.get(c, "") for c in columns), *(_num(r.get(m)) for m in metrics)] for i, r in enumerate(rows, 1)]
    best: dict[str, dict[str, str]] = {}
    for r in rows:
        best.setdefault(r.get("backbone", ""), r)
    html = f"<p>{len(rows)} configurations, sorted by validation F1 (ties: validation AUC, then loss). "
    html += "The winner (row 1) is this run; its test metrics above are the search's only look at the test split.</p>"
    html += table(["#", *columns, *metrics], body)
    html += "<p>Best per backbone:</p>" + table(
        ["backbone", "val_f1", "val_auc"], [[b, _num(r.get("val_f1")), _num(r.get("val_auc"))] for b, r in best.items()]
    )
    plots = run / PLOTS_DIR
    html += (
        '<div class="row">' + img(plots / "search_lr.png", "F1 vs lr") + img(plots / "search_batch.png", "F1 vs batch")
    )
    return Section("Comparison across configurations", html + "</div>", "comparison")


def _num(value: str | None) -> Any:
    try:
        return float(value) if value not in (None, "") else ""
    except ValueError:
        return value


def credits_section(run: Path) -> Section | None:
    report = _json(run / RunDir.data_report)
    sources = _sources(run)
    if not sources:
        return None
    rows = [[s, lic or "see the data set"] for s, lic in sources]
    return Section(
        "Data credits",
        table(["source", "license"], rows) + f'<p class="note">Data: {escape(report.get("source", ""))}</p>',
        "credits",
    )


def _sources(run: Path) -> list[tuple[str, str]]:
    from covidxr.config import Config
    from covidxr.data.prepare import list_data

    try:
        manifest = list_data(Config.from_yaml(run / RunDir.config).data)
    except Exception:  # the data may have moved since training; credits then come from elsewhere
        return []
    return sorted({(r.source, r.meta.get("license", "")) for r in manifest.records if r.source})


SECTIONS: list[Callable[[Path], Section | None]] = [
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
    comparison_section,
    credits_section,
]


def write_report(run_dir: Path | str) -> Path:
    """Draw the run's figures from its files, then write the self-contained report.html."""
    run = Path(run_dir)
    run_plots(run)
    metrics = _json(run / RunDir.metrics)
    audit = metrics.get("audit") or {}
    sections = [s for s in (build(run) for build in SECTIONS) if s is not None]
    env = Environment(loader=PackageLoader("covidxr.report", "templates"), autoescape=select_autoescape())
    html = env.get_template("report.html.j2").render(
        run_name=run.name,
        generated=time.strftime("%Y-%m-%d %H:%M"),
        version=__version__,
        warnings=[Markup.escape(w) for w in audit.get("warnings", [])],
        audited=bool(audit),
        sections=sections,
    )
    out = run / REPORT_FILE
    tmp = out.with_suffix(".tmp")
    tmp.write_text(html)
    tmp.replace(out)
    return out
