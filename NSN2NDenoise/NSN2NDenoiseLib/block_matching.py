"""The block-matched Wiener filter: BM3D/BM4D's second step with the network's output as its pilot (docs/METHOD.md
section 5).

For each reference block of the input (``MATCHED.block`` voxels along K, J and I, origins ``MATCHED.step`` apart),
the ``MATCHED.group`` blocks whose *pilot* is most like the reference's pilot (sum of squared differences) are
found within ``MATCHED.search`` voxels (along K, and along J and I); the reference itself is always first. The
group of input blocks and the group of pilot blocks are transformed (3D DCT of each block, then a Haar transform
across the group, ordered by distance), the input's coefficients are shrunk by W = P**2 / (P**2 + v), with v
the noise variance of that DCT coefficient (the same for every block of the group), transformed back, and every
block of the group is added back at its own place with the weight 1 / sum(W**2) of its group. The estimate is the
weighted mean of all the blocks that cover a voxel.

Grouping similar blocks is what the sliding-window filters of :mod:`.wiener` leave out: a group of 16 similar
blocks averages their noise away where the pilot says they hold the same anatomy.

The same filter with a hard threshold instead of the shrinkage (BM3D/BM4D's first step) makes, with one Wiener pass
after it, an estimate that uses no network (:func:`network_free`), which the stage averages with its own where the
noise is white (:data:`NETWORK_FREE_SHARE`).

Arrays are (K, J, I) in the volume's own units; sizes are in voxels. The filter streams along K: it reads a slab
of a few slices per block row and writes a slice of the output once no block row still to come can touch it, so
it never holds a second volume.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .errors import CancelledError
from .wiener import _padding, _starts, block_shape, dct_matrix, residual_spectrum

REF_CHUNK = 2048
"""Reference blocks transformed at once: bounds the memory of the groups (about 100 MB)."""


@dataclass(frozen=True)
class MatchedFilter:
    """The block-matched filter's constants: cubic blocks of ``block`` voxels (shorter along an axis shorter than
    that), reference origins ``step`` apart, groups of ``group`` blocks (a power of two, for the Haar transform),
    searched within ``search`` = (along K, along J and I) voxels of the reference, noise variance = the residual's
    spectrum x ``factor``; each block's estimate is weighted in the aggregation by a Kaiser window of parameter
    ``window`` along K, J and I (0: flat, every voxel of the block alike)."""

    block: int
    step: int
    group: int
    search: tuple[int, int]
    factor: float
    window: float = 0.0


MATCHED = MatchedFilter(block=4, step=3, group=16, search=(3, 5), factor=4.0)
"""The engine's block-matched filter where the noise is correlated in-plane (low-dose CT), chosen on the tuning set
(RESULTS.md, "Adopted: block matching in the Wiener stage")."""
MATCHED_WHITE = (MATCHED, MatchedFilter(block=4, step=3, group=16, search=(3, 5), factor=2.0))
"""The engine's passes where the noise is white (MRI): :data:`MATCHED`, then the same filter at factor 2 with the
first pass's estimate as its pilot, both with the network's residual spectrum as the noise (RESULTS.md, "Adopted:
two passes of block matching on white noise"). 5-voxel blocks with BM4D's Kaiser window (``window`` = 2) were
measured and not kept."""
PASSES = {"white": MATCHED_WHITE, "correlated": (MATCHED,)}
"""The block-matched passes the stage runs, in order, by the noise class of :func:`.wiener.noise_class`."""
HARD_THRESHOLD = 2.7
"""The network-free estimate's hard threshold, in noise standard deviations (BM4D's)."""
NETWORK_FREE = (
    MatchedFilter(block=4, step=3, group=16, search=(7, 7), factor=1.0, window=2.0),
    MatchedFilter(block=5, step=3, group=16, search=(7, 7), factor=1.0, window=2.0),
)
"""The network-free estimate's filters, in order: the hard-threshold pass (4-voxel blocks), then the Wiener pass
(5-voxel blocks), both with BM4D's Kaiser window (parameter 2) and searching 7 voxels either way along every axis
(BM4D's profile names a search window of 7 per axis); their factor is unused (the noise variance is the noise level
squared). Chosen on the tuning set over the first estimate, which used :data:`MATCHED` in both passes (RESULTS.md,
"Adopted: a network-free estimate closer to BM4D's"). The wide search makes the stage about 4.9x the passes' time on
white noise (2.6x the first estimate's)."""
NETWORK_FREE_SHARE = {"white": 0.5, "correlated": 0.0}
"""The network-free estimate's weight in the stage's output, by noise class: where the noise is white the output is
the mean of the passes' estimate and it (RESULTS.md, "Adopted: a network-free estimate closer to BM4D's"; with the
first estimate, 0.5 had lost 0.02 dB on the reporting set's MNI152 at 5 % and 0.3 was the weight). Where the noise
is correlated in-plane no single level fits every coefficient; with the network's residual's spectrum as its noise
the estimate's best weight and factor on the tuning set lost on the reporting set's brain crop (RESULTS.md,
"Measured and not adopted: the network-free estimate on low-dose CT")."""


def haar_matrix(m: int) -> torch.Tensor:
    """The orthonormal Haar matrix (m, m), m a power of two: row 0 is the mean, the others differences at every
    scale; ``H @ v`` transforms v."""
    if m < 1 or m & (m - 1):
        raise ValueError(f"the Haar transform needs a power of two, not {m}")
    h = np.ones((1, 1))
    while h.shape[0] < m:
        n = h.shape[0]
        h = np.vstack([np.kron(h, [1.0, 1.0]), np.kron(np.eye(n), [1.0, -1.0])])
    return torch.tensor(h / np.linalg.norm(h, axis=1, keepdims=True), dtype=torch.float32)


def group_size(candidates: int, group: int) -> int:
    """The largest power of two that is at most ``group`` and at most the number of ``candidates`` blocks."""
    m = 1
    while m * 2 <= min(group, candidates):
        m *= 2
    return m


def row_count(n_slices: int, f: MatchedFilter = MATCHED) -> int:
    """Block rows along a slice axis of ``n_slices`` (the filter's progress steps)."""
    return len(_starts(n_slices, min(f.block, n_slices), f.step))


def matched_into(
    noisy: np.ndarray,
    pilot: np.ndarray,
    noise_variance: np.ndarray,
    step: Callable[[int], None] | None = None,
    is_cancelled: Callable[[], bool] | None = None,
    share: float = 1.0,
    f: MatchedFilter = MATCHED,
    hard: float | None = None,
) -> None:
    """Move ``pilot`` in place by ``share`` towards the block-matched Wiener estimate of ``noisy`` with ``pilot`` as
    the signal estimate (``share`` = 1: replace it); with ``hard``, towards the hard-thresholded estimate of ``noisy``
    on the groups matched on ``pilot`` instead.

    Parameters
    ----------
    noisy : ndarray (K, J, I)
        The input, any real dtype, in its own units; only read.
    pilot : ndarray float32 (K, J, I)
        The network's output, same units; overwritten slice by slice with the result, each slice once no block
        row still to come reads or covers it.
    noise_variance : ndarray, the block's shape (``f.block`` along each axis, or the axis's length if shorter)
        The noise variance of each DCT coefficient of a block, in units squared.
    step : callable(row), optional
        Called after each of the :func:`row_count` block rows along K (progress).
    is_cancelled : callable, optional
        Checked before every block row; raises :class:`CancelledError` (``pilot`` is then partly overwritten).
    share : float
        The estimate's weight in the result, 0..1.
    f : MatchedFilter
        Block, step, group size and search window.
    hard : float, optional
        The hard threshold in noise standard deviations: every group's coefficients of the input are kept where their
        magnitude exceeds ``hard`` x the square root of ``noise_variance`` and set to 0 elsewhere, and the group is
        added back with the weight 1 / (coefficients kept) (BM3D/BM4D's first step; the pilot is then only matched
        on).
    """
    n_k, n_j, n_i = noisy.shape
    bk, bj, bi = (min(f.block, n) for n in noisy.shape)
    nb = bk * bj * bi
    sk, s = f.search
    dct3 = torch.kron(dct_matrix(bk), torch.kron(dct_matrix(bj), dct_matrix(bi)))  # (nb, nb), C order
    v = torch.as_tensor(np.asarray(noise_variance, dtype=np.float32).reshape(-1))
    threshold = None if hard is None else hard * v.sqrt()
    pj, pi = _padding(n_j, bj, f.step), _padding(n_i, bi, f.step)
    hp, wp = n_j + sum(pj), n_i + sum(pi)  # the plane the reference blocks tile
    h, w = hp + 2 * s, wp + 2 * s  # with the search margin
    nj, ni = (hp - bj) // f.step + 1, (wp - bi) // f.step + 1
    ref_plane = ((s + torch.arange(nj) * f.step)[:, None] * w + s + torch.arange(ni) * f.step).reshape(-1)
    uk, uj, ui = torch.meshgrid(torch.arange(bk), torch.arange(bj), torch.arange(bi), indexing="ij")
    within = (uk * h * w + uj * w + ui).reshape(-1)  # a block's voxels from its origin, in a slab's flat index
    wk, wj, wi = (kaiser(n, f.window) for n in (bk, bj, bi))
    window = (wk[:, None, None] * wj[None, :, None] * wi[None, None, :]).reshape(-1)  # (nb,), C order
    starts = _starts(n_k, bk, f.step)
    num: dict[int, torch.Tensor] = {}  # weighted sums of the estimates, per slice (h, w)
    origin_weight: dict[int, torch.Tensor] = {}  # block weights at their origins, per slice (h, w)
    done = 0  # slices [0, done) are final and written
    for row, k0 in enumerate(starts):
        if is_cancelled is not None and is_cancelled():
            raise CancelledError("Denoising was cancelled.")
        lo, hi = max(0, k0 - sk), min(n_k, k0 + sk + bk)
        pad = ((0, 0), (pj[0] + s, pj[1] + s), (pi[0] + s, pi[1] + s))
        xs = torch.from_numpy(np.pad(np.asarray(noisy[lo:hi], dtype=np.float32), pad, mode="reflect"))
        ps = torch.from_numpy(np.pad(np.asarray(pilot[lo:hi], dtype=np.float32), pad, mode="reflect"))
        origins = _match(ps, k0 - lo, n_k - bk - lo, (bk, bj, bi), (hp, wp), f, ref_plane)  # (nref, m)
        slab_num = torch.zeros(xs.numel(), dtype=torch.float32)
        slab_weight = torch.zeros(xs.numel(), dtype=torch.float32)
        m = origins.shape[1]
        haar = haar_matrix(m)
        xf, pf = xs.reshape(-1), ps.reshape(-1)
        for c0 in range(0, origins.shape[0], REF_CHUNK):
            o = origins[c0 : c0 + REF_CHUNK]
            n = o.shape[0]
            idx = (o[:, :, None] + within).reshape(-1)
            xc = torch.matmul(haar, xf[idx].reshape(n, m, nb) @ dct3.T)
            if hard is None:
                pc = torch.matmul(haar, pf[idx].reshape(n, m, nb) @ dct3.T)
                p2 = pc * pc
                wn = p2 / (p2 + v).clamp_min(1e-30)  # 0 where neither the pilot nor the noise has power
                weight = 1.0 / (wn * wn).sum(dim=(1, 2)).clamp_min(1e-12)  # (n,)
            else:
                wn = (xc.abs() > threshold).float()
                weight = 1.0 / wn.sum(dim=(1, 2)).clamp_min(1.0)
            y = (torch.matmul(haar.T, wn * xc) @ dct3) * (weight[:, None, None] * window)
            slab_num.index_add_(0, idx, y.reshape(-1))
            slab_weight.index_add_(0, o.reshape(-1), weight[:, None].expand(n, m).reshape(-1))
        slab_num = slab_num.reshape(hi - lo, h, w)
        slab_weight = slab_weight.reshape(hi - lo, h, w)
        for z in range(hi - lo):
            k = lo + z
            num[k] = num[k] + slab_num[z] if k in num else slab_num[z].clone()
            origin_weight[k] = origin_weight[k] + slab_weight[z] if k in origin_weight else slab_weight[z].clone()
        frontier = starts[row + 1] - sk if row + 1 < len(starts) else n_k
        while done < frontier:
            den = torch.zeros((h, w), dtype=torch.float32)
            for k in range(max(0, done - bk + 1), done + 1):  # the origins of the blocks that cover slice `done`
                if k in origin_weight:
                    den += _spread(origin_weight[k], wj, wi) * wk[done - k]
            est = (num.pop(done) / den.clamp_min(1e-20))[s + pj[0] : s + pj[0] + n_j, s + pi[0] : s + pi[0] + n_i]
            pilot[done] += np.float32(share) * (est.numpy() - pilot[done])
            origin_weight.pop(done - bk + 1, None)  # no slice still to come lies in its blocks
            done += 1
        if step is not None:
            step(row)


def passes_into(
    noisy: np.ndarray,
    pilot: np.ndarray,
    passes: tuple[MatchedFilter, ...],
    step: Callable[[int], None] | None = None,
    is_cancelled: Callable[[], bool] | None = None,
) -> None:
    """Run ``passes`` in order on ``pilot`` (K, J, I, float32, overwritten) with :func:`matched_into`, each pass taking
    the previous one's estimate as its pilot and, as its noise variance, its factor x the spectrum of the *input's*
    residual (``noisy`` - the ``pilot`` given, before any pass) for its block. ``step`` counts the block rows of every
    pass in turn (:func:`row_count` each)."""
    spectra = {f.block: residual_spectrum(noisy, pilot, f.block) for f in passes}
    offset = 0  # the progress steps of the passes before this one
    for f in passes:
        shifted = None if step is None else (lambda row, at=offset: step(at + row))
        matched_into(noisy, pilot, f.factor * spectra[f.block], shifted, is_cancelled, f=f)
        offset += row_count(noisy.shape[0], f)


def network_free_rows(n_slices: int) -> int:
    """Block rows of :func:`network_free` along a slice axis of ``n_slices`` (its progress steps: both passes)."""
    return sum(row_count(n_slices, f) for f in NETWORK_FREE)


def network_free(
    noisy: np.ndarray,
    noise: float | Mapping[int, np.ndarray],
    step: Callable[[int], None] | None = None,
    is_cancelled: Callable[[], bool] | None = None,
    filters: tuple[MatchedFilter, MatchedFilter] | None = None,
) -> np.ndarray:
    """An estimate of ``noisy`` (K, J, I, its own units) that uses no network, of BM4D's kind: the hard-thresholded
    estimate (:data:`HARD_THRESHOLD`) on groups matched on the input itself, then one Wiener pass with it as the pilot
    (:data:`NETWORK_FREE`, in that order). ``noise`` is the standard deviation of white noise (same units: the noise
    variance of every DCT coefficient is its square) or, by block size in voxels, the noise variance of each DCT
    coefficient of a block of that size (:func:`.wiener.block_shape`, units squared; the benchmarks' correlated-noise
    variants). A new float32 volume (one more than the stage holds otherwise); ``step`` counts the block rows of both
    passes in turn (:func:`network_free_rows`). ``filters`` replaces :data:`NETWORK_FREE` (the benchmarks' variants)."""
    hard, wiener_pass = filters or NETWORK_FREE

    def variance(f: MatchedFilter) -> np.ndarray:
        return np.asarray(noise[f.block]) if isinstance(noise, Mapping) else _white(noisy.shape, f, noise)

    out = np.array(noisy, dtype=np.float32)  # a copy: matched on while the first pass overwrites it behind itself
    rows = row_count(noisy.shape[0], hard)
    matched_into(noisy, out, variance(hard), step, is_cancelled, hard=HARD_THRESHOLD, f=hard)
    shifted = None if step is None else (lambda row: step(rows + row))
    matched_into(noisy, out, variance(wiener_pass), shifted, is_cancelled, f=wiener_pass)
    return out


def _white(shape: tuple[int, ...], f: MatchedFilter, sigma: float) -> np.ndarray:
    """The noise variance ``sigma`` squared for every DCT coefficient of ``f``'s blocks in a volume of ``shape``."""
    return np.full(block_shape(shape, f.block), sigma**2, dtype=np.float32)


def kaiser(n: int, beta: float) -> torch.Tensor:
    """The Kaiser window of ``n`` points and parameter ``beta`` (float32; all ones for beta = 0)."""
    return torch.from_numpy(np.kaiser(n, beta).astype(np.float32))


def _spread(weights: torch.Tensor, wj: torch.Tensor, wi: torch.Tensor) -> torch.Tensor:
    """Spread the weights at block origins (h, w) over their blocks' in-plane extent, each voxel of a block by its
    window: out[j, i] = the sum of weights[j - a, i - c] * wj[a] * wi[c] for 0 <= a < len(wj), 0 <= c < len(wi)."""
    bj, bi = len(wj), len(wi)
    padded = F.pad(weights[None, None], (bi - 1, 0, bj - 1, 0))
    kernel = torch.outer(wj, wi).flip(0, 1)[None, None]  # conv2d correlates: flipped, it sums weights[j - a, i - c]
    return F.conv2d(padded, kernel)[0, 0]


def _match(
    ps: torch.Tensor,
    kr: int,
    k_last: int,
    b: tuple[int, int, int],
    plane: tuple[int, int],
    f: MatchedFilter,
    ref_plane: torch.Tensor,
) -> torch.Tensor:
    """The origins (flat indices into the slab ``ps``) of each reference block's group, (nref, m), nearest first
    and the reference itself first of all.

    ``ps`` is the pilot's slab (padded in-plane by the search margin), ``kr`` the references' slice in it, ``k_last``
    the last slice of the slab where a block may start; ``plane`` the (J, I) extent the reference blocks tile."""
    bk, bj, bi = b
    hp, wp = plane
    sk, s = f.search
    h, w = ps.shape[1], ps.shape[2]
    ref = ps[kr : kr + bk, s : s + hp, s : s + wp]
    dks = [dk for dk in range(-sk, sk + 1) if 0 <= kr + dk <= k_last]
    # One preallocated table and one difference buffer: a list of thousands of small distance rows, each made beside
    # a block-sized temporary, fragmented the heap: a 256x256x200 MRI run with the network-free estimate's search of 7
    # along every axis peaked at 3539 MB, and at 1177 MB this way (benchmarks/RESULTS.md, "Real sizes").
    dist = torch.empty((len(dks) * (2 * s + 1) ** 2, ref_plane.numel()), dtype=torch.float32)  # (n shifts, nref)
    diff = torch.empty_like(ref)
    shifts = []
    for dk in dks:
        other = ps[kr + dk : kr + dk + bk]
        for dj in range(-s, s + 1):
            for di in range(-s, s + 1):
                torch.sub(ref, other[:, s + dj : s + dj + hp, s + di : s + di + wp], out=diff)
                d2 = diff.square_().sum(0)
                dist[len(shifts)] = F.avg_pool2d(d2[None, None], (bj, bi), stride=f.step).reshape(-1)
                shifts.append((kr + dk) * h * w + dj * w + di)
    dist[shifts.index(kr * h * w)] = -1.0  # the reference itself, first
    m = group_size(len(shifts), f.group)
    order = torch.topk(dist, m, dim=0, largest=False, sorted=True).indices  # (m, nref)
    return (torch.tensor(shifts)[order] + ref_plane[None, :]).T.contiguous()
