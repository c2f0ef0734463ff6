"""`covidxr cache info | clear`: the film and feature stores, their sizes, and removing them."""

from __future__ import annotations

import shutil
from pathlib import Path

import typer

from covidxr.errors import CovidxrError

cache_app = typer.Typer(help="The film and feature caches: what they hold, and clearing them.", no_args_is_help=True)
CACHE_DIR = typer.Option(None, "--cache-dir", help="the cache folder (default $COVIDXR_CACHE/features)")


def _folder(cache_dir: Path | None) -> Path:
    from covidxr.training.feature_cache import default_cache_dir

    return cache_dir or default_cache_dir()


@cache_app.command("info")
def info_cmd(cache_dir: Path | None = CACHE_DIR) -> None:
    """Each store (films or features), its rows, size on disk and last use; the cap ($COVIDXR_CACHE_MAX_GB)."""
    import datetime
    import os

    from covidxr.store import DEFAULT_CAP_GB, store_sizes

    folder = _folder(cache_dir)
    stores = store_sizes(folder)
    typer.echo(f"{'store':<34}{'chunks':>10}{'size':>12}  last used")
    for path, size, used in reversed(stores):
        rows = sum(1 for _ in path.glob("chunk-*.keys.json"))
        when = datetime.datetime.fromtimestamp(used).strftime("%Y-%m-%d %H:%M")
        typer.echo(f"{path.name:<34}{rows:>10}{size / 1e6:>9.1f} MB  {when}")
    cap = float(os.environ.get("COVIDXR_CACHE_MAX_GB", DEFAULT_CAP_GB))
    total = sum(s for _, s, _ in stores)
    typer.echo(f"{len(stores)} store(s), {total / 1e9:.2f} GB of a {cap:g} GB cap, in {folder}")


@cache_app.command("clear")
def clear_cmd(
    cache_dir: Path | None = CACHE_DIR,
    kind: str = typer.Option("all", "--kind", help="all | films | features"),
) -> None:
    """Remove the stores (all, or one kind); they are rebuilt when a run needs them."""
    from covidxr.store import store_sizes

    if kind not in ("all", "films", "features"):
        raise CovidxrError(f"--kind {kind!r}: choose all, films or features")
    folder = _folder(cache_dir)
    removed = [p for p, _, _ in store_sizes(folder) if kind == "all" or p.name.startswith(f"{kind}-")]
    for path in removed:
        shutil.rmtree(path, ignore_errors=True)
    typer.echo(f"removed {len(removed)} store(s) from {folder}")
