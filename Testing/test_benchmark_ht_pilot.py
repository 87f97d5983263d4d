"""The hard-thresholded pilot experiment (benchmarks/ht_pilot.py): its estimate keeps the input's coefficients above
the threshold on the engine's groups, the flat region is the flattest share of the mask, a pilot made of the
network alone reproduces the engine's stage, and the table pairs each mixed pilot with the engine by seed."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np

if importlib.util.find_spec("benchmarks") is None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from conftest import smooth_volume  # noqa: E402

from benchmarks import ht_pilot  # noqa: E402


def test_no_threshold_gives_the_input_back_and_a_huge_one_nothing(noisy_case):
    _, noisy, pilot = noisy_case
    v = np.full((4, 4, 4), 100.0)
    np.testing.assert_allclose(ht_pilot.hard_threshold(noisy, pilot, v, 0.0), noisy, atol=1e-3)
    assert np.abs(ht_pilot.hard_threshold(noisy, pilot, v, 1e6)).max() == 0.0


def test_the_hard_thresholded_estimate_removes_noise_and_keeps_the_input_unchanged(noisy_case):
    clean, noisy, pilot = noisy_case
    before = noisy.copy()
    est = ht_pilot.hard_threshold(noisy, pilot, np.full((4, 4, 4), 100.0), 2.7)
    assert est.shape == noisy.shape and est.dtype == np.float32
    assert np.sqrt(np.mean((est - clean) ** 2)) < 0.7 * np.sqrt(np.mean((noisy - clean) ** 2))
    np.testing.assert_array_equal(noisy, before)


def test_the_flat_region_is_the_flattest_share_of_the_mask():
    clean, _ = smooth_volume((10, 20, 22))
    clean[:, :, :6] = 5.0  # a flat band
    mask = np.ones(clean.shape, dtype=bool)
    mask[0] = False
    flat = ht_pilot.flat_region(clean, mask, 0.25)
    assert not flat[0].any() and 0.24 <= flat.sum() / mask.sum() <= 0.30
    assert flat[5, 10, 1] and not flat[5, 10, 15]  # inside the flat band, at the edge along I


def test_a_pilot_of_the_network_alone_is_the_engine_and_every_grid_point_is_stored(
    noisy_case, toy_case, tmp_path, monkeypatch
):
    from NSN2NDenoiseLib import block_matching

    clean, noisy, pilot = noisy_case  # toy_case patches them in as every case
    monkeypatch.setattr(ht_pilot, "OUT", tmp_path / "wiener_htpilot.json")
    monkeypatch.setattr(ht_pilot, "GRID", {"lam": (2.7,), "a": (1.0, 0.5), "factor": (block_matching.MATCHED.factor,)})
    stored = ht_pilot.run(["toy"], (7,))
    entry = stored["toy/seed7"]
    f = block_matching.MATCHED.factor
    assert set(entry["mixed"]) == {f"2.7/1/{f:g}", f"2.7/0.5/{f:g}"} and entry["noise_class"] == "white"
    assert entry["mixed"][f"2.7/1/{f:g}"] == entry["engine"]  # the network's share 1: the engine's stage exactly
    assert entry["mixed"][f"2.7/0.5/{f:g}"] != entry["engine"]
    assert entry["hard"]["2.7"]["psnr"] > entry["network"]["psnr"] - 20  # scored, finite
    assert 0 < entry["engine"]["mse_flat"] and entry["engine"]["ssim_flat"] <= 1
    assert json.loads((tmp_path / "wiener_htpilot.json").read_text()) == json.loads(json.dumps(stored, default=float))


def test_the_table_pairs_each_mixed_pilot_with_the_engine_by_seed(tmp_path, monkeypatch):
    monkeypatch.setattr(ht_pilot, "GRID", {"lam": (3.0,), "a": (0.5,), "factor": (4.0,)})

    def q(psnr, ssim):
        return {"psnr": psnr, "ssim": ssim, "ssim_flat": ssim - 0.05, "mse_flat": 90.0}

    entries = {}
    for seed, d in ((1, 0.1), (2, 0.3)):
        entries[f"c/seed{seed}"] = {
            "case": "c",
            "seed": seed,
            "noise_class": "white",
            "network": q(30.0, 0.95),
            "engine": q(31.0 + d, 0.97),
            "hard": {"3": q(30.5, 0.96)},
            "mixed": {"3/0.5/4": q(31.0 + 2 * d, 0.971)},
        }
    entries["c/seed1"]["bm4d"] = {"bm4d_est": q(30.8, 0.98), "engine_with_bm4d_first_step": q(31.2, 0.979)}
    (tmp_path / "wiener_htpilot.json").write_text(json.dumps(entries))
    row = ht_pilot.table(tmp_path).splitlines()[-1]
    assert row.startswith("| `c` | white | 1, 2 | 30.00 / 0.9500 | 31.20 / 0.9700 (0.9200) | 30.50 / 0.9600 |")
    assert "| +0.20 ± 0.14 / +0.0010 ± 0.0000 |" in row  # paired: 0.1 and 0.3 more than the engine
    assert row.endswith("| 30.80 / 0.9800 (0.9300; seeds 1) | 31.20 / 0.9790 (0.9290) |")
    assert ht_pilot.table(tmp_path / "absent") == ""


def test_the_protocol_summary_carries_the_experiment_table(tmp_path, monkeypatch):
    from benchmarks import protocol

    monkeypatch.setitem(protocol.SETS, "reporting", {"cases": (), "seeds": (1,)})
    monkeypatch.setitem(protocol.SETS, "tuning", {"cases": (), "seeds": (100,)})
    test_the_table_pairs_each_mixed_pilot_with_the_engine_by_seed(tmp_path, monkeypatch)
    summary = protocol.write_tables(tmp_path).read_text()
    assert "`python -m benchmarks.ht_pilot`" in summary and ht_pilot.table(tmp_path) in summary
