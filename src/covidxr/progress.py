"""Progress that suits where it is read: a live bar on a terminal; in a redirected log, a few dated lines (start,
each quarter, end) instead of hundreds of carriage-return updates on one line of a batch job's log."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Protocol

from tqdm.auto import tqdm

STEPS = 4  # dated lines between start and end in a log


class Progress(Protocol):
    def update(self, n: int = 1) -> object: ...


class _LogLines:
    def __init__(self, total: int, desc: str, unit: str) -> None:
        self.total, self.desc, self.unit, self.done, self.began = total, desc, unit, 0, time.monotonic()
        self.next_step = 1
        self._line(f"started, {total} {unit}")

    def _line(self, text: str) -> None:
        print(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {self.desc}: {text}", file=sys.stderr, flush=True)

    def update(self, n: int = 1) -> None:
        self.done += n
        passed = self.next_step
        while self.total and self.next_step < STEPS and self.done * STEPS >= self.next_step * self.total:
            self.next_step += 1
        if self.next_step > passed:  # one line however many quarters this update passed
            self._line(f"{self.done}/{self.total} {self.unit} ({time.monotonic() - self.began:.0f} s)")

    def close(self) -> None:
        self._line(f"done, {self.done} {self.unit} in {time.monotonic() - self.began:.0f} s")


def on_terminal() -> bool:
    return sys.stderr.isatty()


@contextmanager
def progress(total: int, desc: str, unit: str = "it") -> Iterator[Progress]:
    """`with progress(n, "features") as bar: ... bar.update(k)`."""
    if on_terminal():
        with tqdm(total=total, desc=desc, unit=unit, leave=False) as bar:
            yield bar
        return
    lines = _LogLines(total, desc, unit)
    try:
        yield lines
    finally:
        lines.close()
