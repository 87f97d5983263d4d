import numpy as np
import pytest
import torch

from NSN2NDenoiseLib.config import WeightConfig
from NSN2NDenoiseLib.weights import (
    box_mean,
    compute_three_slice_maps,
    compute_weight_maps,
    gaussian_blur,
    interpolation_offset,
    median_filter,
)


def _pair_with_extra_structure(noise: float = 0.01, seed: int = 0) -> tuple[torch.Tensor, np.ndarray]:
    """Two slices of the same body (a bright disc) with independent noise; a square appears in slice 1 only."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:64, :64]
    body = ((yy - 32) ** 2 + (xx - 32) ** 2 <= 28**2) * 0.5
    a = body + noise * rng.standard_normal(body.shape)
    b = body + noise * rng.standard_normal(body.shape)
    extra = np.zeros_like(body, dtype=bool)
    extra[24:34, 30:40] = True
    b[extra] += 0.3
    slices = torch.from_numpy(np.stack([a, b, b + noise * rng.standard_normal(body.shape)])).float()
    return slices, extra


@pytest.mark.parametrize(
    "cfg",
    [
        WeightConfig(),
        WeightConfig(energy_test=False),
        WeightConfig(lowpass="none"),
        WeightConfig(lowpass="gaussian_median", adaptive_tau=False),
    ],
)
def test_weight_is_one_where_slices_match_and_zero_where_structure_differs(cfg):
    slices, extra = _pair_with_extra_structure()
    w = compute_weight_maps(slices, cfg).maps[0].numpy()
    assert np.all(w[extra] == 0), "the square present in one slice only must be masked"
    far = np.ones_like(extra)
    far[18:48, 16:54] = False  # away from the square and its filter footprint
    inside_body = far & (np.hypot(*np.mgrid[-32:32, -32:32]) < 26)
    assert w[inside_body].mean() > 0.9, "matching body must mostly count as matched"


def test_soft_weights_lie_in_unit_interval_and_are_low_on_mismatch():
    slices, extra = _pair_with_extra_structure()
    w = compute_weight_maps(slices, WeightConfig(soft=True)).maps[0].numpy()
    assert w.min() >= 0.0 and w.max() <= 1.0
    assert w[extra].mean() < 0.05


def test_matched_fraction_reported():
    slices, _ = _pair_with_extra_structure()
    maps = compute_weight_maps(slices, WeightConfig())
    assert maps.maps.shape == (2, 64, 64)
    assert len(maps.matched_per_pair) == 2
    assert 0.5 < maps.matched_fraction < 1.0
    assert maps.matched_per_pair[0] < 1.0


def test_filters_keep_constants_and_remove_outliers():
    img = torch.full((2, 20, 20), 3.0)
    assert torch.allclose(gaussian_blur(img, 2.0), img)
    assert torch.allclose(box_mean(img, 5), img)
    img[0, 10, 10] = 100.0
    assert median_filter(img, 5)[0, 10, 10] == 3.0


def test_three_slice_maps_accept_linear_change_that_pairs_reject():
    """In a body that matches, a bar whose intensity rises linearly along the slice axis: each neighbour differs
    from the middle slice, but their mean equals it."""
    rng = np.random.default_rng(1)
    yy, xx = np.mgrid[:48, :48]
    base = np.repeat((((yy - 24) ** 2 + (xx - 24) ** 2) <= 23**2)[None] * 0.4, 3, axis=0)
    for k, level in enumerate((0.6, 0.9, 1.2)):
        base[k, 20:28, 8:40] = level
    slices = torch.from_numpy(base + 0.005 * rng.standard_normal(base.shape)).float()
    cfg = WeightConfig()
    pair = compute_weight_maps(slices, cfg).maps[0].numpy()
    triple = compute_three_slice_maps(slices, cfg).maps
    assert triple.shape == (1, 48, 48)
    bar = np.zeros((48, 48), dtype=bool)
    bar[21:27, 10:38] = True
    assert pair[bar].mean() < 0.1
    assert triple[0].numpy()[bar].mean() > 0.9


def cubic_offset(x: torch.Tensor) -> torch.Tensor:
    return interpolation_offset(x, 4)


@pytest.mark.parametrize("power", [1, 2, 3])
def test_cubic_target_is_exact_for_cubic_change_along_the_slices(power):
    """(x_i-1 + x_i+1) / 2 - cubic_offset = the cubic interpolation: it equals x_i for intensity changing as a
    polynomial of degree <= 3 along the slice axis, on every slice with two neighbours on each side; the 3-slice
    mean alone is off by half the second difference."""
    z = torch.arange(9, dtype=torch.float32).view(9, 1, 1).expand(9, 4, 4)
    x = (z / 4.0) ** power
    target = 0.5 * (x[:-2] + x[2:]) - cubic_offset(x)
    inner = slice(1, -1)  # slices 2 .. N-3: both i-2 and i+2 exist
    assert torch.allclose(target[inner], x[1:-1][inner], atol=1e-5)
    mean_error = (0.5 * (x[:-2] + x[2:]) - x[1:-1])[inner].abs().max()
    assert (power == 1) == bool(mean_error < 1e-5)
    # First and last inner slices: no slice two away on one side, the offset is zero (the 3-slice mean).
    assert torch.equal(cubic_offset(x)[0], torch.zeros(4, 4)) and torch.equal(cubic_offset(x)[-1], torch.zeros(4, 4))


@pytest.mark.parametrize("power", [2, 4, 5])
def test_quintic_target_is_exact_to_degree_five_and_falls_back_near_the_ends(power):
    z = torch.arange(11, dtype=torch.float32).view(11, 1, 1).expand(11, 3, 3)
    x = (z / 5.0) ** power
    offset = interpolation_offset(x, 6)
    target = 0.5 * (x[:-2] + x[2:]) - offset
    error = (target - x[1:-1])[:, 0, 0]
    assert error[2:-2].abs().max() < 1e-5  # slices 3 .. N-4: three neighbours on each side
    assert torch.allclose(offset[1], cubic_offset(x)[1]) and torch.allclose(offset[-2], cubic_offset(x)[-2])
    assert torch.equal(offset[0], torch.zeros(3, 3))


def test_cubic_maps_accept_curved_change_that_three_slice_maps_reject():
    """A bar whose intensity follows a parabola along the slices: the 3-slice mean misses it, the cubic
    interpolation does not."""
    rng = np.random.default_rng(2)
    yy, xx = np.mgrid[:48, :48]
    base = np.repeat((((yy - 24) ** 2 + (xx - 24) ** 2) <= 23**2)[None] * 0.4, 5, axis=0)
    for k in range(5):
        base[k, 20:28, 8:40] = 0.4 + 0.15 * (k - 2) ** 2
    slices = torch.from_numpy(base + 0.005 * rng.standard_normal(base.shape)).float()
    cfg = WeightConfig()
    bar = np.zeros((48, 48), dtype=bool)
    bar[21:27, 10:38] = True
    mean_maps = compute_three_slice_maps(slices, cfg).maps[1].numpy()
    cubic_maps = compute_three_slice_maps(slices, cfg, cubic_offset(slices)).maps[1].numpy()
    assert mean_maps[bar].mean() < 0.1
    assert cubic_maps[bar].mean() > 0.9
