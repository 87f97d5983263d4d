import numpy as np
import pytest
import torch
from scipy import ndimage

from NSN2NDenoiseLib.noise_estimates import (
    BODY_SLAB,
    BODY_SLICES,
    MAX_PAIRS,
    _body_slabs,
    body_sigma,
    estimate_noise,
    interslice_correlation,
    noise_sigma,
    sample_pairs,
)
from NSN2NDenoiseLib.normalization import IntensityMap, NormalizedSlices


def test_sample_pairs_takes_all_or_evenly_spaced_pairs():
    assert sample_pairs(3) == [0, 1]
    assert sample_pairs(MAX_PAIRS + 1) == list(range(MAX_PAIRS))
    many = sample_pairs(600)
    assert len(many) == MAX_PAIRS and many[0] == 0 and many[-1] == 598
    assert many == sorted(set(many))
    gaps = np.diff(many)
    assert gaps.max() - gaps.min() <= 1
    assert sample_pairs(10, max_pairs=3) == [0, 4, 8]


def _body(n=6, size=48):
    yy, xx = np.mgrid[:size, :size]
    disc = (((yy - size / 2) ** 2 + (xx - size / 2) ** 2) <= (0.4 * size) ** 2) * 0.5
    smooth = 0.1 * np.sin(yy / 6.0) * np.cos(xx / 7.0) * disc
    return np.repeat((disc + smooth)[None], n, axis=0)


@pytest.mark.parametrize("sigma", [0.01, 0.05])
def test_noise_sigma_of_independent_noise(sigma):
    rng = np.random.default_rng(0)
    vol = _body() + sigma * rng.standard_normal((6, 48, 48))
    x = torch.from_numpy(vol.astype(np.float32))
    assert noise_sigma(x[:-1], x[1:]) == pytest.approx(sigma, rel=0.15)


def test_noise_sigma_ignores_anatomy_that_changes_in_a_few_pixels():
    rng = np.random.default_rng(1)
    vol = _body() + 0.02 * rng.standard_normal((6, 48, 48))
    vol[1::2, 20:26, 20:26] += 0.5
    x = torch.from_numpy(vol.astype(np.float32))
    assert noise_sigma(x[:-1], x[1:]) == pytest.approx(0.02, rel=0.2)


def test_interslice_correlation_tells_correlated_noise_apart():
    rng = np.random.default_rng(2)
    white = rng.standard_normal((8, 48, 48))
    clean = _body(8)
    values = {}
    for name, noise in (
        ("independent", white),
        ("across", ndimage.gaussian_filter(white, (1.5, 0.0, 0.0))),
        ("same", np.repeat(white[:1], 8, axis=0)),
    ):
        x = torch.from_numpy((clean + 0.03 * noise / noise.std()).astype(np.float32))
        values[name] = interslice_correlation(x[:-1], x[1:])
    assert abs(values["independent"]) < 0.2
    assert values["across"] > 0.5
    assert values["same"] > 0.95


def test_estimate_noise_reads_the_sampled_pairs_of_the_source():
    rng = np.random.default_rng(3)
    vol = (_body(5) + 0.03 * rng.standard_normal((5, 48, 48))).astype(np.float32)
    units = vol * 1000.0 - 200.0
    sigma, corr = estimate_noise(NormalizedSlices(units, 0, IntensityMap(-200.0, 1000.0)), torch.device("cpu"))
    x = torch.from_numpy(vol)
    assert sigma == pytest.approx(noise_sigma(x[:-1], x[1:]), rel=1e-4)
    assert corr == pytest.approx(interslice_correlation(x[:-1], x[1:]), abs=1e-4)
    moved = np.ascontiguousarray(np.moveaxis(units, 0, 2))
    again = estimate_noise(NormalizedSlices(moved, 2, IntensityMap(-200.0, 1000.0)), torch.device("cpu"))
    assert again == pytest.approx((sigma, corr), rel=1e-5)


