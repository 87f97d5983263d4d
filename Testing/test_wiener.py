"""The Wiener stage (NSN2NDenoiseLib/wiener.py): the transform, the filter against an independent reference, the
noise spectrum, streaming, cancellation, and its place in a run."""

import numpy as np
import pytest
import scipy.fft
import torch
import torch.nn.functional as F
from conftest import smooth_volume

from NSN2NDenoiseLib import denoise, make_config, wiener
from NSN2NDenoiseLib.errors import CancelledError
from NSN2NDenoiseLib.inference import WHITE_LAG1


def noisy_and_pilot(shape):
    """(noisy, pilot) of a smooth volume of ``shape``: the input with Gaussian noise of 15 units and a pilot within 3
    units of the clean volume, float32."""
    clean, rng = smooth_volume(shape)
    noisy = clean + rng.normal(0, 15, clean.shape).astype(np.float32)
    pilot = clean + rng.normal(0, 3, clean.shape).astype(np.float32)
    return noisy, pilot


def reference_wiener(noisy, pilot, variance, share=1.0, block=8, s=3):
    """Every block, one at a time, with scipy's DCT: blocks of ``block`` every ``s`` from 0 along K plus one at
    K - bk; in-plane the volume mirrored by b - 1 (and what makes whole steps) and blocks every ``s``."""
    b = [min(block, n) for n in noisy.shape]
    pads = [(bb - 1, bb - 1 + next(e for e in range(s) if (n + 2 * (bb - 1) + e - bb) % s == 0))
            for n, bb in zip(noisy.shape[1:], b[1:], strict=True)]  # fmt: skip
    x = np.pad(noisy.astype(np.float64), [(0, 0), *pads], mode="reflect")
    p = np.pad(pilot.astype(np.float64), [(0, 0), *pads], mode="reflect")
    num = np.zeros_like(x)
    den = np.zeros_like(x)
    ks = list(range(0, noisy.shape[0] - b[0] + 1, s))
    if ks[-1] != noisy.shape[0] - b[0]:
        ks.append(noisy.shape[0] - b[0])
    for k in ks:
        for j in range(0, x.shape[1] - b[1] + 1, s):
            for i in range(0, x.shape[2] - b[2] + 1, s):
                blk = (slice(k, k + b[0]), slice(j, j + b[1]), slice(i, i + b[2]))
                xc = scipy.fft.dctn(x[blk], norm="ortho")
                pc = scipy.fft.dctn(p[blk], norm="ortho")
                w = pc**2 / (pc**2 + variance)
                weight = 1.0 / max((w**2).sum(), 1e-12)
                num[blk] += weight * scipy.fft.idctn(w * xc, norm="ortho")
                den[blk] += weight
    est = (num / den)[:, pads[0][0] : pads[0][0] + noisy.shape[1], pads[1][0] : pads[1][0] + noisy.shape[2]]
    return pilot + share * (est - pilot)


def test_the_dct_matrix_is_orthonormal_and_is_scipys_dct():
    for n in (3, 4, 8):
        d = wiener.dct_matrix(n).double().numpy()
        assert np.allclose(d @ d.T, np.eye(n), atol=1e-6)
        v = np.random.default_rng(n).normal(size=n)
        assert np.allclose(d @ v, scipy.fft.dct(v, norm="ortho"), atol=1e-5)


def test_the_3d_transform_is_scipys_dctn_along_k_j_and_i_and_inverts():
    rng = np.random.default_rng(1)
    blocks = rng.normal(size=(2, 3, 4, 8, 5)).astype(np.float32)
    d = [wiener.dct_matrix(n) for n in (4, 8, 5)]
    c = wiener._transform(torch.from_numpy(blocks), *d).numpy()
    assert np.allclose(c, scipy.fft.dctn(blocks, axes=(-3, -2, -1), norm="ortho"), atol=1e-4)
    back = wiener._transform(torch.from_numpy(c), d[0].T, d[1].T, d[2].T).numpy()
    assert np.allclose(back, blocks, atol=1e-4)


