"""The network-free estimate's filter grid (benchmarks/network_free_grid.py): the 'first' variant is the engine's first
estimate and the adopted one the engine's now, every variant and mix is stored and scored as the average it names,
a stored variant is not measured again, and the table pairs each variant with the passes and with 'first' by seed."""

from __future__ import annotations

import importlib.util
import json
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

if importlib.util.find_spec("benchmarks") is None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


from benchmarks import ht_pilot, network_free_grid, wiener_grid  # noqa: E402


def test_first_is_the_engines_first_estimate_and_the_adopted_variant_is_the_engines_estimate(noisy_case):
    from NSN2NDenoiseLib import block_matching as bm

    clean, noisy, _ = noisy_case
    table = network_free_grid.variants()
    assert table["first"] == (bm.MATCHED, bm.MATCHED) and list(table)[0] == network_free_grid.FIRST == "first"
    # the factor is not used by the estimate (its noise variance is the level squared): the engine's says 1
    assert tuple(replace(f, factor=1.0) for f in table[network_free_grid.ADOPTED]) == bm.NETWORK_FREE
    v = np.full((4, 4, 4), 100.0, np.float32)
    first = ht_pilot.hard_threshold(noisy, noisy, v, 2.7)
    bm.matched_into(noisy, first, v)
    np.testing.assert_array_equal(network_free_grid.estimate(noisy, 10.0, table["first"]), first)
    adopted = network_free_grid.estimate(noisy, 10.0, table[network_free_grid.ADOPTED])
    np.testing.assert_array_equal(adopted, bm.network_free(noisy, 10.0))
    for name, filters in table.items():  # every variant denoises, and they differ
        got = network_free_grid.estimate(noisy, 10.0, filters)
        assert got.dtype == np.float32 and np.mean((got - clean) ** 2) < 0.3 * np.mean((noisy - clean) ** 2), name
        assert name == "first" or not np.allclose(got, first, atol=1e-2), name
    assert (noisy == noisy_case[1]).all()  # the input is not written


def test_each_variant_and_mix_is_stored_and_a_stored_one_is_not_measured_again(toy_case, tmp_path, monkeypatch):
    from NSN2NDenoiseLib import block_matching as bm

    case = toy_case
    monkeypatch.setattr("NSN2NDenoiseLib.noise_estimates.body_sigma", lambda x: 10.0)
    out = tmp_path / "wiener_network_free.json"
    stored = network_free_grid.run(["toy"], (7,), ["first", "w5"], out)
    entry = stored["toy/seed7"]
    assert entry["noise_class"] == "white" and entry["sigma"] == 10.0 and list(entry["variants"]) == ["first", "w5"]
    assert entry["network_alone_psnr"] == pytest.approx(case.psnr(case.pilot))
    assert entry["stored_network_alone_psnr"] is None
    passes = case.pilot.copy()
    bm.passes_into(case.noisy, passes, bm.MATCHED_WHITE)
    assert entry["passes"]["psnr"] == pytest.approx(case.psnr(passes))
    b = network_free_grid.estimate(case.noisy, 10.0, network_free_grid.variants()["w5"])
    assert entry["variants"]["w5"]["alone"]["psnr"] == pytest.approx(case.psnr(b))
    assert entry["variants"]["w5"]["mix 0.3"]["psnr"] == pytest.approx(case.psnr(0.7 * passes + 0.3 * b), abs=1e-4)
    assert entry["variants"]["w5"]["mix 0.5"]["psnr"] == pytest.approx(case.psnr(0.5 * passes + 0.5 * b), abs=1e-4)
    assert json.loads(out.read_text()) == json.loads(json.dumps(stored, default=float))
    monkeypatch.setattr(wiener_grid, "_case", lambda name, seed: pytest.fail("a stored variant is measured again"))
    assert network_free_grid.run(["toy"], (7,), ["w5", "first"], out) == stored


def test_the_table_pairs_each_variant_with_the_passes_and_with_first_by_seed(tmp_path):
    def q(psnr, ssim):
        return {"psnr": psnr, "ssim": ssim, "ssim_flat": ssim, "mse_flat": 1.0}

    def mixes(d):
        return {"alone": q(30.0 + d, 0.95), "mix 0.3": q(31.0 + d, 0.96), "mix 0.5": q(31.5 + d, 0.97)}

    entries = {
        f"c/seed{s}": {
            "case": "c",
            "seed": s,
            "passes": q(31.0, 0.96),
            "variants": {"first": mixes(0.0), "w5": mixes(d)},
            "seconds": {"first": 10.0, "w5": 20.0 + s},
        }
        for s, d in ((1, 0.1), (2, 0.3))
    }
    (tmp_path / "wiener_network_free.json").write_text(json.dumps(entries))
    other = {"d/seed1": {**entries["c/seed1"], "case": "d"}}
    (tmp_path / "wiener_network_free_other.json").write_text(json.dumps(other))
    lines = network_free_grid.table(tmp_path).splitlines()
    assert len(lines) == 2 + 2 + 2 and lines[2].startswith("| `c` | first | 1, 2 | 10 |")
    assert lines[3] == (
        "| `c` | w5 | 1, 2 | 22 | -0.80 ± 0.14 / -0.0100 ± 0.0000 | +0.20 ± 0.14 / +0.0000 ± 0.0000 "
        "| +0.70 ± 0.14 / +0.0100 ± 0.0000 | +0.20 ± 0.14 / +0.0000 ± 0.0000 | +0.20 ± 0.14 / +0.0000 ± 0.0000 |"
    )
    assert lines[4].startswith("| `d` | first | 1 |")  # the other file of the same stem
    assert network_free_grid.table(tmp_path / "absent") == ""


def test_the_protocol_summary_carries_the_grid_table(tmp_path, monkeypatch):
    from benchmarks import protocol

    monkeypatch.setitem(protocol.SETS, "reporting", {"cases": (), "seeds": (1,)})
    monkeypatch.setitem(protocol.SETS, "tuning", {"cases": (), "seeds": (100,)})
    test_the_table_pairs_each_variant_with_the_passes_and_with_first_by_seed(tmp_path)
    summary = protocol.write_tables(tmp_path).read_text()
    assert "`python -m benchmarks.network_free_grid`" in summary and network_free_grid.table(tmp_path) in summary