def test_inplane_lag1_tells_white_noise_from_inplane_correlated_noise_along_each_axis():
    from NSN2NDenoiseLib.noise_estimates import inplane_noise_lag1

    rng = np.random.default_rng(4)
    white = rng.standard_normal((8, 48, 48))
    clean = _body(8)
    rows_only = ndimage.gaussian_filter(white, (0.0, 1.0, 0.0))  # correlated along rows (axis 1) only
    both = ndimage.gaussian_filter(white, (0.0, 1.0, 1.0))
    values = {}
    for name, noise in (("white", white), ("rows", rows_only), ("both", both)):
        x = torch.from_numpy((clean + 0.03 * noise / noise.std()).astype(np.float32))
        values[name] = inplane_noise_lag1(x[:-1], x[1:])
    assert max(abs(v) for v in values["white"]) < 0.08
    assert values["rows"][0] > 0.5 and abs(values["rows"][1]) < 0.08  # (along rows, along columns)
    assert min(values["both"]) > 0.5


def test_estimate_inplane_lag1_reads_the_sampled_pairs_in_the_slice_axis_frame():
    from NSN2NDenoiseLib.noise_estimates import estimate_inplane_lag1, inplane_noise_lag1

    rng = np.random.default_rng(5)
    noise = ndimage.gaussian_filter(rng.standard_normal((6, 48, 48)), (0.0, 1.0, 0.0))
    vol = (_body(6) + 0.03 * noise / noise.std()).astype(np.float32)
    x = torch.from_numpy(vol)
    direct = inplane_noise_lag1(x[:-1], x[1:])
    got = estimate_inplane_lag1(NormalizedSlices(vol * 10.0 + 3.0, 0, IntensityMap(3.0, 10.0)), torch.device("cpu"))
    assert got == pytest.approx(direct, abs=1e-4)
    moved = np.ascontiguousarray(np.moveaxis(vol, 0, 1))  # slice axis J: rows and columns stay the same axes
    again = estimate_inplane_lag1(NormalizedSlices(moved, 1, IntensityMap(0.0, 1.0)), torch.device("cpu"))
    assert again == pytest.approx(direct, abs=1e-4)


def test_low_pass_gradient_sees_edges_along_rows_and_columns():
    from NSN2NDenoiseLib.noise_estimates import low_pass_gradient

    step = torch.zeros(1, 6, 6)
    step[:, 3:, :] = 2.0  # an edge between rows 2 and 3
    g = low_pass_gradient(step)
    assert g[0, 3].tolist() == [2.0] * 6 and float(g.sum()) == 12.0
    g = low_pass_gradient(step.transpose(1, 2).contiguous())  # the same edge between columns 2 and 3
    assert g[0, :, 3].tolist() == [2.0] * 6 and float(g.sum()) == 12.0
    both = low_pass_gradient(step + step.transpose(1, 2))
    assert float(both[0, 3, 3]) == 4.0 and float(both[0, 3, 0]) == 2.0 and float(both[0, 0, 3]) == 2.0


def test_lag1_counts_only_pairs_inside_the_mask_and_is_a_pearson_correlation():
    from NSN2NDenoiseLib.noise_estimates import _lag1

    rng = np.random.default_rng(6)
    x = torch.from_numpy(rng.standard_normal((4, 32, 32)).astype(np.float32))
    keep = torch.zeros(4, 32, 32, dtype=torch.bool)
    keep[:, :, 16:] = True
    outside = x.clone()
    outside[:, :, :16] = 1000.0 * torch.arange(16.0)  # a huge ramp where the mask is off, next to the kept part
    white = _lag1(x, keep, 2)
    assert abs(white) < 0.1
    assert _lag1(outside, keep, 2) == pytest.approx(white, abs=1e-6)  # the pair across the border is not counted
    assert _lag1(x + 5.0, keep, 2) == pytest.approx(white, abs=1e-5)  # offsets do not matter
    smooth = torch.from_numpy(ndimage.gaussian_filter(rng.standard_normal((4, 32, 32)), (0, 0, 2.0)).astype(np.float32))
    assert _lag1(1e-3 * smooth, keep, 2) > 0.8  # small amplitudes are correlated all the same
    assert _lag1(torch.ones(4, 32, 32), keep, 2) == 0.0  # constant: no correlation to measure
    assert _lag1(x, torch.zeros_like(keep), 2) == 0.0  # no pair
    two = torch.tensor([[[0.0, 1.0, 3.0]]])
    assert _lag1(two, torch.ones_like(two, dtype=torch.bool), 2) == pytest.approx(1.0)  # two pairs are enough