@pytest.mark.parametrize(
    "shape, level",
    [
        ((12, 20, 23), 400.0),
        ((9, 8, 13), 400.0),
        ((3, 4, 5), 400.0),
        ((8, 9, 8), 400.0),
        ((10, 20, 21), 400.0),  # J and I padded differently
        ((12, 6, 20), 400.0),  # a block shorter along J than along K
        ((8, 110, 12), 400.0),  # more block rows than one chunk
        ((12, 20, 23), 5e4),  # noise far above the signal: blocks kept with little weight
        ((12, 20, 23), 1e9),  # every coefficient shrunk: the weights 1 / sum(W^2) exceed 1
    ],
)
def test_the_streamed_filter_is_the_block_by_block_reference(shape, level):
    clean, rng = smooth_volume(shape)
    noisy = clean + rng.normal(0, 20, shape).astype(np.float32)
    pilot = clean + rng.normal(0, 5, shape).astype(np.float32)
    b = wiener.block_shape(shape, 8)
    variance = np.full(b, level) * np.linspace(0.5, 1.5, b[2])  # a spectrum that differs by coefficient
    out = pilot.copy()
    wiener.wiener_into(noisy, out, [(8, 3, variance)])
    assert np.allclose(out, reference_wiener(noisy, pilot, variance), atol=2e-3)
    half = pilot.copy()
    wiener.wiener_into(noisy, half, [(8, 3, variance)], share=0.3)
    assert np.allclose(half, reference_wiener(noisy, pilot, variance, 0.3), atol=2e-3)


@pytest.mark.parametrize(
    "shape, filters",
    [
        ((12, 20, 23), ((8, 3), (4, 2))),  # the engine's filters
        ((17, 11, 9), ((4, 2), (8, 3))),  # in the other order; K not a whole number of steps of either
        ((9, 10, 21), ((6, 2), (4, 3), (8, 3))),  # three filters
        ((5, 14, 8), ((8, 3), (4, 2))),  # K shorter than the large block
    ],
)
def test_several_filters_stream_into_the_mean_of_their_block_by_block_references(shape, filters):
    clean, rng = smooth_volume(shape, 2)
    noisy = clean + rng.normal(0, 20, shape).astype(np.float32)
    pilot = clean + rng.normal(0, 5, shape).astype(np.float32)
    specs = []
    for n, (block, stride) in enumerate(filters):
        b = wiener.block_shape(shape, block)
        specs.append((block, stride, np.full(b, 300.0 * (n + 1)) * np.linspace(0.5, 1.5, b[1])[:, None]))
    estimates = [reference_wiener(noisy, pilot, v, 1.0, block, stride) for block, stride, v in specs]
    for share in (1.0, 0.6):
        out = pilot.copy()
        wiener.wiener_into(noisy, out, specs, share=share)
        np.testing.assert_allclose(out, pilot + share * (np.mean(estimates, axis=0) - pilot), atol=2e-3)


def test_no_noise_keeps_the_input_and_infinite_noise_gives_zero():
    clean, rng = smooth_volume((10, 16, 18))
    noisy = clean + rng.normal(0, 10, clean.shape).astype(np.float32)
    pilot = clean + rng.normal(0, 1, clean.shape).astype(np.float32)  # no coefficient exactly 0
    for filters in ([(8, 3, np.zeros((8, 8, 8)))], [(8, 3, np.zeros((8, 8, 8))), (4, 2, np.zeros((4, 4, 4)))]):
        out = pilot.copy()
        wiener.wiener_into(noisy, out, filters)
        assert np.allclose(out, noisy, atol=1e-3)
    out = pilot.copy()
    wiener.wiener_into(noisy, out, [(8, 3, np.full((8, 8, 8), 1e12)), (4, 2, np.full((4, 4, 4), 1e12))])
    assert np.abs(out).max() < 1e-2


def test_with_a_good_pilot_and_the_true_noise_the_filter_removes_most_of_the_noise_and_keeps_the_input():
    clean, rng = smooth_volume((16, 32, 32))
    noisy = clean + rng.normal(0, 20, clean.shape).astype(np.float32)
    before = noisy.copy()
    pilot = clean + rng.normal(0, 4, clean.shape).astype(np.float32)
    out = pilot.copy()
    wiener.wiener_into(noisy, out, [(8, 3, np.full((8, 8, 8), 400.0)), (4, 2, np.full((4, 4, 4), 400.0))])
    rmse = float(np.sqrt(np.mean((out - clean) ** 2)))
    assert rmse < 0.25 * 20
    assert np.array_equal(noisy, before)


