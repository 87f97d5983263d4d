"""Statistical tests of the benchmark's noise simulators (benchmarks/noise.py) and a smoke test of its runner.

Tiny arrays and fixed seeds: each test asserts the stated standard deviation or correlation of one noise model,
with tolerances several standard errors wide.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import require

if importlib.util.find_spec("benchmarks") is None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import noise  # noqa: E402

SHAPE = (16, 64, 64)


def lag1(noise_field: np.ndarray, axis: int) -> float:
    """Correlation between the field and itself shifted by one voxel along ``axis``."""
    a = np.moveaxis(noise_field, axis, 0).astype(np.float64)
    x, y = a[:-1].ravel(), a[1:].ravel()
    return float(np.corrcoef(x, y)[0, 1])


def test_gaussian_iid_has_the_stated_std_and_no_correlation():
    clean = np.zeros(SHAPE, np.float32)
    n = noise.gaussian_iid(clean, 30.0, seed=1) - clean
    assert n.dtype == np.float32
    assert abs(n.std() / 30.0 - 1) < 0.02
    assert abs(n.mean()) < 0.5
    for axis in range(3):
        assert abs(lag1(n, axis)) < 0.03


def test_gaussian_is_repeatable_by_seed():
    clean = np.zeros(SHAPE, np.float32)
    assert np.array_equal(noise.gaussian_iid(clean, 1.0, 3), noise.gaussian_iid(clean, 1.0, 3))
    assert not np.array_equal(noise.gaussian_iid(clean, 1.0, 3), noise.gaussian_iid(clean, 1.0, 4))


def test_inplane_correlated_is_correlated_in_plane_only():
    clean = np.zeros(SHAPE, np.float32)
    n = noise.gaussian_inplane(clean, 30.0, inplane_px=1.5, seed=2)
    assert abs(n.std() / 30.0 - 1) < 0.03
    # A Gaussian kernel of sigma s gives lag-1 correlation exp(-1 / (4 s^2)) = 0.89 for s = 1.5.
    assert lag1(n, 1) > 0.8 and lag1(n, 2) > 0.8
    assert abs(lag1(n, 0)) < 0.05


def test_3d_correlated_is_correlated_between_slices():
    clean = np.zeros(SHAPE, np.float32)
    n = noise.gaussian_3d(clean, 30.0, inplane_px=1.5, slice_px=1.0, seed=3)
    assert abs(n.std() / 30.0 - 1) < 0.1  # fewer independent samples along K: wider tolerance
    assert lag1(n, 0) > 0.6  # exp(-1/4) = 0.78 for a 1-slice kernel


def test_correlated_noise_psd_matches_parseval_and_the_realisation():
    sigma = 2.0
    psd = noise.correlated_noise_psd(SHAPE, sigma, 1.5, 0.0)
    n_vox = np.prod(SHAPE)
    assert abs(psd.mean() / (sigma**2 * n_vox) - 1) < 1e-3
    n = noise.correlated_noise(SHAPE, sigma, 1.5, 0.0, seed=4)
    emp = noise.empirical_psd(n, smooth_px=2.0)
    low = psd > 0.1 * psd.max()  # compare where the spectrum carries power
    assert np.median(emp[low] / psd[low]) == pytest.approx(1.0, rel=0.15)
    assert abs(emp.mean() / (n.var() * n_vox) - 1) < 0.05


def test_white_psd_is_flat_with_the_variance():
    psd = noise.white_psd((2, 3, 4), 3.0)
    assert np.allclose(psd, 9.0 * 24)


def test_rician_background_bias_matches_theory():
    sigma = 10.0
    clean = np.zeros(SHAPE, np.float32)
    clean[:, :, 32:] = 100.0  # left half background (Rayleigh), right half bright (nearly Gaussian)
    n = noise.rician(clean, sigma, seed=5)
    assert n.min() >= 0
    background = n[:, :, :32]
    assert background.mean() == pytest.approx(sigma * np.sqrt(np.pi / 2), rel=0.02)
    assert background.std() == pytest.approx(sigma * np.sqrt(2 - np.pi / 2), rel=0.03)
    bright = n[:, :, 32:]
    assert bright.mean() == pytest.approx(float(noise.rician_mean(100.0, sigma)), rel=0.005)
    assert bright.std() == pytest.approx(sigma, rel=0.05)


def test_rician_mean_limits():
    sigma = 3.0
    assert float(noise.rician_mean(0.0, sigma)) == pytest.approx(sigma * np.sqrt(np.pi / 2))
    assert float(noise.rician_mean(300.0, sigma)) == pytest.approx(np.sqrt(300.0**2 + sigma**2), rel=1e-4)


def _head_phantom(k: int = 4, n: int = 48) -> np.ndarray:
    """Water disc (0 HU) with a bone ring (1000 HU) in air (-1000 HU), k identical slices."""
    yy, xx = np.mgrid[:n, :n] - (n - 1) / 2
    r = np.hypot(yy, xx)
    sl = np.full((n, n), -1000.0, np.float32)
    sl[r < 0.4 * n] = 1000.0
    sl[r < 0.35 * n] = 0.0
    return np.repeat(sl[None], k, axis=0)


def test_lowdose_ct_noise_scales_as_inverse_sqrt_i0_and_is_independent_between_slices():
    clean = _head_phantom()
    inside = np.zeros(clean.shape, bool)
    inside[:, 16:32, 16:32] = True  # the water centre
    stds = {}
    for i0 in (1e5, 1e4):
        n = noise.ct_lowdose_noise(clean, pixel_mm=1.0, i0=i0, seed=6, n_jobs=1, cache=False)
        assert n.shape == clean.shape and n.dtype == np.float32
        stds[i0] = n[inside].std()
        assert abs(n[inside].mean()) < 0.2 * stds[i0]
        if i0 == 1e4:
            a = n[:, 12:36, 12:36].reshape(n.shape[0], -1)
            c = np.corrcoef(a)
            assert np.max(np.abs(c[np.triu_indices(n.shape[0], 1)])) < 0.15
    assert stds[1e4] / stds[1e5] == pytest.approx(np.sqrt(10), rel=0.15)


def test_lowdose_ct_is_deterministic_and_independent_of_workers():
    clean = _head_phantom(k=2, n=32)
    a = noise.ct_lowdose_noise(clean, 1.0, 1e4, seed=7, n_jobs=1, cache=False)
    b = noise.ct_lowdose_noise(clean, 1.0, 1e4, seed=7, n_jobs=2, cache=False)
    assert np.array_equal(a, b)


@pytest.mark.slow
def test_benchmark_runner_smoke(tmp_path, monkeypatch):
    require("torch", "torch==2.13.0 first, see README")
    if importlib.util.find_spec("nibabel") is None:
        pytest.skip("nibabel (which ships the example4d volume) is not installed")
    from benchmarks import run

    monkeypatch.setattr(noise, "CACHE_DIR", tmp_path / "cache")
    out = tmp_path / "out"
    rc = run.main(
        [
            "--quick",
            "--datasets",
            "example4d",
            "--methods",
            "noisy,tv,nsn2n,ns_n2n_plain",
            "--nsn2n-variant",
            'nsn2n={"training": {"iterations": 10, "patch_size": 32, "batch_size": 2}}',
            "--out",
            str(out),
            "--no-figures",
        ]
    )
    assert rc == 0
    text = (out / "results.md").read_text()
    assert "TV 3D" in text and "NSN2N default" in text
    assert (out / "results.json").is_file()


@pytest.mark.parametrize("px", [0.75, 1.0, 1.5])
def test_the_tuning_kernels_give_the_lag1_correlation_they_are_named_for(px):
    """exp(-1 / (4 px^2)): 0.64, 0.78 and 0.89, the Wiener stage's gate lying at 0.75 between the first two."""
    from benchmarks import datasets

    assert {datasets.INPLANE_NARROW_PX, datasets.INPLANE_MID_PX, datasets.INPLANE_PX} == {0.75, 1.0, 1.5}
    n = noise.gaussian_inplane(np.zeros(SHAPE, np.float32), 30.0, inplane_px=px, seed=4)
    assert abs(lag1(n, 2) - np.exp(-1 / (4 * px**2))) < 0.03
