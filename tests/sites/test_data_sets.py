"""A site's films never vanish quietly: absolute and relative CSV paths read the same alone and beside other
sets; a set that yields no usable film is an error naming it; skipped films are counted per set."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from covidxr.cli import app
from covidxr.data.synth import generate


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A site of 20 phantoms whose CSV, in a folder of its own, lists them by absolute path."""
    root = tmp_path_factory.mktemp("site")
    generate(root / "films", n=20, seed=31)
    with (root / "films" / "labels.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    (root / "site").mkdir()
    _write(root / "site" / "labels.csv", [r | {"path": str((root / "films" / r["path"]).resolve())} for r in rows])
    return root / "site" / "labels.csv"


def _write(path: Path, rows: list[dict[str, str]]) -> Path:
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def _inspect(tmp_path: Path, *paths: Path) -> tuple[int, str, dict[str, object]]:
    out = CliRunner().invoke(app, ["data", "inspect", *map(str, paths), "--report", str(tmp_path / "r.json")])
    return out.exit_code, out.output, json.loads((tmp_path / "r.json").read_text())


def test_absolute_csv_paths_read_the_same_alone_and_beside_another_set(
    phantoms: Path, site: Path, tmp_path: Path
) -> None:
    code, _, alone = _inspect(tmp_path, site)
    assert code == 0 and alone["usable"] == 20 and not alone["skipped"]
    code, output, joined = _inspect(tmp_path, phantoms, site)
    assert code == 0 and joined["usable"] == 140 and not joined["skipped"]
    assert joined["sets"] == {phantoms.name: [120, 120], "site": [20, 20]}
    assert f"per data set: {phantoms.name} 120 of 120, site 20 of 20" in output


def test_skipped_films_are_counted_per_set(phantoms: Path, site: Path, tmp_path: Path) -> None:
    with site.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    (tmp_path / "partial").mkdir()
    gone = [r | {"path": r["path"].replace(".png", "-gone.png")} for r in rows[:3]]
    partial = _write(tmp_path / "partial" / "labels.csv", rows + gone)
    code, output, joined = _inspect(tmp_path, phantoms, partial)
    assert code == 0 and joined["sets"]["partial"] == [23, 20]
    assert "partial 20 of 23" in output and output.count("-gone.png: missing") == 3


def test_a_set_with_no_usable_film_is_one_error_naming_it(phantoms: Path, site: Path, tmp_path: Path) -> None:
    with site.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    (tmp_path / "broken").mkdir()
    broken = _write(tmp_path / "broken" / "labels.csv", [r | {"path": r["path"] + ".nope"} for r in rows])
    code, output, _ = _inspect(tmp_path, phantoms, broken)
    assert code == 1 and "UNUSABLE: data set 'broken' yields no usable film of the 20 it lists" in output
    done = subprocess.run([sys.executable, "-m", "covidxr", "train", "--data", str(phantoms), "--data", str(broken),
                           "--out", str(tmp_path / "run")], capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1].endswith("data set 'broken' yields no usable film of the 20 it lists")
    assert not (tmp_path / "run" / "last.ckpt").exists()