def test_the_residual_spectrum_reads_white_noise_flat_and_correlated_noise_low_pass():
    rng = np.random.default_rng(3)
    shape = (16, 128, 128)
    white = rng.normal(0, 10, shape).astype(np.float32)
    spec = wiener.residual_spectrum(white, np.zeros(shape, np.float32), 8)
    assert spec.shape == (8, 8, 8)
    assert np.allclose(spec, 100.0, rtol=0.25)
    assert spec.mean() == pytest.approx(100.0, rel=0.05)
    # in-plane correlated (smoothed along J and I only): power in the low in-plane frequencies
    t = torch.from_numpy(white)[:, None]
    kernel = torch.ones(1, 1, 3, 3) / 9.0
    corr = F.conv2d(F.pad(t, (1, 1, 1, 1), mode="reflect"), kernel)[:, 0].numpy()
    spec = wiener.residual_spectrum(corr, np.zeros(shape, np.float32), 8)
    assert spec[:, 0, 0].mean() > 5 * spec[:, -1, -1].mean()
    assert np.allclose(spec[0], spec[-1], rtol=0.3)  # white along K
    # the residual is noisy minus pilot, not the noisy volume
    offset = np.full(shape, 50.0, np.float32)
    assert np.allclose(
        wiener.residual_spectrum(white + offset, offset, 8), wiener.residual_spectrum(white, 0 * white, 8)
    )
    small = wiener.residual_spectrum(white, np.zeros(shape, np.float32), 4)
    assert small.shape == (4, 4, 4) and np.allclose(small, 100.0, rtol=0.1)


def reference_spectrum(noisy, pilot, block):
    """Mean square of scipy's DCT of non-overlapping blocks of noisy - pilot: along K every b from 0 and one more
    ending at the last slice where b does not divide K; in-plane whole blocks from 0 (a remainder is left out)."""
    r = noisy.astype(np.float64) - pilot.astype(np.float64)
    b = [min(block, n) for n in r.shape]
    ks = sorted({*range(0, r.shape[0] - b[0] + 1, b[0]), r.shape[0] - b[0]})
    squares = [
        scipy.fft.dctn(r[k : k + b[0], j : j + b[1], i : i + b[2]], norm="ortho") ** 2
        for k in ks
        for j in range(0, r.shape[1] - b[1] + 1, b[1])
        for i in range(0, r.shape[2] - b[2] + 1, b[2])
    ]
    return np.mean(squares, axis=0)


@pytest.mark.parametrize("shape", [(8, 8, 8), (24, 6, 20), (20, 16, 12), (5, 20, 6)])
@pytest.mark.parametrize("block", [8, 4])
def test_the_residual_spectrum_is_the_mean_square_dct_of_the_residual_over_whole_blocks(shape, block):
    rng = np.random.default_rng(5)
    noisy = rng.normal(0, 10, shape).astype(np.int16)  # a scanner's integers
    pilot = rng.normal(0, 3, shape).astype(np.float32)
    np.testing.assert_allclose(
        wiener.residual_spectrum(noisy, pilot, block), reference_spectrum(noisy, pilot, block), rtol=1e-4, atol=1e-3
    )


def test_the_residual_spectrum_is_summed_in_float64():
    """Millions of blocks of a real volume would lose digits in a float32 sum."""
    rng = np.random.default_rng(8)
    noisy = rng.normal(0, 10, (8, 16, 16)).astype(np.float32)
    spec = wiener.residual_spectrum(noisy, np.zeros_like(noisy), 8)
    assert spec.dtype == np.float64


def test_apply_wiener_reports_every_block_row_of_its_stage_as_a_step():
    from NSN2NDenoiseLib import block_matching

    clean, rng = smooth_volume((14, 24, 18))  # J has more block rows than K: the steps count K's
    noisy = clean + rng.normal(0, 10, clean.shape).astype(np.float32)
    one = len(wiener._starts(14, 4, 3))  # block rows of one pass
    assert one == block_matching.row_count(14) == 5
    cases = [
        ("filters", (0.0, 0.0), len(wiener._starts(14, 8, 3))),
        # white noise: two passes, then the network-free estimate's: 4-voxel blocks, then 5-voxel ones (0, 3, 6, 9)
        ("matched", (0.0, 0.0), 3 * one + 4),
        ("matched", (0.3, 0.3), block_matching.row_count(14)),  # correlated: one
    ]
    for kind, lag1, rows in cases:
        steps = []
        wiener.apply_wiener(noisy, clean.copy(), lag1, kind, step=steps.append)
        assert steps == list(range(rows)) == list(range(wiener.row_count(14, kind, lag1))), kind


