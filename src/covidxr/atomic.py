"""Files written whole or not at all: a temporary file in the same folder, renamed into place, so a kill -9
leaves either the old file or the new one, never half of one."""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import IO, Any


def write_with(path: Path, write: Callable[[IO[Any]], object], binary: bool = False) -> Path:
    """`write(fh)` into a temporary beside `path` (per process: two writers never share one), then rename."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") if binary else open(tmp, "w", newline="") as fh:
        write(fh)
    tmp.replace(path)
    return path


def write_text(path: Path, text: str) -> Path:
    return write_with(path, lambda fh: fh.write(text))


def write_json(path: Path, payload: Any) -> Path:
    """Indented JSON; numpy scalars and other numbers become floats."""
    return write_text(path, json.dumps(payload, indent=2, default=float) + "\n")


def write_csv(path: Path, columns: Sequence[str], rows: Iterable[Mapping[str, Any]]) -> Path:
    def write(fh: IO[str]) -> None:
        writer = csv.DictWriter(fh, fieldnames=list(columns))
        writer.writeheader()
        writer.writerows(rows)

    return write_with(path, write)
