"""The white-noise SSIM-gap experiment (benchmarks/texture_gap.py): the flat-region error split recovers the shares
of noise and texture an estimate kept, the network-free estimate denoises, every variant is stored and scored (the
mixes being the averages they name), and the table pairs each variant with the engine by seed."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest

if importlib.util.find_spec("benchmarks") is None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


from benchmarks import texture_gap, wiener_grid  # noqa: E402


def test_the_error_split_recovers_the_noise_and_texture_kept():
    rng = np.random.default_rng(0)
    clean = rng.normal(0, 5, (12, 16, 16)).astype(np.float32)
    noise = rng.normal(0, 10, clean.shape).astype(np.float32)
    hp = clean - texture_gap.ndimage.uniform_filter(clean, texture_gap.TEXTURE_BOX)
    other = rng.normal(0, 1, clean.shape).astype(np.float32)
    estimate = clean + 0.2 * noise - 0.6 * hp + other
    region = np.ones(clean.shape, bool)
    got = texture_gap.split_error(estimate, clean, clean + noise, region)
    assert got["noise_kept"] == pytest.approx(0.2, abs=0.01)
    assert got["texture_kept"] == pytest.approx(-0.6, abs=0.03)
    assert got["other_mse"] == pytest.approx(1.0, rel=0.1)
    assert got["mse"] == pytest.approx(float(np.mean((estimate - clean) ** 2)))
    half = region.copy()
    half[6:] = False  # only the region counts
    assert texture_gap.split_error(
        np.where(half, estimate, clean + noise), clean, clean + noise, half
    ) == pytest.approx(texture_gap.split_error(estimate[:6], clean[:6], (clean + noise)[:6], region[:6]), rel=0.05)


def test_bm_like_is_the_first_network_free_estimate_ht_pilots_hard_threshold_then_a_wiener_pass(
    noisy_case,
):
    from benchmarks import ht_pilot
    from NSN2NDenoiseLib import block_matching as bm
    from NSN2NDenoiseLib.noise_estimates import body_sigma

    clean, noisy, _ = noisy_case
    v = np.full((4, 4, 4), 100.0, np.float32)
    first = ht_pilot.hard_threshold(noisy, noisy, v, 2.7).astype(np.float32)  # the benchmark's own entry point
    bm.matched_into(noisy, first, v)
    got = texture_gap.bm_like(noisy, 10.0)
    np.testing.assert_allclose(got, first, atol=2e-3)
    assert not np.allclose(got, bm.network_free(noisy, 10.0), atol=1e-2)  # the engine's estimate has moved on
    assert texture_gap.body_sigma(noisy) == body_sigma(noisy)


def test_the_network_free_estimate_denoises_and_its_mixes_are_stored(noisy_case, toy_case, tmp_path, monkeypatch):
    clean, noisy, pilot = noisy_case
    sigma = 10.0
    b = texture_gap.bm_like(noisy, sigma)
    assert b.dtype == np.float32 and b.shape == noisy.shape
    assert np.mean((b - clean) ** 2) < 0.3 * np.mean((noisy - clean) ** 2)
    case = toy_case
    monkeypatch.setattr(texture_gap, "OUT", tmp_path / "wiener_texture.json")
    monkeypatch.setattr(texture_gap.baselines, "estimated_sigma", lambda x: sigma)
    stored = texture_gap.run(["toy"], (7,))
    entry = stored["toy/seed7"]
    assert entry["noise_class"] == "white" and entry["sigma_estimated"] == sigma
    assert entry["network_alone_psnr"] == pytest.approx(case.psnr(pilot)) and entry["stored_network_alone_psnr"] is None
    assert list(entry["variants"]) == ["engine", "bm-like", "mix 0.3", "mix 0.5", "mix 0.7"]
    assert entry["true_sigma"] == 10.0
    from NSN2NDenoiseLib import block_matching

    eng = pilot.copy()
    block_matching.passes_into(noisy, eng, block_matching.MATCHED_WHITE)
    assert entry["variants"]["engine"]["psnr"] == pytest.approx(case.psnr(eng))
    assert entry["variants"]["bm-like"]["psnr"] == pytest.approx(case.psnr(b))
    assert entry["variants"]["mix 0.3"]["psnr"] == pytest.approx(case.psnr(0.7 * eng + 0.3 * b))
    assert entry["variants"]["mix 0.7"]["psnr"] == pytest.approx(case.psnr(0.3 * eng + 0.7 * b))
    assert set(entry["flat_error"]) == {"network alone", "engine", "bm-like"}
    assert json.loads((tmp_path / "wiener_texture.json").read_text()) == json.loads(json.dumps(stored, default=float))
    case.info["noise_sigma"] = 12.0
    both = texture_gap.run(["toy"], (7,), source="pairs")
    assert both["toy/seed7"] == entry and both["toy/seed7/pairs"]["sigma_estimated"] == 12.0
    assert both["toy/seed7/pairs"]["sigma_source"] == "pairs" and entry["sigma_source"] == "wavelet"
    monkeypatch.setattr(wiener_grid, "_case", lambda name, seed: pytest.fail("a stored entry is measured again"))
    assert texture_gap.run(["toy"], (7,), source="pairs") == both


def test_the_table_pairs_each_variant_with_the_engine_by_seed(tmp_path):
    def q(psnr, ssim):
        return {"psnr": psnr, "ssim": ssim, "ssim_flat": ssim - 0.05, "mse_flat": 90.0}

    split = {"noise_kept": 0.1, "texture_kept": -0.5, "other_mse": 40.0, "mse": 60.0}
    entries = {}
    for seed, d in ((1, 0.1), (2, 0.3)):
        entries[f"c/seed{seed}"] = {
            "case": "c",
            "seed": seed,
            "variants": {"engine": q(31.0 + d, 0.97), "mix 0.5": q(31.0 + 2 * d, 0.972)},
            "flat_error": {"engine": split, "bm-like": {**split, "texture_kept": -0.4}},
        }
    entries["c/seed1"]["variants"]["BM4D"] = q(30.0, 0.975)
    (tmp_path / "wiener_texture.json").write_text(json.dumps(entries))
    row = texture_gap.table(tmp_path).splitlines()[-1]
    assert row.startswith(
        "| `c`, wavelet noise level | 1, 2 | 31.20 ± 0.14 / 0.9700 | not run | not run "
        "| +0.20 ± 0.14 / +0.0020 ± 0.0000 |"
    )
    assert "| -1.10 ± 0.00 / +0.0050 ± 0.0000 (1 seed) | not run |" in row  # BM4D at seed 1 only
    assert row.endswith("| 0.10, -0.50, 40 / 0.10, -0.40, 40 |")
    assert texture_gap.table(tmp_path / "absent") == ""


def test_the_protocol_summary_carries_the_experiment_table(tmp_path, monkeypatch):
    from benchmarks import protocol

    monkeypatch.setitem(protocol.SETS, "reporting", {"cases": (), "seeds": (1,)})
    monkeypatch.setitem(protocol.SETS, "tuning", {"cases": (), "seeds": (100,)})
    test_the_table_pairs_each_variant_with_the_engine_by_seed(tmp_path)
    summary = protocol.write_tables(tmp_path).read_text()
    assert "`python -m benchmarks.texture_gap`" in summary and texture_gap.table(tmp_path) in summary


def test_the_noise_level_comes_from_the_source_named_and_keys_the_entry(monkeypatch):
    monkeypatch.setattr(texture_gap.baselines, "estimated_sigma", lambda x: 3.5)
    x = np.zeros((4, 4, 4), np.float32)
    assert texture_gap.noise_level("wavelet", x, {"noise_sigma": 9.0}) == 3.5
    assert texture_gap.noise_level("pairs", x, {"noise_sigma": 9.0}) == 9.0
    assert texture_gap.noise_level("true", x, {}, true=7.0) == 7.0
    monkeypatch.setattr(texture_gap, "body_sigma", lambda v: 4.5 if v is x else pytest.fail("not the input"))
    assert texture_gap.noise_level("body", x, {}) == 4.5
    with pytest.raises(ValueError, match="wavelet, pairs, body, true"):
        texture_gap.noise_level("true", x, {})  # no true level to give
    with pytest.raises(ValueError, match="unknown noise level source 'mad'"):
        texture_gap.noise_level("mad", x, {}, true=7.0)
    assert texture_gap.entry_key("c", 7, "wavelet") == "c/seed7"
    assert texture_gap.entry_key("c", 7, "pairs") == "c/seed7/pairs"
