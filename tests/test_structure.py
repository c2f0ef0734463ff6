"""The package's shape, checked: imports point one way along the pipeline (no cycles between stages), and run
files are named in the run module alone."""

from __future__ import annotations

import ast
from pathlib import Path

from covidxr.rundir import RunDir, _Entry

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "covidxr"
# Lowest first: a module may import from its own layer and the layers before it, never from a later one.
LAYERS = (
    "errors", "atomic", "cache", "fields", "progress", "weightfiles", "results", "site_results", "rundir", "extras",
    "threads", "device", "store", "data", "config", "augment", "engine", "lungs", "models", "training", "run",
    "evaluation", "explain", "report", "pipeline", "sites", "serve", "search", "cli",
)  # fmt: skip


def _layer(module: str) -> str:
    return module.split(".")[1]


def _runtime_imports(path: Path) -> list[str]:
    """covidxr modules imported by `path`, at any depth, except under `if TYPE_CHECKING:`."""
    tree = ast.parse(path.read_text())
    typing_only = {
        id(n)
        for block in ast.walk(tree)
        if isinstance(block, ast.If) and getattr(block.test, "id", "") == "TYPE_CHECKING"
        for n in ast.walk(block)
    }
    return [
        node.module
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("covidxr.")
        and id(node) not in typing_only
    ]  # fmt: skip


def test_every_module_belongs_to_a_layer_and_imports_point_down_the_pipeline() -> None:
    upward = []
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        if parts[0] in ("__init__", "__main__"):
            continue
        own = parts[0]
        assert own in LAYERS, f"{path}: not in a layer; add it to LAYERS"
        for module in _runtime_imports(path):
            if LAYERS.index(_layer(module)) > LAYERS.index(own):
                upward.append(f"{'.'.join(parts)} imports {module}")
    assert upward == []


def test_run_file_names_are_spelled_only_in_the_run_module() -> None:
    names = {v.name for v in vars(RunDir).values() if isinstance(v, _Entry) and "." in v.name}  # folders: words
    assert {"metrics.json", "splits.csv", "state.json", "model.json"} <= names
    spelled = [
        f"{path.relative_to(PACKAGE)}:{node.lineno} {node.value!r}"
        for path in PACKAGE.rglob("*.py")
        if path.name != "rundir.py"
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.Constant) and node.value in names
    ]
    assert spelled == []
    run = RunDir("some/run")
    assert run.metrics == Path("some/run/metrics.json") and RunDir.metrics == "metrics.json"


def test_train_state_round_trips_and_reads_older_files(tmp_path: Path) -> None:
    import json

    from covidxr.results import TrainState

    run = RunDir(tmp_path)
    assert run.read_state() is None
    state = TrainState("finished", best_epoch=7, best_val_loss=0.25, epochs_run=12, cache_hit=True, cache_key="k")
    run.write_state(state)
    assert run.read_state() == state and run.read_state().finished  # type: ignore[union-attr]
    assert "head" not in json.loads(run.state.read_text())  # unset facts are left out, not written as null
    run.state.write_text(json.dumps({"status": "running", "written_by": "a later version"}))
    assert run.read_state() == TrainState("running")
    assert not list(tmp_path.glob(".*.tmp"))
