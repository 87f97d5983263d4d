"""The matching-cost benchmark (benchmarks/matching_cost.py): the matching it times as "before" gives the engine's
matching's result exactly, so the two differ only in how they hold the distances, and each is timed on its own."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np

if importlib.util.find_spec("benchmarks") is None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


from benchmarks import matching_cost  # noqa: E402


def test_the_list_of_rows_gives_the_engines_stage_exactly(noisy_case, monkeypatch):
    from NSN2NDenoiseLib import block_matching, wiener

    _, noisy, pilot = noisy_case
    now = pilot.copy()
    entry_now = wiener.apply_wiener(noisy, now, (0.0, 0.05), "matched")  # white: both passes and the estimate
    calls = []

    def counted(*args):
        calls.append(args)
        return matching_cost._match_as_rows(*args)

    monkeypatch.setattr(block_matching, "_match", counted)
    before = pilot.copy()
    entry_before = wiener.apply_wiener(noisy, before, (0.0, 0.05), "matched")
    assert calls, "the stage must have matched through the list of rows"
    assert entry_before["network_free_share"] > 0
    np.testing.assert_array_equal(before, now)
    assert entry_before == entry_now


def test_timed_puts_the_engines_matching_back(noisy_case):
    from NSN2NDenoiseLib import block_matching

    _, noisy, pilot = noisy_case
    current = block_matching._match
    rows = matching_cost.timed(noisy, pilot, 0.0, rows=True)
    now = matching_cost.timed(noisy, pilot, 0.0, rows=False)
    assert block_matching._match is current
    assert rows["seconds"] > 0 and now["seconds"] > 0
    assert rows["entry"] == now["entry"]
