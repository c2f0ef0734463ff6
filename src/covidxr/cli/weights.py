"""`covidxr weights list | fetch | import`: which backbones can run here, and getting their published weights
into covidxr's cache (once, online; or from a file brought to an offline machine)."""

from __future__ import annotations

import json
from dataclasses import asdict, fields
from pathlib import Path
from typing import TYPE_CHECKING

import typer

if TYPE_CHECKING:
    from covidxr.models.weight_cache import CachedWeights

weights_app = typer.Typer(help="Backbone weights: what is ready here; fetch (online) or import a file.",
                          no_args_is_help=True)  # fmt: skip

TRUST_PICKLE = typer.Option(
    False, "--trust-pickle",
    help="the file is a pickled whole model (torchxrayvision's DenseNet files): unpickle it, which can run code. "
    "Only for a file you downloaded yourself from the project's release page",
)  # fmt: skip


@weights_app.command("list")
def list_cmd(as_json: bool = typer.Option(False, "--json", help="one JSON object per backbone")) -> None:
    """Every backbone, its input, and for each weight source whether it is available on this machine now."""
    from covidxr.models.weight_cache import WeightsRow, weight_table, weights_cache_dir

    rows = weight_table()
    if as_json:
        typer.echo(json.dumps([asdict(r) for r in rows], indent=2))
        return
    columns = [f.name for f in fields(WeightsRow)]
    cells = [columns, *([str(getattr(r, c)) for c in columns] for r in rows)]
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
    for row in cells:
        typer.echo("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())
    typer.echo(f"\ncache: {weights_cache_dir()}  (file: any backbone takes `covidxr weights import NAME FILE`)")


@weights_app.command("fetch")
def fetch_cmd(name: str = typer.Argument(..., help="a backbone (covidxr weights list)"),
              trust_pickle: bool = TRUST_PICKLE) -> None:  # fmt: skip
    """Online: download NAME's published weights (timm's hub, or torchxrayvision's release page) into the cache."""
    from covidxr.models.weight_cache import fetch_weights

    _report(fetch_weights(name, trust_pickle))


@weights_app.command("import")
def import_cmd(
    name: str = typer.Argument(..., help="a backbone (covidxr weights list)"),
    file: Path = typer.Argument(..., help="the weights file: .safetensors, or a timm/torchvision .pth state dict"),
    trust_pickle: bool = TRUST_PICKLE,
) -> None:
    """Check FILE against NAME's architecture and keep it in the cache as safetensors (sha256 and origin kept)."""
    from covidxr.models.weight_cache import import_weights

    _report(import_weights(name, file, trust_pickle))


def _report(entry: CachedWeights) -> None:
    typer.echo(f"{entry.backbone}: --weights {entry.tag} ready ({entry.origin}, sha256 {entry.sha256}) in {entry.file}")
