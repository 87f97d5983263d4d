import numpy as np
import pytest

from NSN2NDenoiseLib import InputError, normalization
from NSN2NDenoiseLib.normalization import NormalizedSlices, denormalize, fit_intensity_map, normalize


def test_normalize_maps_percentiles_and_inverts_exactly():
    rng = np.random.default_rng(0)
    vol = rng.normal(40.0, 300.0, (5, 16, 16)).astype(np.int16)
    imap = fit_intensity_map(vol, (0.5, 99.5))
    n = normalize(vol, imap)
    assert n.dtype == np.float32
    assert np.isclose(np.percentile(n, 0.5), 0.0, atol=1e-5) and np.isclose(np.percentile(n, 99.5), 1.0, atol=1e-5)
    assert n.min() < 0.0 and n.max() > 1.0  # no clipping
    back = denormalize(n, imap)
    assert back.dtype == np.float32
    assert np.allclose(back, vol, atol=1e-3 * 300)


def test_default_percentiles_and_affine_map():
    vol = np.arange(1000, dtype=np.float32).reshape(10, 10, 10)
    imap = fit_intensity_map(vol)
    low, high = np.percentile(vol, normalization.PERCENTILES)
    assert imap.offset == pytest.approx(low) and imap.scale == pytest.approx(high - low)
    assert np.allclose(normalize(vol, imap), (vol - low) / (high - low), atol=1e-6)
    assert np.allclose(denormalize(np.float32([0.0, 1.0]), imap), [low, high], atol=1e-3)


def test_normalize_does_not_modify_its_input():
    vol = np.linspace(-5, 5, 60, dtype=np.float32).reshape(3, 4, 5)
    before = vol.copy()
    imap = fit_intensity_map(vol)
    n = normalize(vol, imap)
    n_before = n.copy()
    back = denormalize(n, imap)
    assert np.array_equal(vol, before) and np.array_equal(n, n_before)
    assert not np.shares_memory(back, n) and not np.shares_memory(normalize(back, imap), back)
    assert denormalize(n.astype(np.float64), imap).dtype == np.float32
    assert normalize(vol.astype(np.int16), imap).dtype == np.float32


def test_mostly_constant_volume_uses_full_range():
    vol = np.zeros((4, 10, 10))
    vol[0, 0, 0] = 5.0
    imap = fit_intensity_map(vol)
    assert imap.scale == 5.0 and imap.offset == 0.0
    vol[0, 0, 0] = -5.0
    imap = fit_intensity_map(vol)
    assert imap.scale == 5.0 and imap.offset == -5.0


def test_constant_volume_is_refused():
    with pytest.raises(InputError, match="constant"):
        fit_intensity_map(np.full((3, 8, 8), 7.0))


def test_subsampled_percentiles_stay_close_to_the_exact_ones(monkeypatch):
    """Above MAX_SAMPLE_VOXELS the map is fit on every s-th slice: on a volume whose slices differ, the percentiles
    still land within a small fraction of the range of the exact ones."""
    rng = np.random.default_rng(1)
    vol = (rng.normal(0.0, 100.0, (40, 24, 24)) + np.linspace(-50, 50, 40).reshape(-1, 1, 1)).astype(np.float32)
    exact = fit_intensity_map(vol)
    calls = []
    real_percentile = np.percentile

    def spy(a, q, *args, **kwargs):
        calls.append(np.asarray(a).size)
        return real_percentile(a, q, *args, **kwargs)

    monkeypatch.setattr(normalization, "MAX_SAMPLE_VOXELS", vol.size // 4)
    monkeypatch.setattr(normalization.np, "percentile", spy)
    sampled = fit_intensity_map(vol)
    assert calls and calls[0] <= vol.size // 4, "the subsample must hold at most MAX_SAMPLE_VOXELS voxels"
    assert calls[0] >= vol.size // 8
    assert abs(sampled.offset - exact.offset) < 0.03 * exact.scale
    assert abs(sampled.scale - exact.scale) < 0.03 * exact.scale
    assert sampled != exact


def test_small_volume_uses_every_voxel(monkeypatch):
    vol = np.arange(64, dtype=np.float32).reshape(4, 4, 4)
    monkeypatch.setattr(normalization, "MAX_SAMPLE_VOXELS", vol.size)
    low, high = np.percentile(vol, normalization.PERCENTILES)
    imap = fit_intensity_map(vol)
    assert imap.offset == pytest.approx(low) and imap.scale == pytest.approx(high - low)


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_normalized_slices_are_slice_first_views(axis):
    rng = np.random.default_rng(2)
    vol = rng.normal(0.0, 10.0, (5, 6, 7)).astype(np.float32)
    imap = fit_intensity_map(vol)
    src = NormalizedSlices(vol, axis, imap)
    stack = np.moveaxis(vol, axis, 0)
    assert src.shape == stack.shape
    n = stack.shape[0]
    assert np.array_equal(src.slab(1, n - 1), normalize(stack[1 : n - 1], imap))
    assert src.slab(0, 2).dtype == np.float32
    idx = np.array([2, 0, 2])
    size = 3
    p = src.patch(idx, 1, 2, size)
    assert p.shape == (3, size, size) and p.dtype == np.float32
    assert np.array_equal(p, normalize(stack[idx, 1 : 1 + size, 2 : 2 + size], imap))
    assert np.shares_memory(src.stack, vol), "the volume must not be copied whole"
