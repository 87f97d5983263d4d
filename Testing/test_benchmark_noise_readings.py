"""The noise readings of ``benchmarks.noise_readings`` (issue 15's evidence): their white-noise calibration."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

if importlib.util.find_spec("benchmarks") is None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import noise_readings  # noqa: E402


def test_cubic_mismatch_reads_white_noise_sigma_and_ignores_cubic_anatomy():
    rng = np.random.default_rng(0)
    k, j, i = np.meshgrid(np.arange(20.0), np.arange(30.0), np.arange(40.0), indexing="ij")
    smooth = 0.5 * k**3 - 2.0 * j**2 + 3.0 * i  # a cubic along each axis: interpolated exactly
    for axis in range(3):
        np.testing.assert_allclose(noise_readings.cubic_mismatch(smooth, axis), 0.0, atol=1e-6)
    noisy = smooth + rng.normal(0.0, 7.0, smooth.shape)
    for axis in range(3):
        d = noise_readings.cubic_mismatch(noisy, axis)
        assert d.shape == (16, 26, 36)
        sigma = noise_readings._mad_sigma(d.ravel()) / np.sqrt(noise_readings.CUBIC_VARIANCE)
        assert sigma == pytest.approx(7.0, rel=0.05)


def test_readings_of_a_white_noise_volume_match_its_sigma():
    from benchmarks import datasets

    rng = np.random.default_rng(1)
    clean = np.full((24, 40, 40), 100.0, dtype=np.float32)  # no anatomy: every reading is the noise
    noisy = (clean + rng.normal(0.0, 5.0, clean.shape)).astype(np.float32)
    mask = np.ones(clean.shape, dtype=bool)
    ds = datasets.Dataset("mri_gauss5", "t", clean, noisy, (1.0, 1.0, 1.0), "mri", mask, 300.0, "all", None, 5.0)
    r = noise_readings.readings(ds)
    assert r["true_sigma"] == 5.0
    assert r["k_cubic_over_true"] == pytest.approx(1.0, abs=0.08)
    assert r["k_over_inplane"] == pytest.approx(1.0, abs=0.08)
    assert r["j_cubic"] == pytest.approx(5.0, rel=0.08) and r["i_cubic"] == pytest.approx(5.0, rel=0.08)
    assert 0.4 < r["energy_p10_p50_w5"] < 0.8 < r["energy_p10_p50_w15"] < 1.0
