"""A config field that carries its help text (and flag name): the CLI's options are generated from them."""

from __future__ import annotations

from dataclasses import field
from typing import Any


def option(default: Any, help: str, flag: str | None = None, **kw: Any) -> Any:
    """A config field with the help text (and flag name) its generated CLI option uses."""
    meta = {"help": help} | ({"flag": flag} if flag else {})
    if isinstance(default, (dict, list)):
        return field(default_factory=lambda: type(default)(default), metadata=meta, **kw)
    return field(default=default, metadata=meta, **kw)
