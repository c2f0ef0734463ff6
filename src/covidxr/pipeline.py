"""The main job: inspect -> split -> train -> evaluate -> audit -> report, resumable at every step."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from covidxr.config import Config
from covidxr.data.prepare import PreparedData, prepare
from covidxr.device import use
from covidxr.evaluation.fair import fair_summary
from covidxr.evaluation.job import evaluate_run
from covidxr.report.html import write_report
from covidxr.results import Evaluation
from covidxr.run import Run
from covidxr.rundir import RunDir
from covidxr.training.distributed import is_main_process
from covidxr.training.job import LAST_CKPT, TrainResult, train


@dataclass
class RunResult:
    train: TrainResult
    metrics: Evaluation
    report: Path
    lost: dict[str, tuple[int, int]] = field(default_factory=dict)  # --data set -> (listed, used), where fewer

    def summary(self) -> str:
        m, ci = self.metrics.test.metrics, self.metrics.test.ci95
        fair = self.metrics.test_fair
        mixed = fair is not None and fair.cross_source_share > 0
        lines = [self.train.summary(), ""]
        for name, (listed, used) in self.lost.items():
            lines.insert(0, f"note: data set {name}: {listed - used} of its {listed} listed films skipped, {used} used")
        if fair is not None:  # first: what hospitals cannot fool (evaluation.fair)
            lines.append(f"test split within one source: {fair_summary(fair)}")
        lines.append("test split (95% CI by patient bootstrap):")
        for name in ("accuracy", "precision", "recall", "specificity", "f1", "roc_auc", "pr_auc"):
            if name in m:
                lo, hi = ci.get(name, [float("nan")] * 2)
                star = "*" if mixed and name in ("roc_auc", "pr_auc") else ""
                lines.append(f"  {name + star:<12}{m[name]:.3f}  [{lo:.3f}, {hi:.3f}]")
        if mixed:
            lines.append("  * pairs films of different sources: it measures the hospital as much as the finding")
        for warning in self.metrics.warnings:
            lines.append(f"WARNING: {warning}")
        lines.append(f"report: {self.report}")
        return "\n".join(lines)


def ensemble(runs: list[Path], out: Path | str, n_resamples: int = 1000) -> Evaluation:
    """Average several finished runs' calibrated scores into a run directory, then evaluate and report it.
    Members not yet evaluated are evaluated first (that fits their temperature on their validation split)."""
    from covidxr.models.ensemble import create_ensemble

    for member in runs:
        if RunDir(member).read_evaluation() is None:
            evaluate_run(member, n_resamples)
    run = Run(create_ensemble([Path(r) for r in runs], Path(out)))
    metrics = evaluate_run(run, n_resamples)
    write_report(run)
    return metrics


def run(
    cfg: Config, run_dir: Path | str, n_resamples: int = 1000, explain: bool = True,
    prepared: PreparedData | None = None,
) -> RunResult | None:  # fmt: skip
    """Train, evaluate on test, audit, explain, report; rerun on the same `run_dir` after an interruption, it
    continues where it stopped: training from its last checkpoint, and a finished stage (its result file is
    written last, whole) is not done again. A helper rank of a distributed run returns None after training:
    rank 0 evaluates, explains and reports. `prepared`: the data already inspected and split into `run_dir`
    (the demo shows them first), so they are decoded once."""
    from covidxr.explain.job import explain_run

    run_dir = Path(run_dir)
    resume = (run_dir / LAST_CKPT).exists()
    # The data are inspected (decoded, hashed) and the model loaded once for every stage of a fresh run.
    if prepared is None and cfg.data.paths and not resume:
        prepared = prepare(run_dir, cfg.data, write=is_main_process())
    trained = train(cfg, run_dir, resume=resume, prepared=prepared)
    if not is_main_process():
        return None
    # One Run for every stage after training: config, data listing, network and calibration read once.
    run = Run(run_dir, manifest=prepared.manifest if prepared else None)
    tc = run.config.train
    with use(tc.accelerator, tc.precision, tc.devices):  # every stage after training on the run's device
        metrics = run.evaluation or evaluate_run(run, n_resamples=n_resamples)
        if explain and run.explanation is None:
            explain_run(run)
    report = prepared.report if prepared else run.data_report
    lost = report.lost_films() if report is not None else {}
    return RunResult(trained, metrics, write_report(run), lost)
