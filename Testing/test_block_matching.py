"""The block-matched Wiener filter (NSN2NDenoiseLib/block_matching.py): the group transform, the streamed filter
against a block-by-block reference, progress, cancellation, and what it does to noise."""

from dataclasses import replace

import numpy as np
import pytest
import scipy.fft
import scipy.signal
import torch
from conftest import smooth_volume

from NSN2NDenoiseLib import block_matching as bm
from NSN2NDenoiseLib.errors import CancelledError

SMALL = bm.MatchedFilter(block=4, step=3, group=8, search=(2, 3), factor=1.0)
"""A cheap filter for the reference comparisons (the engine's searches 3 x 5 with groups of 16)."""


def haar_reference(m):
    """Haar rows: the mean, then at each scale from the coarsest the difference of neighbouring halves."""
    rows = [np.ones(m) / np.sqrt(m)]
    size = m
    while size > 1:
        for start in range(0, m, size):
            r = np.zeros(m)
            r[start : start + size // 2] = 1
            r[start + size // 2 : start + size] = -1
            rows.append(r / np.sqrt(size))
        size //= 2
    return np.array(rows)


def reference_matched(noisy, pilot, variance, f, hard=None):
    """Every reference block one at a time: distances to every candidate with numpy, groups nearest first (the
    reference first of all), scipy's DCT of each block and the Haar transform across the group, shrinkage (with
    ``hard``, the input's coefficients kept where they exceed ``hard`` noise standard deviations, the group's weight
    1 / coefficients kept), and each block of the group added back at its place with its group's weight times
    scipy's Kaiser window."""
    n_k, n_j, n_i = noisy.shape
    b = [min(f.block, n) for n in noisy.shape]
    win = np.einsum("a,b,c->abc", *(scipy.signal.windows.kaiser(n, f.window) for n in b))
    sk, s = f.search
    pads = []
    for n, bb in zip((n_j, n_i), b[1:], strict=True):
        extra = next(e for e in range(f.step) if (n + 2 * (bb - 1) + e - bb) % f.step == 0)
        pads.append((bb - 1 + s, bb - 1 + extra + s))
    x = np.pad(noisy.astype(np.float64), [(0, 0), *pads], mode="reflect")
    p = np.pad(pilot.astype(np.float64), [(0, 0), *pads], mode="reflect")
    num = np.zeros_like(x)
    den = np.zeros_like(x)
    ks = sorted({*range(0, n_k - b[0] + 1, f.step), n_k - b[0]})
    hp, wp = x.shape[1] - 2 * s, x.shape[2] - 2 * s

    def block(a, k, j, i):
        return a[k : k + b[0], j : j + b[1], i : i + b[2]]

    for k in ks:
        for j in range(s, s + hp - b[1] + 1, f.step):
            for i in range(s, s + wp - b[2] + 1, f.step):
                ref = block(p, k, j, i)
                cands = []
                for dk in range(-sk, sk + 1):
                    if not 0 <= k + dk <= n_k - b[0]:
                        continue
                    for dj in range(-s, s + 1):
                        for di in range(-s, s + 1):
                            d = (
                                0.0
                                if (dk, dj, di) == (0, 0, 0)
                                else ((ref - block(p, k + dk, j + dj, i + di)) ** 2).sum()
                            )
                            cands.append((d, (dk, dj, di) != (0, 0, 0), (k + dk, j + dj, i + di)))
                cands.sort(key=lambda c: (c[1], c[0]))
                m = bm.group_size(len(cands), f.group)
                where = [c[2] for c in cands[:m]]
                h = haar_reference(m)
                xc = np.tensordot(h, np.array([scipy.fft.dctn(block(x, *o), norm="ortho") for o in where]), 1)
                pc = np.tensordot(h, np.array([scipy.fft.dctn(block(p, *o), norm="ortho") for o in where]), 1)
                if hard is None:
                    w = pc**2 / (pc**2 + variance)
                    weight = 1.0 / max((w**2).sum(), 1e-12)
                else:
                    w = (np.abs(xc) > hard * np.sqrt(variance)).astype(np.float64)
                    weight = 1.0 / max(w.sum(), 1.0)
                back = np.tensordot(h.T, w * xc, 1)
                for o, y in zip(where, back, strict=True):
                    sl = tuple(slice(a, a + bb) for a, bb in zip(o, b, strict=True))
                    num[sl] += weight * win * scipy.fft.idctn(y, norm="ortho")
                    den[sl] += weight * win
    out = num / den
    return out[:, pads[0][0] : pads[0][0] + n_j, pads[1][0] : pads[1][0] + n_i]


def test_the_haar_matrix_is_orthonormal_with_the_mean_first():
    for m in (1, 2, 4, 8, 16):
        h = bm.haar_matrix(m).double().numpy()
        assert np.allclose(h @ h.T, np.eye(m), atol=1e-6)
        assert np.allclose(h, haar_reference(m), atol=1e-6)
    assert np.allclose(bm.haar_matrix(2).numpy(), np.array([[1, 1], [1, -1]]) / np.sqrt(2), atol=1e-7)
    for m in (0, 3, 12):
        with pytest.raises(ValueError, match="power of two"):
            bm.haar_matrix(m)


def test_the_group_is_the_largest_power_of_two_the_candidates_allow():
    assert [bm.group_size(n, 16) for n in (1, 2, 3, 7, 8, 15, 16, 17, 847)] == [1, 2, 2, 4, 8, 8, 16, 16, 16]
    assert bm.group_size(100, 8) == 8 and bm.group_size(100, 12) == 8


@pytest.mark.parametrize(
    "shape, f",
    [
        ((9, 14, 13), SMALL),
        ((12, 10, 17), SMALL),  # K not a whole number of steps; J and I padded differently
        ((5, 12, 12), SMALL),  # few slices: the search along K is cut short
        ((3, 11, 9), SMALL),  # fewer slices than the block: one block row, no search along K
        # Even blocks: an odd block centred on the mirror of the padding has two mirrored candidates at exactly the
        # same distance, and which of them topk takes first is not the reference's to know.
        ((7, 12, 10), bm.MatchedFilter(block=2, step=1, group=4, search=(1, 2), factor=1.0)),
        ((10, 13, 12), bm.MATCHED),  # the engine's filter
        ((9, 14, 13), bm.MatchedFilter(block=4, step=3, group=8, search=(2, 3), factor=1.0, window=2.0)),
        # Odd blocks with the window: J and I of lengths n with n + 1 not a multiple of 3, so that no reference block
        # is centred on the mirror of the padding (above).
        ((10, 15, 13), bm.MatchedFilter(block=5, step=3, group=8, search=(2, 3), factor=1.0, window=2.0)),
        ((4, 12, 16), bm.MatchedFilter(block=5, step=3, group=8, search=(1, 3), factor=1.0, window=6.0)),
        ((11, 15, 16), bm.MATCHED_WHITE[1]),  # the engine's second pass on white noise
        ((11, 15, 16), bm.MatchedFilter(block=5, step=3, group=16, search=(3, 5), factor=2.0, window=2.0)),
    ],
)
def test_the_streamed_filter_is_the_block_by_block_reference(shape, f):
    clean, rng = smooth_volume(shape, 1)
    noisy = clean + rng.normal(0, 20, shape).astype(np.float32)
    pilot = clean + rng.normal(0, 5, shape).astype(np.float32)
    b = [min(f.block, n) for n in shape]
    variance = np.full(b, 300.0) * np.linspace(0.5, 1.5, b[2])  # a spectrum that differs by coefficient
    out = pilot.copy()
    bm.matched_into(noisy, out, variance, f=f)
    np.testing.assert_allclose(out, reference_matched(noisy, pilot, variance, f), atol=3e-3)
    half = pilot.copy()
    bm.matched_into(noisy, half, variance, f=f, share=0.4)
    np.testing.assert_allclose(half, pilot + 0.4 * (out - pilot), atol=1e-3)


@pytest.mark.parametrize(
    "shape, f",
    [
        ((9, 14, 13), SMALL),
        ((5, 12, 12), SMALL),
        ((10, 13, 12), bm.MATCHED),
        ((3, 11, 9), SMALL),
        ((12, 13, 14), bm.MatchedFilter(block=4, step=3, group=8, search=(4, 4), factor=1.0, window=2.0)),
    ],
)
def test_the_streamed_hard_threshold_is_the_block_by_block_reference_matched_on_the_input(shape, f):
    clean, rng = smooth_volume(shape, 2)
    noisy = clean + rng.normal(0, 20, shape).astype(np.float32)
    b = [min(f.block, n) for n in shape]
    variance = np.full(b, 400.0) * np.linspace(0.5, 1.5, b[2])
    out = noisy.copy()  # matched on the input itself, overwritten behind the block rows still to come
    bm.matched_into(noisy, out, variance, f=f, hard=2.7)
    np.testing.assert_allclose(out, reference_matched(noisy, noisy, variance, f, hard=2.7), atol=3e-3)
    assert np.mean((out - clean) ** 2) < 0.5 * np.mean((noisy - clean) ** 2)
    kept = noisy.copy()
    bm.matched_into(noisy, kept, variance, f=f, hard=0.0)  # every coefficient kept: the input itself
    np.testing.assert_allclose(kept, noisy, atol=1e-3)
    gone = noisy.copy()
    bm.matched_into(noisy, gone, variance, f=f, hard=1e6)  # none kept: zero
    np.testing.assert_allclose(gone, 0.0, atol=1e-6)


def test_the_network_free_estimate_is_the_hard_threshold_then_one_wiener_pass_at_the_noise_level():
    shape = (10, 16, 14)
    clean, rng = smooth_volume(shape, 3)
    noisy = clean + rng.normal(0, 12, shape).astype(np.float32)
    hard, second = bm.NETWORK_FREE
    expected = noisy.copy()
    bm.matched_into(noisy, expected, np.full((4, 4, 4), 12.0**2, np.float32), hard=bm.HARD_THRESHOLD, f=hard)
    pilot = expected.copy()
    bm.matched_into(noisy, expected, np.full((5, 5, 5), 12.0**2, np.float32), f=second)
    steps = []
    got = bm.network_free(noisy.astype(np.float64), 12.0, steps.append)
    assert got.dtype == np.float32 and np.array_equal(got, expected) and not np.allclose(got, pilot, atol=1e-2)
    rows = bm.row_count(shape[0], hard)
    assert rows == 3 and bm.row_count(shape[0], second) == 3  # K = 10: blocks of 4 at 0, 3, 6; of 5 at 0, 3, 5
    assert steps == list(range(bm.network_free_rows(shape[0]))) and bm.network_free_rows(shape[0]) == 6
    assert bm.network_free_rows(8) == bm.row_count(8, hard) + bm.row_count(8, second) == 3 + 2  # 0, 3, 4; 0, 3
    assert np.mean((got - clean) ** 2) < 0.2 * np.mean((noisy - clean) ** 2)
    assert bm.HARD_THRESHOLD == 2.7 and bm.NETWORK_FREE_SHARE == {"white": 0.5, "correlated": 0.0}
    for after in (1, rows + 1):  # checks that pass: cancelled in the first pass, then in the second
        calls, steps = [], []

        def cancelled(after=after, calls=calls):
            calls.append(1)
            return len(calls) > after

        with pytest.raises(CancelledError):
            bm.network_free(noisy, 12.0, steps.append, cancelled)
        assert steps == list(range(after)), after


def test_the_network_free_filters_are_bm4ds_choices_chosen_on_the_tuning_set():
    """4-voxel blocks to threshold, 5-voxel blocks for the Wiener pass, BM4D's Kaiser window, a search of 7 voxels."""
    assert bm.NETWORK_FREE == (
        bm.MatchedFilter(block=4, step=3, group=16, search=(7, 7), factor=1.0, window=2.0),
        bm.MatchedFilter(block=5, step=3, group=16, search=(7, 7), factor=1.0, window=2.0),
    )


def test_the_network_free_estimate_takes_a_variance_per_dct_coefficient_by_block_size():
    """Correlated noise: each pass's noise variance is the array given for its block size, not a level squared."""
    shape = (12, 16, 14)
    clean, rng = smooth_volume(shape, 5)
    noisy = clean + rng.normal(0, 12, shape).astype(np.float32)
    filters = tuple(replace(f, search=(3, 5), step=4) for f in bm.NETWORK_FREE)  # a benchmark's variant
    v4 = np.linspace(50.0, 300.0, 64, dtype=np.float32).reshape(4, 4, 4)  # low frequencies noisier
    v5 = np.linspace(60.0, 250.0, 125, dtype=np.float32).reshape(5, 5, 5)
    expected = noisy.copy()
    bm.matched_into(noisy, expected, v4, hard=bm.HARD_THRESHOLD, f=filters[0])
    bm.matched_into(noisy, expected, v5, f=filters[1])
    steps = []
    got = bm.network_free(noisy, {4: v4, 5: v5}, steps.append, filters=filters)
    assert np.array_equal(got, expected)
    # K = 12, step 4: blocks of 4 at 0, 4 and 8, of 5 at 0, 4 and 7 (the engine's 4-voxel filter, step 3: 4 rows)
    assert steps == list(range(3 + 3)) and bm.row_count(12) == 4
    flat = bm.network_free(noisy, {4: np.full((4, 4, 4), 144.0), 5: np.full((5, 5, 5), 144.0)}, filters=filters)
    assert np.array_equal(flat, bm.network_free(noisy, 12.0, filters=filters))  # a level is that, flat
    assert not np.allclose(got, flat, atol=1e-2)


def test_no_noise_keeps_the_input_and_infinite_noise_gives_zero():
    clean, rng = smooth_volume((8, 14, 12))
    noisy = clean + rng.normal(0, 10, clean.shape).astype(np.float32)
    pilot = clean + rng.normal(0, 1, clean.shape).astype(np.float32)
    out = pilot.copy()
    bm.matched_into(noisy, out, np.zeros((4, 4, 4)), f=SMALL)
    assert np.allclose(out, noisy, atol=1e-3)
    out = pilot.copy()
    bm.matched_into(noisy, out, np.full((4, 4, 4), 1e12), f=SMALL)
    assert np.abs(out).max() < 1e-2


def test_with_a_good_pilot_the_filter_removes_more_noise_than_the_sliding_window_filters():
    from NSN2NDenoiseLib import wiener

    clean, rng = smooth_volume((16, 40, 40), 3)
    noisy = clean + rng.normal(0, 20, clean.shape).astype(np.float32)
    before = noisy.copy()
    pilot = clean + rng.normal(0, 6, clean.shape).astype(np.float32)
    out = pilot.copy()
    bm.matched_into(noisy, out, np.full((4, 4, 4), 400.0))
    sliding = pilot.copy()
    wiener.wiener_into(noisy, sliding, [(4, 2, np.full((4, 4, 4), 400.0))])
    rmse = float(np.sqrt(np.mean((out - clean) ** 2)))
    assert rmse < 0.2 * 20
    assert rmse < float(np.sqrt(np.mean((sliding - clean) ** 2)))
    assert np.array_equal(noisy, before)


def test_steps_are_the_block_rows_and_cancel_stops_before_a_row():
    clean, rng = smooth_volume((20, 12, 12))
    noisy = clean + rng.normal(0, 10, clean.shape).astype(np.float32)
    rows = []
    bm.matched_into(noisy, clean.copy(), np.full((4, 4, 4), 100.0), step=rows.append, f=SMALL)
    assert rows == list(range(bm.row_count(20))) and bm.row_count(20) == 7  # 0, 3, ..., 15, 16
    assert bm.row_count(3) == 1
    calls = []

    def cancel():
        calls.append(1)
        return len(calls) > 2

    with pytest.raises(CancelledError) as raised:
        bm.matched_into(noisy, clean.copy(), np.full((4, 4, 4), 100.0), is_cancelled=cancel, f=SMALL)
    assert str(raised.value) == "Denoising was cancelled." and len(calls) == 3


def test_an_integer_input_gives_what_its_float_copy_gives():
    clean, rng = smooth_volume((9, 15, 14))
    noisy = np.round(clean + rng.normal(0, 20, clean.shape)).astype(np.int16)
    pilot = clean + rng.normal(0, 5, clean.shape).astype(np.float32)
    a, b = pilot.copy(), pilot.copy()
    bm.matched_into(noisy, a, np.full((4, 4, 4), 200.0), f=SMALL)
    bm.matched_into(noisy.astype(np.float32), b, np.full((4, 4, 4), 200.0), f=SMALL)
    np.testing.assert_array_equal(a, b)


def test_the_engines_filters_are_the_ones_chosen_on_the_tuning_set():
    assert bm.MATCHED == bm.MatchedFilter(block=4, step=3, group=16, search=(3, 5), factor=4.0, window=0.0)
    assert bm.MATCHED_WHITE == (
        bm.MatchedFilter(block=4, step=3, group=16, search=(3, 5), factor=4.0, window=0.0),
        bm.MatchedFilter(block=4, step=3, group=16, search=(3, 5), factor=2.0, window=0.0),
    )
    assert bm.PASSES == {"white": bm.MATCHED_WHITE, "correlated": (bm.MATCHED,)}


def test_the_kaiser_window_is_numpys_and_flat_at_beta_0():
    assert torch.equal(bm.kaiser(5, 0.0), torch.ones(5))
    assert bm.kaiser(5, 2.0).dtype == torch.float32
    np.testing.assert_allclose(bm.kaiser(5, 2.0).numpy(), [0.4387, 0.8348, 1.0, 0.8348, 0.4387], atol=1e-4)


def test_the_in_plane_padding_is_b_minus_1_and_makes_whole_steps():
    for n in range(3, 30):
        for b in (2, 4, 5):
            for step in (1, 2, 3, 5):
                before, after = bm._padding(n, b, step)
                assert before == b - 1 and b - 1 <= after < b - 1 + step
                assert (n + before + after - b) % step == 0


def test_the_reference_block_leads_its_group_even_where_other_blocks_are_identical():
    ps = torch.zeros((6, 20, 20))  # a flat pilot: every candidate is at distance 0
    f = bm.MatchedFilter(block=4, step=3, group=8, search=(1, 2), factor=1.0)
    plane = (14, 14)
    ref_plane = ((2 + torch.arange(4) * 3)[:, None] * 20 + 2 + torch.arange(4) * 3).reshape(-1)
    origins = bm._match(ps, 1, 2, (4, 4, 4), plane, f, ref_plane)
    assert origins.shape == (16, 8)
    assert torch.equal(origins[:, 0], 1 * 20 * 20 + ref_plane)


def test_a_float64_pilot_gives_what_its_float32_copy_gives():
    clean, rng = smooth_volume((9, 15, 14))
    noisy = clean + rng.normal(0, 20, clean.shape).astype(np.float32)
    pilot = clean + rng.normal(0, 5, clean.shape).astype(np.float32)
    a, b = pilot.copy(), pilot.astype(np.float64)
    bm.matched_into(noisy, a, np.full((4, 4, 4), 200.0), f=SMALL)
    bm.matched_into(noisy, b, np.full((4, 4, 4), 200.0), f=SMALL)
    np.testing.assert_allclose(a, b, atol=1e-3)


def test_references_in_several_chunks_and_groups_shrunk_to_almost_nothing_are_the_reference(monkeypatch):
    """Chunks of 5 reference blocks; a noise variance so large that every group's sum of W**2 is below 1 (the
    weights 1 / sum(W**2) then exceed 1 and differ between groups)."""
    monkeypatch.setattr(bm, "REF_CHUNK", 5)
    clean, rng = smooth_volume((9, 14, 13), 4)
    noisy = clean + rng.normal(0, 20, clean.shape).astype(np.float32)
    pilot = clean + rng.normal(0, 5, clean.shape).astype(np.float32)
    for level in (300.0, 3e6):
        variance = np.full((4, 4, 4), level)
        out = pilot.copy()
        bm.matched_into(noisy, out, variance, f=SMALL)
        np.testing.assert_allclose(out, reference_matched(noisy, pilot, variance, SMALL), atol=3e-3, rtol=1e-4)
