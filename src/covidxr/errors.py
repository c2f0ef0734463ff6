"""Errors the user can act on. The CLI prints their message and exits; it never shows a traceback for them."""

from __future__ import annotations

from pathlib import Path


class CovidxrError(Exception):
    """Base class: a problem with the user's input or environment, explained in its message."""


class ImageReadError(CovidxrError):
    """One file could not be turned into an image; `problem` is a stable machine-readable kind."""

    def __init__(self, path: Path | str, problem: str, detail: str = "") -> None:
        self.path = Path(path)
        self.problem = problem
        self.detail = detail
        super().__init__(f"{self.path}: {problem}" + (f" ({detail})" if detail else ""))


class DataError(CovidxrError):
    """A data set cannot be used as given (layout not recognised, one class left, too few patients, ...)."""
