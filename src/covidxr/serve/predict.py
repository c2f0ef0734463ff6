"""Batch prediction over files and folders (recursive, DICOM included), streaming: rows are written as batches
finish, so memory stays flat in the number of images. Unreadable files get a row with their reason. Decoding
and preprocessing run in worker processes (a DataLoader, a couple of batches ahead) while the network scores the
batch before, so the slower of the two sets the pace, not their sum.

A CSV output is flushed row by row; `resume` keeps the rows an interrupted run wrote (dropping a half-written
last line, if a kill landed mid-row) and predicts only the files not in them."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import DataLoader, Dataset

from covidxr.data.dataset import Preprocess
from covidxr.data.readers import iter_image_files, read_image
from covidxr.errors import CovidxrError, ImageReadError
from covidxr.progress import progress
from covidxr.serve.engine import Engine, load_engine, physical_cores

Decoded = tuple[Path, "np.ndarray | None", "str | None"]  # path, preprocessed image or None, error or None


def _label(engine: Engine, scores: np.ndarray) -> str:
    return engine.spec.classes[int(engine.spec.decide(scores[None])[0])]


class DecodedFiles(Dataset):
    """Files read and preprocessed as the model takes them; an unreadable file is an item with its reason."""

    def __init__(self, paths: list[Path], preprocess: Preprocess) -> None:
        self.paths, self.preprocess = paths, preprocess

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> Decoded:
        path = self.paths[i]
        try:
            return path, self.preprocess(read_image(path).pixels).numpy(), None
        except ImageReadError as exc:
            return path, None, f"{exc.problem}" + (f" ({exc.detail})" if exc.detail else "")


def _as_list(items: list[Decoded]) -> list[Decoded]:
    return items


def default_workers() -> int:
    """Decoding processes beside inference: a quarter of the cores, at most 4. Below 4 cores none: measured on
    2 cores (benchmarks/bench_inference.py), one decoding process took a core from inference and predict ran
    at 0.86x of a bare loop, against 0.95x decoding in-process."""
    return min(4, physical_cores() // 4)


def predict_stream(
    engine: Engine,
    paths: list[Path],
    batch_size: int = 16,
    mc: int = 0,
    skip: frozenset[str] = frozenset(),
    workers: int | None = None,
) -> Iterator[dict[str, Any]]:
    """One dict per file not in `skip`, in file order: scores, label at the run's threshold, optional MC-dropout
    std; or an error. `workers` decoding processes (0: decode in this process)."""
    todo = [p for p in iter_image_files(paths) if str(p) not in skip]
    workers = default_workers() if workers is None else workers
    loader = DataLoader(
        DecodedFiles(todo, engine.spec.preprocess), batch_size=batch_size, collate_fn=_as_list, num_workers=workers,
        prefetch_factor=2 if workers else None,
    )  # fmt: skip
    with progress(len(todo), "predict", "img") as bar:
        for items in loader:
            yield from _score(engine, items, mc)
            bar.update(len(items))


def _score(engine: Engine, items: list[Decoded], mc: int) -> Iterator[dict[str, Any]]:
    readable = [x for _, x, _ in items if x is not None]
    batch = np.stack(readable) if readable else None
    scores = engine.scores(batch) if batch is not None else None
    std = _mc_std(engine, batch, mc) if mc and batch is not None else None
    k = 0
    for path, x, error in items:
        if x is None:
            yield {"path": str(path), "error": error}
            continue
        assert scores is not None
        row = {"path": str(path), "label": _label(engine, scores[k]), "threshold": engine.spec.threshold}
        row |= {f"score_{c}": float(s) for c, s in zip(engine.spec.classes, scores[k], strict=True)}
        if std is not None:
            row["mc_std"] = float(std[k])
        k += 1
        yield row


def _mc_std(engine: Engine, batch: np.ndarray, passes: int) -> np.ndarray:
    import torch

    from covidxr.explain.uncertainty import mc_dropout

    net = getattr(engine, "net", None)
    if net is None:
        raise CovidxrError("MC-dropout uncertainty needs the torch engine (ONNX graphs have dropout removed)")
    return mc_dropout(net, torch.from_numpy(batch), engine.spec, passes)["std"]


def predict_to_file(
    run_dir: Path | str,
    paths: list[Path],
    out: Path,
    engine: str = "torch",
    batch_size: int = 16,
    mc: int = 0,
    resume: bool = False,
    workers: int | None = None,
) -> dict[str, int]:
    """Write predictions as CSV or JSON (by the extension of `out`); returns counts of predicted, skipped and
    (with `resume`) already written rows."""
    eng = load_engine(run_dir, engine)
    columns = ["path", "label", "threshold", *(f"score_{c}" for c in eng.spec.classes), "mc_std", "error"]
    as_json = out.suffix.lower() == ".json"
    done: frozenset[str] = frozenset()
    if resume and out.exists():
        if as_json:
            raise CovidxrError(f"{out}: --resume needs a .csv output (rows are appended one by one)")
        done = _written_rows(out, columns)
    counts = {"predicted": 0, "skipped": 0, "already_written": len(done)}
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("a" if done else "w", newline="") as fh:
        writer = None if as_json else csv.DictWriter(fh, fieldnames=columns)
        if writer and not done:
            writer.writeheader()
        elif not writer:
            fh.write("[\n")
        for i, row in enumerate(predict_stream(eng, paths, batch_size, mc, done, workers)):
            counts["skipped" if "error" in row else "predicted"] += 1
            if writer:
                writer.writerow(row)
                fh.flush()  # a killed run loses at most the row being written
            else:
                fh.write((",\n" if i else "") + json.dumps(row))
        if not writer:
            fh.write("\n]\n")
    return counts


def _written_rows(out: Path, columns: list[str]) -> frozenset[str]:
    """Paths already in an interrupted CSV, after cutting a half-written last line; the header must match."""
    data = out.read_bytes()
    whole = data[: data.rfind(b"\n") + 1]
    if len(whole) < len(data):
        with out.open("r+b") as fh:
            fh.truncate(len(whole))
    lines = whole.decode().splitlines()
    if not lines:
        raise CovidxrError(f"{out}: empty; nothing to resume (run without --resume)")
    header = next(csv.reader(lines[:1]))
    if header != columns:
        raise CovidxrError(f"{out}: its columns {header} are not this run's {columns}; write to another --out")
    return frozenset(row["path"] for row in csv.DictReader(lines))