def test_inplane_lag1_reads_the_body_only_and_zero_without_one():
    from NSN2NDenoiseLib.noise_estimates import inplane_noise_lag1

    rng = np.random.default_rng(8)
    body = _body(8)
    white = 0.02 * rng.standard_normal(body.shape)
    smooth = ndimage.gaussian_filter(rng.standard_normal(body.shape), (0, 2.0, 2.0))
    outside = np.where(body > 0, 0.0, 0.02 * smooth / smooth.std())  # correlated noise outside the body only
    x = torch.from_numpy((body + np.where(body > 0, white, 0.0) + outside).astype(np.float32))
    assert max(abs(v) for v in inplane_noise_lag1(x[:-1], x[1:])) < 0.1
    empty = torch.zeros(3, 16, 16)
    assert inplane_noise_lag1(empty[:-1], empty[1:]) == (0.0, 0.0)


def test_sampled_pairs_of_a_long_stack_are_integer_indices():
    from NSN2NDenoiseLib.noise_estimates import sample_pairs

    idx = sample_pairs(400)
    assert len(idx) == 32 and all(type(i) is int for i in idx) and idx[0] == 0 and idx[-1] == 398


def _head_with_bone(n_k=24, size=64, seed=3, sigma=10.0):
    """A head in a dark background (half the volume) with bone shells whose edges curve along every axis, and
    Rician noise of ``sigma``: (clean, noisy) float32, (K, J, I)."""
    rng = np.random.default_rng(seed)
    k, j, i = np.meshgrid(np.arange(n_k), np.arange(size), np.arange(size), indexing="ij")
    inside = ((j - size / 2) ** 2 + (i - size / 2) ** 2) < (0.375 * size) ** 2
    clean = np.where(inside, 400.0 + 30.0 * np.sin(j / 9.0) + 20.0 * np.cos(i / 7.0 + k / 5.0), 0.0)
    for c in ((8, 22, 20), (16, 40, 42), (6, 44, 26), (18, 24, 40), (12, 32, 32), (4, 30, 46), (20, 46, 30)):
        r2 = (k - c[0] % n_k) ** 2 + (j - c[1]) ** 2 + (i - c[2]) ** 2
        clean[(r2 > 16) & (r2 < 49)] += 1000.0
    noisy = np.abs(clean + rng.normal(0, sigma, clean.shape) + 1j * rng.normal(0, sigma, clean.shape))
    return clean.astype(np.float32), noisy.astype(np.float32)


def test_the_body_noise_level_reads_rician_noise_inside_the_body_past_a_dark_background_and_sharp_edges():
    from skimage.restoration import estimate_sigma

    _, noisy = _head_with_bone()
    got = body_sigma(noisy)
    assert got == pytest.approx(10.0, rel=0.04)  # read over the whole body, the shells' edges give 11.3
    assert estimate_sigma(noisy) < 9.0  # the whole-volume wavelet estimate reads low (the background)
    assert body_sigma(noisy + 1000.0) == pytest.approx(got, rel=1e-3)  # an offset changes nothing
    assert body_sigma(2.0 * noisy) == pytest.approx(2.0 * got, rel=1e-4)  # in the volume's units
    assert body_sigma(noisy[:, :-1, 1:]) == pytest.approx(got, rel=0.03)
    odd = noisy[:23, :51, :]  # odd extents: the last slice, row and column are left out, whatever the others
    assert body_sigma(odd) == body_sigma(np.ascontiguousarray(odd[:22, :50, :64]))
    assert body_sigma(noisy[:2]) == pytest.approx(10.0, rel=0.15)  # two slices are enough for 2 x 2 x 2 cubes
    assert body_sigma(noisy.astype(np.int16)) == pytest.approx(got, rel=0.03)