def test_the_residual_spectrum_of_a_short_volume_has_the_short_axis_block():
    rng = np.random.default_rng(4)
    x = rng.normal(0, 3, (5, 20, 6)).astype(np.float32)
    spec = wiener.residual_spectrum(x, np.zeros_like(x), 8)
    assert spec.shape == (5, 8, 6) == wiener.block_shape(x.shape, 8)
    assert spec.mean() == pytest.approx(9.0, rel=0.3)


def test_steps_are_the_block_rows_and_cancel_stops_before_a_row():
    clean, rng = smooth_volume((20, 16, 16))
    noisy = clean + rng.normal(0, 10, clean.shape).astype(np.float32)
    rows = []
    out = clean.copy()
    filters = [(8, 3, np.full((8, 8, 8), 100.0)), (4, 2, np.full((4, 4, 4), 100.0))]
    wiener.wiener_into(noisy, out, filters, step=rows.append)
    assert rows == list(range(5 + 9))  # the rows of both filters
    assert wiener.row_count(20, "filters") == 5 == len(wiener._starts(20, 8, 3))
    assert wiener.row_count(3, "filters") == 1  # a volume shorter than the block: one row
    assert wiener.row_count(20, "matched") == len([0, 3, 6, 9, 12, 15, 16])
    assert wiener._starts(20, 8, 3) == [0, 3, 6, 9, 12]
    assert wiener._starts(21, 8, 3) == [0, 3, 6, 9, 12, 13]
    calls = []

    def cancel():
        calls.append(1)
        return len(calls) > 2

    with pytest.raises(CancelledError) as raised:
        wiener.wiener_into(noisy, clean.copy(), filters, is_cancelled=cancel)
    assert str(raised.value) == "Denoising was cancelled."
    assert len(calls) == 3
    with pytest.raises(CancelledError, match="Denoising was cancelled"):
        wiener.apply_wiener(noisy, clean.copy(), (0.0, 0.0), "filters", is_cancelled=lambda: True)
    with pytest.raises(CancelledError, match="Denoising was cancelled"):
        wiener.apply_wiener(noisy, clean.copy(), (0.0, 0.0), "matched", is_cancelled=lambda: True)
    calls, steps = [], []
    with pytest.raises(CancelledError):  # cancelled in the block-matched passes, before the network-free estimate
        wiener.apply_wiener(
            noisy, clean.copy(), (0.0, 0.0), "matched", steps.append, lambda: calls.append(1) or len(calls) > 2
        )
    assert steps == [0, 1]
    passes = wiener.row_count(20, "matched", (0.3, 0.3)) * 2  # the two passes' block rows, then the estimate's
    calls, steps = [], []
    with pytest.raises(CancelledError):  # cancelled in the network-free estimate
        wiener.apply_wiener(
            noisy, clean.copy(), (0.0, 0.0), "matched", steps.append, lambda: calls.append(1) or len(calls) > passes + 1
        )
    assert steps == list(range(passes + 1))


def test_an_integer_input_gives_what_its_float_copy_gives():
    clean, rng = smooth_volume((10, 18, 20))
    noisy = np.round(clean + rng.normal(0, 20, clean.shape)).astype(np.int16)
    pilot = clean + rng.normal(0, 5, clean.shape).astype(np.float32)
    for kind in ("filters", "matched"):
        a, b = pilot.copy(), pilot.copy()
        wiener.apply_wiener(noisy, a, (0.0, 0.0), kind)
        wiener.apply_wiener(noisy.astype(np.float32), b, (0.0, 0.0), kind)
        np.testing.assert_array_equal(a, b)


