"""The white-noise stage experiment (benchmarks/white_stage.py): its passes are the engine's stage's passes exactly
(the engine's variant on white noise, before the network-free estimate is averaged in; the previous one on
correlated noise), every variant is stored and scored, and the
table pairs each variant with the previous stage by seed."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest

if importlib.util.find_spec("benchmarks") is None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


from benchmarks import white_stage  # noqa: E402


def test_the_engines_variant_is_the_engines_white_stage_and_the_previous_its_correlated_one(noisy_case, monkeypatch):
    from NSN2NDenoiseLib import block_matching, wiener

    _, noisy, pilot = noisy_case
    monkeypatch.setitem(block_matching.NETWORK_FREE_SHARE, "white", 0.0)  # the passes alone, as this measures them
    v = white_stage.variants()
    assert v[white_stage.ENGINE] == block_matching.MATCHED_WHITE and v[white_stage.PREVIOUS] == (
        block_matching.MATCHED,
    )
    assert len(v) == 6 and list(v)[0] == white_stage.PREVIOUS and list(v)[-1] == white_stage.ENGINE
    for name, lag1 in ((white_stage.ENGINE, (0.0, 0.05)), (white_stage.PREVIOUS, (0.3, 0.3))):
        expected = pilot.copy()
        wiener.apply_wiener(noisy, expected, lag1, "matched")
        before = pilot.copy()
        assert np.array_equal(white_stage.run_passes(noisy, pilot, v[name]), expected), name
        np.testing.assert_array_equal(pilot, before)  # the pilot is not written


def test_every_variant_is_stored_and_scored(noisy_case, toy_case, tmp_path, monkeypatch):
    clean, noisy, pilot = noisy_case
    case = toy_case
    monkeypatch.setattr(white_stage, "OUT", tmp_path / "wiener_white.json")
    names = [white_stage.PREVIOUS, "two passes, 5-voxel blocks, no window", white_stage.ENGINE]
    stored = white_stage.run(["toy"], (7,), names)
    entry = stored["toy/seed7"]
    assert entry["noise_class"] == "white" and list(entry["variants"]) == names
    got = {n: entry["variants"][n] for n in names}
    assert got[white_stage.ENGINE]["psnr"] == pytest.approx(
        case.psnr(white_stage.run_passes(noisy, pilot, white_stage.variants()[white_stage.ENGINE]))
    )
    assert len({g["psnr"] for g in got.values()}) == 3 and all(g["seconds"] > 0 for g in got.values())
    assert json.loads((tmp_path / "wiener_white.json").read_text()) == json.loads(json.dumps(stored, default=float))


def test_the_table_pairs_each_variant_with_the_previous_stage_by_seed(tmp_path):
    def q(psnr, ssim):
        return {"psnr": psnr, "ssim": ssim, "ssim_flat": ssim - 0.05, "mse_flat": 90.0, "seconds": 1.0}

    entries = {}
    for seed, d in ((1, 0.1), (2, 0.3)):
        entries[f"c/seed{seed}"] = {
            "case": "c",
            "seed": seed,
            "noise_class": "white",
            "variants": {white_stage.PREVIOUS: q(31.0 + d, 0.97), white_stage.ENGINE: q(31.0 + 2 * d, 0.972)},
        }
    (tmp_path / "wiener_white.json").write_text(json.dumps(entries))
    row = white_stage.table(tmp_path).splitlines()[-1]
    assert row.startswith("| `c` | white | 1, 2 | 31.20 ± 0.14 / 0.9700 | not run |")
    assert row.endswith("| **+0.20 ± 0.14 / +0.0020 ± 0.0000** | 0.9200 → 0.9220 |")  # paired: 0.1 and 0.3
    assert white_stage.table(tmp_path / "absent") == ""


def test_the_protocol_summary_carries_the_experiment_table(tmp_path, monkeypatch):
    from benchmarks import protocol

    monkeypatch.setitem(protocol.SETS, "reporting", {"cases": (), "seeds": (1,)})
    monkeypatch.setitem(protocol.SETS, "tuning", {"cases": (), "seeds": (100,)})
    test_the_table_pairs_each_variant_with_the_previous_stage_by_seed(tmp_path)
    summary = protocol.write_tables(tmp_path).read_text()
    assert "`python -m benchmarks.white_stage`" in summary and white_stage.table(tmp_path) in summary