def test_the_body_noise_level_of_a_long_volume_reads_evenly_spaced_even_slabs():
    assert _body_slabs(BODY_SLICES) == [(0, BODY_SLICES)] and _body_slabs(7) == [(0, 7)]
    slabs = _body_slabs(600)
    assert len(slabs) == BODY_SLICES // BODY_SLAB == 6 and BODY_SLAB == 8
    assert slabs == [(0, 8), (118, 126), (236, 244), (354, 362), (474, 482), (592, 600)]  # 118.4 apart, even
    assert all(b - a == BODY_SLAB and a % 2 == 0 for a, b in slabs)
    gaps = np.diff([a for a, _ in slabs])
    assert gaps.max() - gaps.min() <= 2
    _, noisy = _head_with_bone(n_k=100, seed=4)
    got = body_sigma(noisy)
    assert got == pytest.approx(10.0, rel=0.05)
    skipped = noisy.copy()
    outside = np.ones(100, bool)
    for a, b in _body_slabs(100):
        outside[a:b] = False
    skipped[outside] = 0.0  # the slices between the slabs are never read
    assert body_sigma(skipped) == got


def test_the_body_noise_level_is_zero_where_it_cannot_be_read_and_finite_on_a_constant_volume():
    assert body_sigma(np.ones((1, 16, 16), np.float32)) == 0.0
    assert body_sigma(np.ones((8, 16, 1), np.float32)) == 0.0
    assert body_sigma(np.full((6, 16, 16), 5.0, np.float32)) == 0.0
    rng = np.random.default_rng(0)
    white = rng.normal(0, 3.0, (8, 20, 20)).astype(np.float32)  # no body brighter than a background: all of it
    assert body_sigma(white) == pytest.approx(3.0, rel=0.15)


def test_the_body_noise_level_is_the_median_haar_detail_over_the_flat_body_cube_by_cube():
    """A reference that visits every 2 x 2 x 2 cube in turn: body (Otsu's threshold of the in-plane smoothed input,
    read on every other row and column), flattest half by the smoothed gradient, checkerboard sums."""
    import SimpleITK as sitk

    _, noisy = _head_with_bone(n_k=8, size=24, seed=5)
    v = noisy.astype(np.float64)
    low = ndimage.gaussian_filter(noisy, (0, 2, 2))
    otsu = sitk.OtsuThresholdImageFilter()
    otsu.SetNumberOfHistogramBins(256)
    otsu.Execute(sitk.GetImageFromArray(np.ascontiguousarray(low[:, ::2, ::2])))
    body = low > otsu.GetThreshold()
    grad = ndimage.gaussian_gradient_magnitude(noisy, (0.5, 2, 2))
    flat = body & (grad <= np.quantile(grad[body], 0.5))
    details = []
    for k in range(0, 8, 2):
        for j in range(0, 24, 2):
            for i in range(0, 24, 2):
                if flat[k, j, i]:
                    cube = v[k : k + 2, j : j + 2, i : i + 2]
                    signs = np.array([[[1, -1], [-1, 1]], [[-1, 1], [1, -1]]])
                    details.append(abs((cube * signs).sum()) / np.sqrt(8.0))
    assert len(details) > 50
    assert body_sigma(noisy) == pytest.approx(1.4826 * np.median(details), rel=1e-5)


def test_the_body_noise_level_of_a_volume_too_small_for_a_flat_cube_reads_every_cube():
    rng = np.random.default_rng(1)
    readings = [body_sigma(rng.normal(100.0, 5.0, (2, 2, 4)).astype(np.float32)) for _ in range(20)]
    assert all(np.isfinite(r) and r > 0 for r in readings)
