"""The network-free estimate on correlated noise (benchmarks/correlated_free.py): a variant is the engine's estimate
with the residual's spectrum times its factor as the noise, every variant and mix is stored and scored as the
average it names, a stored variant is not measured again, white noise is refused, the tuning brain region is the
crop of the case and its network output, and the table pairs each variant with the passes by seed."""

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


from benchmarks import correlated_free, datasets, wiener_grid  # noqa: E402


@pytest.fixture
def correlated_case(toy_case, monkeypatch):
    """The Wiener-stage benchmarks' toy case with an in-plane noise correlation of 0.35 (correlated, as low-dose
    CT's), given for any case and seed."""
    case = replace(toy_case, info={**toy_case.info, "inplane_noise_lag1": [0.35, 0.0]})
    monkeypatch.setattr(wiener_grid, "_case", lambda name, seed: case)
    return case


def test_a_variant_is_the_engines_estimate_with_the_residual_spectrum_times_its_factor(noisy_case):
    from NSN2NDenoiseLib import block_matching as bm
    from NSN2NDenoiseLib.wiener import residual_spectrum

    clean, noisy, pilot = noisy_case
    table = correlated_free.variants()
    assert list(table)[:4] == ["wide x1.5", "wide x2", "wide x3", "wide x4"] and len(table) == 3 * 4
    assert table["wide x3"] == (bm.NETWORK_FREE, 3.0)
    narrow, step4 = correlated_free.filters()["narrow"], correlated_free.filters()["narrow-step4"]
    assert [f.search for f in narrow] == [(3, 5)] * 2 and [f.block for f in narrow] == [4, 5]
    assert [f.window for f in narrow] == [2.0] * 2 and [f.step for f in step4] == [4, 4]
    got = correlated_free.estimate(noisy, pilot, table["narrow x2"])
    noise = {b: 2.0 * residual_spectrum(noisy, pilot, b) for b in (4, 5)}
    np.testing.assert_array_equal(got, bm.network_free(noisy, noise, filters=narrow))
    assert np.mean((got - clean) ** 2) < 0.5 * np.mean((noisy - clean) ** 2)
    assert not np.allclose(got, correlated_free.estimate(noisy, pilot, table["narrow x4"]), atol=1e-2)


def test_each_variant_and_mix_is_stored_and_a_stored_one_is_not_measured_again(correlated_case, tmp_path, monkeypatch):
    from NSN2NDenoiseLib import block_matching as bm

    case = correlated_case
    out = tmp_path / "wiener_correlated_free.json"
    stored = correlated_free.run(["toy"], (7,), ["narrow x2", "narrow-step4 x3"], out)
    entry = stored["toy/seed7"]
    assert entry["lag1"] == [0.35, 0.0] and list(entry["variants"]) == ["narrow x2", "narrow-step4 x3"]
    assert entry["network_alone_psnr"] == pytest.approx(case.psnr(case.pilot))
    passes = case.pilot.copy()
    bm.passes_into(case.noisy, passes, bm.PASSES["correlated"])
    assert entry["passes"]["psnr"] == pytest.approx(case.psnr(passes))
    b = correlated_free.estimate(case.noisy, case.pilot, correlated_free.variants()["narrow x2"])
    got = entry["variants"]["narrow x2"]
    assert got["alone"]["psnr"] == pytest.approx(case.psnr(b))
    for a in correlated_free.MIXES:
        assert got[f"mix {a:g}"]["psnr"] == pytest.approx(case.psnr((1 - a) * passes + a * b), abs=1e-4)
    assert json.loads(out.read_text()) == json.loads(json.dumps(stored, default=float))
    monkeypatch.setattr(wiener_grid, "_case", lambda name, seed: pytest.fail("a stored variant is measured again"))
    assert correlated_free.run(["toy"], (7,), ["narrow-step4 x3", "narrow x2"], out) == stored


def test_white_noise_is_refused(toy_case, tmp_path):
    with pytest.raises(ValueError, match="its noise is white, not correlated in-plane"):
        correlated_free.run(["toy"], (7,), ["wide x2"], tmp_path / "wiener_correlated_free.json")


def test_the_brain_region_is_the_crop_of_the_case_and_of_its_network_output(correlated_case, monkeypatch):
    monkeypatch.setattr(datasets, "CT_TUNE_BRAIN_BOX", ((2, 7), (3, 12), (4, 15)))
    c = correlated_free._case("cttune_ld_2e4/brain", 100)
    box = (slice(2, 8), slice(3, 13), slice(4, 16))
    whole = correlated_case
    assert c.noisy.shape == c.pilot.shape == c.ds.clean.shape == c.ds.mask.shape == (6, 10, 12)
    assert np.array_equal(c.noisy, whole.noisy[box]) and np.array_equal(c.pilot, whole.pilot[box])
    assert np.array_equal(c.ds.clean, whole.ds.clean[box]) and np.array_equal(c.ds.noisy, whole.ds.noisy[box])
    assert c.ds.crop.endswith("; brain K 2-7, J 3-12, I 4-15") and c.info is whole.info
    assert correlated_free._case("cttune_ld_2e4", 100) is whole
    for bad in ("ct_ld_2e4/brain", "cttune_ld_2e4/skull"):
        with pytest.raises(ValueError, match="only '<tuning CT case>/brain' names a region"):
            correlated_free._case(bad, 100)


def test_the_table_pairs_each_variant_with_the_passes_by_seed(tmp_path):
    def q(psnr, ssim):
        return {"psnr": psnr, "ssim": ssim, "ssim_flat": ssim, "mse_flat": 1.0}

    def mixes(d):
        return {
            "alone": q(30.0 + d, 0.95),
            "mix 0.3": q(31.0 + d, 0.96),
            "mix 0.5": q(31.5 + d, 0.97),
            "mix 0.7": q(d, 0),
        }

    entries = {
        f"c/seed{s}": {
            "case": "c",
            "seed": s,
            "passes": q(31.0, 0.96),
            "variants": {"wide x2": mixes(d)},
            "seconds": {"wide x2": 20.0 + s},
        }
        for s, d in ((1, 0.1), (2, 0.3))
    }
    (tmp_path / "wiener_correlated_free.json").write_text(json.dumps(entries))
    (tmp_path / "wiener_correlated_free_other.json").write_text(
        json.dumps({"d/seed1": {**entries["c/seed1"], "case": "d"}})
    )
    lines = correlated_free.table(tmp_path).splitlines()
    assert len(lines) == 2 + 2
    assert lines[2] == (
        "| `c` | wide x2 | 1, 2 | 22 | -0.80 ± 0.14 / -0.0100 ± 0.0000 | +0.20 ± 0.14 / +0.0000 ± 0.0000 "
        "| +0.70 ± 0.14 / +0.0100 ± 0.0000 | -30.80 ± 0.14 / -0.9600 ± 0.0000 |"
    )
    assert lines[3].startswith("| `d` | wide x2 | 1 |")  # the other file of the same stem
    assert correlated_free.table(tmp_path / "absent") == ""


def test_the_protocol_summary_carries_the_table(tmp_path, monkeypatch):
    from benchmarks import protocol

    monkeypatch.setitem(protocol.SETS, "reporting", {"cases": (), "seeds": (1,)})
    monkeypatch.setitem(protocol.SETS, "tuning", {"cases": (), "seeds": (100,)})
    test_the_table_pairs_each_variant_with_the_passes_by_seed(tmp_path)
    summary = protocol.write_tables(tmp_path).read_text()
    assert "`python -m benchmarks.correlated_free`" in summary and correlated_free.table(tmp_path) in summary