def test_the_spectrum_of_float64_volumes_is_that_of_their_float32_copies():
    rng = np.random.default_rng(6)
    noisy = rng.normal(0, 10, (10, 16, 16))
    pilot = rng.normal(0, 3, (10, 16, 16))
    spec = wiener.residual_spectrum(noisy, pilot, 8)
    np.testing.assert_allclose(spec, wiener.residual_spectrum(noisy.astype(np.float32), pilot.astype(np.float32), 8))
    np.testing.assert_allclose(wiener.residual_spectrum(noisy.astype(np.float32), pilot, 8), spec, rtol=1e-5)
    np.testing.assert_allclose(wiener.residual_spectrum(noisy, pilot.astype(np.float32), 8), spec, rtol=1e-5)


def test_the_in_plane_padding_is_b_minus_1_and_makes_whole_steps():
    for n in range(4, 40):
        for b in (4, 8):
            for step in (2, 3):
                before, after = wiener._padding(n, b, step)
                assert before == b - 1 and b - 1 <= after < b - 1 + step
                assert (n + before + after - b) % step == 0


def test_the_noise_class_follows_the_in_plane_lag1_gate():
    assert wiener.noise_class((0.0, WHITE_LAG1)) == "white"
    assert wiener.noise_class((-WHITE_LAG1, 0.1)) == "white"
    assert wiener.noise_class((0.05, WHITE_LAG1 + 0.01)) == "correlated"
    assert wiener.noise_class((-0.3, 0.0)) == "correlated"
    assert wiener.noise_class(None) == "correlated"


@pytest.mark.parametrize("lag1, cls", [((0.02, 0.05), "white"), ((0.33, 0.31), "correlated")])
def test_apply_wiener_filters_scales_the_residual_spectrum_by_its_class_and_takes_the_mean_with_the_pilot(lag1, cls):
    noisy, pilot = noisy_and_pilot((12, 24, 6))
    out = pilot.copy()
    info = wiener.apply_wiener(noisy, out, lag1, "filters")
    s8 = wiener.residual_spectrum(noisy, pilot, 8)
    k8 = {"white": 2.0, "correlated": 4.0}[cls]
    w8 = pilot.copy()
    wiener.wiener_into(noisy, w8, [(8, 3, k8 * s8)])
    np.testing.assert_allclose(out, (pilot + w8) / 2, atol=2e-3)
    expected = pilot.copy()
    wiener.wiener_into(noisy, expected, [(8, 3, k8 * s8)], share=0.5)
    assert np.array_equal(out, expected)
    assert info == {
        "applied": True,
        "kind": "filters",
        "noise_class": cls,
        "filters": [{"block": [8, 8, 6], "step": 3, "factor": k8}],
        "share": 0.5,
        "residual_rms": pytest.approx(float(np.sqrt(s8.mean()))),
    }


def test_apply_wiener_matched_on_correlated_noise_is_one_pass_with_the_4_voxel_spectrum_times_4():
    from NSN2NDenoiseLib import block_matching

    noisy, pilot = noisy_and_pilot((9, 20, 18))
    lag1 = (0.33, 0.31)
    out = pilot.copy()
    info = wiener.apply_wiener(noisy, out, lag1, "matched")
    expected = pilot.copy()
    block_matching.matched_into(noisy, expected, 4.0 * wiener.residual_spectrum(noisy, pilot, 4))
    assert np.array_equal(out, expected)
    assert info == {
        "applied": True,
        "kind": "matched",
        "noise_class": "correlated",
        "filters": [{"block": [4, 4, 4], "step": 3, "factor": 4.0, "group": 16, "search": [3, 5], "window": 0.0}],
        "share": 1.0,
        "network_free_share": 0.0,
        "residual_rms": pytest.approx(float(np.sqrt(wiener.residual_spectrum(noisy, pilot, 8).mean()))),
    }
    with pytest.raises(ValueError, match="unknown Wiener stage 'on'"):
        wiener.apply_wiener(noisy, pilot.copy(), lag1, "on")


