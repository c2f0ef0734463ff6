"""CLI options generated from the config dataclasses: one place, so every config field has its flag.

A field's help text (and flag name, where it differs) lives in its `metadata`; choices come from `Literal`
types. Flags left out stay None and leave the config (file or defaults) as it is.
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Callable
from dataclasses import Field, fields
from pathlib import Path
from typing import Any, get_args, get_origin

import typer
import yaml

from covidxr.config import Config, DataConfig, TrainConfig
from covidxr.data.labels import parse_label_map
from covidxr.errors import CovidxrError

SECTIONS: dict[str, type] = {"data": DataConfig, "train": TrainConfig}


def flag_of(f: Field[Any]) -> str:
    return f.metadata.get("flag") or "--" + f.name.replace("_", "-")


def _hints(kind: type) -> dict[str, Any]:
    return typing.get_type_hints(kind)


def _parameter(f: Field[Any], hint: Any) -> inspect.Parameter:
    """A typer option for one config field; tuples and mappings are typed as text and parsed afterwards."""
    text = f.metadata["help"]
    flag = flag_of(f)
    args = [a for a in get_args(hint) if a is not type(None)]
    base = args[0] if type(None) in get_args(hint) and len(args) == 1 else hint  # X | None -> X
    if get_origin(base) is typing.Literal:
        option, annotation = typer.Option(None, flag, help=text), base
    elif f.name == "paths":
        option, annotation = typer.Option(None, flag, help=text), list[Path]
    elif base is bool:
        option, annotation = typer.Option(None, f"{flag}/--no-{flag[2:]}", help=text), bool
    elif base in (int, float, str):
        option, annotation = typer.Option(None, flag, help=text), base
    else:  # tuples and mappings: comma lists, OLD=NEW pairs or YAML
        option, annotation = typer.Option(None, flag, help=text), str
    return inspect.Parameter(
        f.name,
        inspect.Parameter.KEYWORD_ONLY,
        default=option,
        annotation=annotation | None,
    )


def config_parameters(*sections: str, skip: tuple[str, ...] = ()) -> list[inspect.Parameter]:
    params = []
    for name in sections:
        kind = SECTIONS[name]
        hints = _hints(kind)
        params += [_parameter(f, hints[f.name]) for f in fields(kind) if f.name not in skip]
    return params


def with_config_options(*sections: str, skip: tuple[str, ...] = ()) -> Callable[[Callable[..., Any]], Any]:
    """Give a command (taking **options) one flag per field of the named config sections."""

    def wrap(fn: Callable[..., Any]) -> Callable[..., Any]:
        own = [p for p in inspect.signature(fn).parameters.values() if p.kind is not inspect.Parameter.VAR_KEYWORD]
        fn.__signature__ = inspect.Signature(own + config_parameters(*sections, skip=skip))  # type: ignore[attr-defined]
        return fn

    return wrap


def parse_value(f: Field[Any], hint: Any, value: Any) -> Any:
    """A flag's value as the config field's type, or one clear error naming the flag."""
    if f.name == "paths":
        return tuple(str(p) for p in value)
    origin = get_origin(hint)
    try:
        if f.name == "label_map":
            return parse_label_map(value)
        if origin is dict:
            path = Path(value)
            raw = yaml.safe_load(path.read_text() if path.suffix in (".yaml", ".yml") and path.is_file() else value)
            if not isinstance(raw, dict):
                raise ValueError("expected a mapping")
            return raw
        if origin is tuple:
            item = get_args(hint)[0]
            parts = tuple(item(p.strip()) for p in str(value).split(",") if p.strip())
            if get_args(hint)[-1] is not Ellipsis and len(parts) != len(get_args(hint)):
                raise ValueError(f"expected {len(get_args(hint))} comma-separated values")
            return parts
    except (ValueError, yaml.YAMLError, OSError) as exc:
        raise CovidxrError(f"{flag_of(f)} {value!r}: {exc}") from None
    return value


def apply_options(cfg: Config, options: dict[str, Any]) -> Config:
    """Every flag the user gave, onto the config (a file's, or the defaults)."""
    for name, kind in SECTIONS.items():
        section = getattr(cfg, name)
        hints = _hints(kind)
        for f in fields(kind):
            value = options.get(f.name)
            if value is not None and value != []:
                setattr(section, f.name, parse_value(f, hints[f.name], value))
    return cfg


def load_config(config: Path | None, options: dict[str, Any]) -> Config:
    """Config file (or defaults), then every flag the user actually gave."""
    return apply_options(Config.from_yaml(config) if config else Config(), options)


# Where a command's networks run (covidxr.device): the same names and choices as training's flags.
ACCELERATOR: Any = typer.Option("auto", "--accelerator", help="where networks run: auto | cpu | gpu | cuda | mps")
PRECISION: Any = typer.Option("32-true", "--precision", help="32-true | 16-mixed | bf16-mixed (autocast there)")
DEVICES: Any = typer.Option(
    "auto",
    "--devices",
    help="which GPU: auto (GPU 0, or the process's local rank), or 'k,' for GPU k (Lightning's list)",
)
