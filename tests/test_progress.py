"""Progress in a redirected log is a few dated lines, not one line of carriage-return updates."""

from __future__ import annotations

import re

import pytest

from covidxr.progress import STEPS, progress


def test_a_log_gets_dated_lines_at_start_each_quarter_and_end(capsys: pytest.CaptureFixture[str]) -> None:
    with progress(5840, "features", "img") as bar:  # Kermany's training films, a batch of 16 at a time
        for _ in range(365):
            bar.update(16)
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert "\r" not in err and len(lines) == STEPS + 1  # start, three quarters, done
    assert all(re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d features: ", line) for line in lines)
    assert "started, 5840 img" in lines[0] and "done, 5840 img" in lines[-1]
    assert [int(re.search(r": (\d+)/5840", line).group(1)) for line in lines[1:-1]] == [1472, 2928, 4384]


def test_an_update_that_passes_several_quarters_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    with progress(2, "training", "epoch") as bar:  # a two-epoch run: each epoch passes two quarters
        bar.update(1)
        bar.update(1)
    lines = capsys.readouterr().err.splitlines()
    assert [line.split(": ", 1)[1].split(" (")[0] for line in lines] == [
        "started, 2 epoch", "1/2 epoch", "2/2 epoch", "done, 2 epoch in 0 s"
    ]  # fmt: skip