def test_apply_wiener_matched_on_white_noise_is_two_passes_with_the_networks_4_voxel_spectrum_then_network_free():
    """The second pass takes the first's estimate as its pilot, and its noise is still the network's residual's; the
    result is averaged with the network-free estimate (weight 0.5) at the noise level read inside the body."""
    from NSN2NDenoiseLib.block_matching import MatchedFilter, matched_into, network_free
    from NSN2NDenoiseLib.noise_estimates import body_sigma

    noisy, pilot = noisy_and_pilot((9, 20, 18))
    out = pilot.copy()
    info = wiener.apply_wiener(noisy, out, (0.02, -0.05), "matched")
    s4 = wiener.residual_spectrum(noisy, pilot, 4)
    expected = pilot.copy()
    matched_into(noisy, expected, 4.0 * s4, f=MatchedFilter(4, 3, 16, (3, 5), 4.0))
    once = expected.copy()
    matched_into(noisy, expected, 2.0 * s4, f=MatchedFilter(4, 3, 16, (3, 5), 2.0))
    twice = expected.copy()
    sigma = body_sigma(noisy)
    assert sigma == pytest.approx(15.0, rel=0.1)  # the input's noise
    expected += np.float32(0.5) * (network_free(noisy, sigma) - expected)
    assert np.array_equal(out, expected) and not np.allclose(out, once, atol=1e-2)
    assert not np.allclose(out, twice, atol=1e-2)
    passes = [
        {"block": [4, 4, 4], "step": 3, "factor": k, "group": 16, "search": [3, 5], "window": 0.0} for k in (4, 2)
    ]
    assert info == {
        "applied": True,
        "kind": "matched",
        "noise_class": "white",
        "filters": passes,
        "share": 1.0,
        "network_free_share": 0.5,
        "network_free_sigma": sigma,
        "network_free_filters": [
            {"block": [4, 4, 4], "step": 3, "factor": 1.0, "group": 16, "search": [7, 7], "window": 2.0},
            {"block": [5, 5, 5], "step": 3, "factor": 1.0, "group": 16, "search": [7, 7], "window": 2.0},
        ],
        "residual_rms": pytest.approx(float(np.sqrt(wiener.residual_spectrum(noisy, pilot, 8).mean()))),
    }
    small = pilot / 100  # a noise level below one unit is a noise level: the estimate still runs
    tiny = wiener.apply_wiener(noisy / 100, small, (0.02, -0.05), "matched")
    assert tiny["network_free_share"] == 0.5 and tiny["network_free_sigma"] == pytest.approx(sigma / 100, rel=1e-3)
    np.testing.assert_allclose(small, out / 100, atol=5e-3)  # float32 sums: a few hard-threshold decisions flip


def test_apply_wiener_on_white_noise_leaves_the_network_free_estimate_out_where_no_noise_level_can_be_read():
    from NSN2NDenoiseLib import block_matching

    noisy = np.full((7, 12, 12), 100.0, np.float32)  # constant: no body, no noise to read
    pilot = noisy + np.random.default_rng(0).normal(0, 1, noisy.shape).astype(np.float32)
    out, expected = pilot.copy(), pilot.copy()
    steps = []
    info = wiener.apply_wiener(noisy, out, (0.0, 0.0), "matched", step=steps.append)
    block_matching.passes_into(noisy, expected, block_matching.MATCHED_WHITE)
    assert np.array_equal(out, expected)
    assert info["network_free_share"] == 0.0 and info["network_free_sigma"] == 0.0
    assert info["network_free_reason"] == "no noise level could be read inside the body"
    assert steps == list(range(wiener.row_count(7, "matched", (0.0, 0.0)))) and len(steps) == 4 * 2
    quiet = pilot.copy()
    assert wiener.apply_wiener(noisy, quiet, (0.0, 0.0), "matched") == info and np.array_equal(quiet, out)  # no step


