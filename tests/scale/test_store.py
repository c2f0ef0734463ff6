"""The row store under the film and feature caches: rows found by key, chunks committed whole (a kill loses at
most the chunk being written), a store whose key differs refused, the size cap."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from covidxr.errors import CovidxrError
from covidxr.store import RowStore, enforce_cap, store_sizes


def test_rows_come_back_by_key_in_the_asked_order_across_chunks(tmp_path: Path) -> None:
    store = RowStore(tmp_path, "films", {"size": 8})
    a, b = np.arange(3 * 4).reshape(3, 4), 100 + np.arange(2 * 4).reshape(2, 4)
    store.add(["a0", "a1", "a2"], a)
    store.add(["b0", "b1"], b)
    assert store.missing(["a1", "c", "b0", "c"]) == ["c"]
    np.testing.assert_array_equal(store.gather(["b1", "a0", "b1", "a2"]), np.stack([b[1], a[0], b[1], a[2]]))
    reopened = RowStore(tmp_path, "films", {"size": 8})  # another process, later
    assert len(reopened) == 5
    np.testing.assert_array_equal(reopened.row("a1"), a[1])


def test_a_chunk_without_its_keys_file_was_never_committed(tmp_path: Path) -> None:
    store = RowStore(tmp_path, "features", {"k": 1})
    store.add(["x"], np.ones((1, 2), np.float32))
    committed = next(store.folder.glob("chunk-*.keys.json"))
    # What kill -9 between the chunk's rows and its keys leaves: rows on disk, no keys file.
    np.save(store.folder / "chunk-0-killed.npy", np.zeros((1, 2), np.float32))
    (store.folder / ".chunk-1-killed.npy.tmp").write_bytes(b"half a chunk")
    reopened = RowStore(tmp_path, "features", {"k": 1})
    assert len(reopened) == 1 and reopened.missing(["x", "y"]) == ["y"]
    committed.unlink()
    assert RowStore(tmp_path, "features", {"k": 1}).missing(["x"]) == ["x"]  # computed again, never half-read


def test_a_store_whose_key_differs_is_refused_by_name(tmp_path: Path) -> None:
    store = RowStore(tmp_path, "films", {"size": 8})
    (store.folder / "key.json").write_text(json.dumps({"size": 9}))
    with pytest.raises(CovidxrError, match=r"films-.*key\.json does not match"):
        RowStore(tmp_path, "films", {"size": 8})


def test_the_size_cap_removes_the_least_recently_used_stores_first(tmp_path: Path) -> None:
    stores = [RowStore(tmp_path, "features", {"k": k}) for k in range(3)]
    for i, s in enumerate(stores):
        s.add(["r"], np.zeros((1, 250_000), np.float32))  # 1 MB each
        os.utime(s.folder / "key.json", (1000 + i, 1000 + i))
    removed = enforce_cap(tmp_path, keep=stores[0].folder, cap_gb=0.0021)
    assert removed == [stores[1].folder]  # the oldest is kept (in use), the next oldest goes
    assert [f for f, _, _ in store_sizes(tmp_path)] == [stores[0].folder, stores[2].folder]


def test_cache_info_lists_the_stores_and_clear_removes_one_kind(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from covidxr.cli import app

    RowStore(tmp_path, "films", {"size": 8}).add(["a"], np.zeros((1, 8, 8), np.uint8))
    RowStore(tmp_path, "features", {"k": 1}).add(["a"], np.zeros((1, 4), np.float32))
    runner = CliRunner()
    info = runner.invoke(app, ["cache", "info", "--cache-dir", str(tmp_path)])
    assert info.exit_code == 0 and "2 store(s)" in info.output and "films-" in info.output
    cleared = runner.invoke(app, ["cache", "clear", "--cache-dir", str(tmp_path), "--kind", "films"])
    assert cleared.exit_code == 0 and "removed 1 store(s)" in cleared.output
    assert [p.name.split("-")[0] for p, _, _ in store_sizes(tmp_path)] == ["features"]
