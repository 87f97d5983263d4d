"""The method-noise check: structure in the residual input - output, with no clean reference."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import ndimage

from NSN2NDenoiseLib.phantom import psnr
from NSN2NDenoiseLib.residual_check import (
    THRESHOLD,
    blend_toward_input,
    blend_weight,
    local_structure,
    residual_structure,
)

CYLINDER_SLICES = range(5, 11)


@pytest.fixture(scope="module")
def cylinder_case(phantom_pair):
    """(clean with a bright cylinder in slices 5-10, its noisy version): a structure that runs across slices,
    holding more of the residual's energy than the 60 HU noise when a "denoiser" erases it."""
    clean, noisy = phantom_pair
    kk, jj, ii = np.meshgrid(*(np.arange(s) for s in clean.shape), indexing="ij")
    cylinder = ((jj - 32) ** 2 + (ii - 36) ** 2 <= 64) & (kk >= CYLINDER_SLICES[0]) & (kk <= CYLINDER_SLICES[-1])
    bright = clean + 400.0 * cylinder
    return bright.astype(np.float32), (noisy + 400.0 * cylinder).astype(np.float32)


def test_good_denoiser_scores_near_zero(phantom_pair):
    clean, noisy = phantom_pair
    check = residual_structure(noisy, clean)
    assert abs(check.score) < 0.15 and abs(check.interslice) < 0.1
    assert check.flagged == () and not check.warn
    assert len(check.per_slice) == len(check.interslice_per_slice) == len(check.edge_per_slice) == clean.shape[0]
    assert check.residual_rms == pytest.approx(60.0, rel=0.2)  # the 60 HU noise, in input units
    json.dumps(check.to_dict())


def test_erased_cylinder_is_flagged_on_its_slices(phantom_pair, cylinder_case):
    clean, _ = phantom_pair
    _, noisy = cylinder_case
    check = residual_structure(noisy, clean)  # the "denoiser" removed the noise and the cylinder
    assert set(check.flagged) == set(CYLINDER_SLICES)
    assert min(check.interslice_per_slice[k] for k in CYLINDER_SLICES) > THRESHOLD
    assert check.warn


def test_blurred_output_scores_high(phantom_pair):
    _, noisy = phantom_pair
    check = residual_structure(noisy, ndimage.gaussian_filter(noisy, (0, 3, 3)))
    assert check.score > 0.8 and check.edge > 0.5
    assert len(check.flagged) == noisy.shape[0]


def test_nothing_removed_scores_zero(phantom_pair):
    _, noisy = phantom_pair
    check = residual_structure(noisy, noisy.copy())
    assert check.score == 0.0 and check.flagged == () and check.residual_rms == 0.0


def test_blend_restores_removed_structure(phantom_pair, cylinder_case):
    clean, _ = phantom_pair
    bright, noisy = cylinder_case
    blended = blend_toward_input(noisy, clean)
    assert blended.volume.shape == noisy.shape and blended.volume.dtype == np.float32
    cyl = bright != clean
    before = np.abs(clean - bright)[cyl].mean()
    after = np.abs(blended.volume - bright)[cyl].mean()
    assert after < 0.6 * before  # more than 40 % of the erased cylinder is back
    assert psnr(bright, blended.volume, 1000.0) > psnr(bright, clean, 1000.0) + 3.0
    assert blended.changed_share < 0.3


def test_blend_leaves_a_good_result_almost_unchanged(phantom_pair):
    clean, noisy = phantom_pair
    blended = blend_toward_input(noisy, clean)
    assert blended.mean_weight < 0.05
    # 60 HU of noise in the input (24.4 dB): the blend brings back less than a fifth of its amplitude; the edge
    # term's local energy estimate on 4 px windows costs most of it (without it, less than a twentieth).
    noisy_db = psnr(clean, noisy, 1000.0)
    assert psnr(clean, blended.volume, 1000.0) > noisy_db + 15.0
    assert psnr(clean, blend_toward_input(noisy, clean, edge=False).volume, 1000.0) > noisy_db + 25.0


def test_local_structure_shape_and_range(phantom_pair):
    clean, noisy = phantom_pair
    rho = local_structure(noisy, clean)
    assert rho.shape == noisy.shape and rho.dtype == np.float32
    assert rho.min() >= -1.0 - 1e-5 and rho.max() <= 1.0 + 1e-5
    assert abs(float(rho.mean())) < 0.05


def test_blend_weight_dead_zone():
    w = blend_weight(np.array([-0.5, 0.1, 0.2, 0.6, 1.0]), dead_zone=0.2)
    np.testing.assert_allclose(w, [0.0, 0.0, 0.0, 0.5, 1.0])
    with pytest.raises(ValueError):
        blend_weight(np.zeros(3), dead_zone=1.0)


def test_shape_errors(phantom_pair):
    clean, noisy = phantom_pair
    with pytest.raises(ValueError):
        residual_structure(noisy, clean[:-1])
    with pytest.raises(ValueError):
        residual_structure(noisy[0], clean[0])
    with pytest.raises(ValueError):
        blend_toward_input(noisy, clean, structure=np.zeros((2, 2, 2), np.float32))


def test_local_edge_term_sees_blurring_and_only_adds(phantom_pair):
    _, noisy = phantom_pair
    blurred = ndimage.gaussian_filter(noisy, (0, 3, 3))
    plain = local_structure(noisy, blurred, edge=False)
    with_edge = local_structure(noisy, blurred, edge=True)
    assert np.all(with_edge >= plain - 1e-6)
    assert float(with_edge.mean()) > 0.5


def test_blend_in_place_equals_copy(phantom_pair, cylinder_case):
    clean, _ = phantom_pair
    _, noisy = cylinder_case
    copy = blend_toward_input(noisy, clean)
    output = clean.copy()
    in_place = blend_toward_input(noisy, output, out=output)
    assert in_place.volume is output
    np.testing.assert_array_equal(in_place.volume, copy.volume)