def test_block_matching_gives_way_to_the_dct_filter_where_the_in_plane_noise_is_strongly_correlated():
    assert wiener.MATCHED_MAX_LAG1 == 0.75
    assert wiener.stage_kind("matched", (0.75, -0.75)) == "matched"  # at the bound: still block matching
    assert wiener.stage_kind("matched", (0.1, 0.76)) == "filters"
    assert wiener.stage_kind("matched", (-0.8, 0.0)) == "filters"  # by its size, whatever its sign
    assert wiener.stage_kind("matched", None) == "matched"  # not measured
    assert wiener.stage_kind("filters", (0.9, 0.9)) == "filters" and wiener.stage_kind("off", (0.9, 0.9)) == "off"
    assert wiener.row_count(20, "matched", (0.8, 0.0)) == wiener.row_count(20, "filters") == 5
    assert wiener.row_count(20, "matched", (0.7, 0.0)) == wiener.row_count(20, "matched") == 7
    noisy, pilot = noisy_and_pilot((9, 20, 18))
    lag1 = (0.81, 0.78)
    out, expected = pilot.copy(), pilot.copy()
    steps = []
    info = wiener.apply_wiener(noisy, out, lag1, "matched", step=steps.append)
    plain = wiener.apply_wiener(noisy, expected, lag1, "filters")
    assert np.array_equal(out, expected) and steps == list(range(wiener.row_count(9, "filters")))
    assert info == {
        **plain,
        "requested": "matched",
        "reason": "in-plane noise strongly correlated (lag-1 correlation 0.81, 0.78 > 0.75): 4-voxel blocks cannot "
        "tell it from anatomy, so the DCT filter of 8-voxel blocks ran instead",
    }
    assert info["kind"] == "filters" and info["noise_class"] == "correlated" and "requested" not in plain


@pytest.fixture
def small_run():
    clean, rng = smooth_volume((10, 32, 30))
    noisy = clean + rng.normal(0, 15, clean.shape).astype(np.float32)
    cfg = make_config(
        "default", training={"iterations": 20, "patch_size": 16, "batch_size": 4, "seed": 3, "threads": 1}
    ).replace(device="cpu", inference={"tta": 2})
    return noisy, cfg


def test_a_run_with_the_wiener_stage_is_the_run_without_it_then_apply_wiener(small_run):
    noisy, cfg = small_run
    assert [make_config(p).inference.wiener for p in ("fast", "default", "best")] == ["filters", "matched", "matched"]
    seen = []
    out, report = denoise(noisy, config=cfg, progress=lambda *a: seen.append(a))
    off, report_off = denoise(noisy, config=cfg.replace(inference={"wiener": "off"}))
    expected = off.copy()
    axis = report_off.slice_axis
    info = wiener.apply_wiener(
        np.moveaxis(noisy, axis, 0), np.moveaxis(expected, axis, 0), tuple(report_off.inplane_noise_lag1), "matched"
    )
    assert np.array_equal(out, expected)
    assert report.wiener == info and report.to_dict()["wiener"]["applied"] is True
    assert report_off.wiener == {"applied": False, "reason": "inference.wiener = 'off'"}
    assert "wiener" in report.phase_seconds and "wiener" not in report_off.phase_seconds
    inference = [s for s in seen if s[0] == "inference"]
    total = inference[-1][2]
    slices = sum(noisy.shape[a] for a in range(3) if "KJI"[a] in report.prediction_axes)
    assert total == slices + wiener.row_count(noisy.shape[axis], "matched")
    assert [s[1] for s in inference] == list(range(1, total + 1))


def test_cancelling_during_the_wiener_stage_returns_nothing(small_run):
    noisy, cfg = small_run
    token = {"stop": False}
    slices = noisy.shape[0] * 3

    def progress(phase, step, total, loss):
        if phase == "inference" and step > slices:
            token["stop"] = True

    before = noisy.copy()
    with pytest.raises(CancelledError):
        denoise(noisy, config=cfg.replace(inference={"axes": "all"}), progress=progress, cancel=lambda: token["stop"])
    assert token["stop"] and np.array_equal(noisy, before)


def test_with_the_neighbour_network_the_wiener_stage_comes_last_in_one_inference_count(small_run):
    noisy, cfg = small_run
    cfg = cfg.replace(inference={"axes": "all", "neighbour_fusion": "on"})
    seen = []
    out, report = denoise(noisy, config=cfg, progress=lambda *a: seen.append(a))
    off, report_off = denoise(noisy, config=cfg.replace(inference={"wiener": "off"}))
    expected = off.copy()
    wiener.apply_wiener(noisy, expected, tuple(report_off.inplane_noise_lag1), "matched")
    assert report.neighbour_fusion["applied"] and report.wiener["applied"]
    np.testing.assert_array_equal(out, expected)
    inference = [s for s in seen if s[0] == "inference"]
    n = noisy.shape[0]
    assert inference[-1][1] == inference[-1][2] == sum(noisy.shape) + n + wiener.row_count(n, "matched")
    assert [s[1] for s in inference] == list(range(1, inference[-1][2] + 1))
