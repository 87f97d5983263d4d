"""The Wiener stage: the network's output as the pilot of a Wiener filter of the input (docs/METHOD.md section 5).

The network's output f is a good estimate of the signal but keeps the network's own errors. A second,
classical pass uses f only to decide, per 3D block and per DCT coefficient, how much of the *noisy* input to
keep (the second stage of BM3D/BM4D):

    Y = W * X,   W = P**2 / (P**2 + v)

where X and P are the DCT coefficients of a block of the input and of f, and v is the noise variance of that
coefficient. The noise variance comes from the volume itself, not from a user: the mean square of the DCT
coefficients of the removed residual x - f over the whole volume (a spectrum, so in-plane correlated noise is
modelled), scaled by a factor chosen on the tuning set.

Two kinds (``inference.wiener``): 'matched' (the default) groups similar blocks first (:mod:`.block_matching`);
'filters' runs sliding-window filters without block matching (:data:`PASSES`), whose overlapping blocks (a
filter's ``step`` apart) are transformed back and averaged with the weight 1 / sum(W**2), and returns the mean of f
and the filters' estimates. This module holds the spectrum, the sliding-window filters and the stage itself
(:func:`apply_wiener`).

Arrays are (K, J, I) in the volume's own units; block edges are in voxels along K, J and I.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .errors import CancelledError


@dataclass(frozen=True)
class WienerPass:
    """One sliding-window filter: cubic blocks of ``block`` voxels (shorter along an axis shorter than that),
    origins ``step`` voxels apart, noise variance = the residual's spectrum x ``factors[noise class]``."""

    block: int
    step: int
    factors: dict[str, float]


PASSES = (WienerPass(block=8, step=3, factors={"white": 2.0, "correlated": 4.0}),)
"""The filters of ``inference.wiener = 'filters'``; the output is the mean of the network's output and each
filter's estimate. One filter of 8-voxel blocks: a second one of 4-voxel blocks won on the tuning set but lost on
the reporting set's MRI (RESULTS.md, "The Wiener stage's first version"), so it was not kept."""
MATCHED_MAX_LAG1 = 0.75
"""Block matching ('matched') runs where the in-plane noise's lag-1 correlation is at most this along rows and
columns; above it the stage runs the DCT filter of 'filters' instead. 4-voxel blocks cannot tell noise correlated
over several voxels from anatomy: on CT with in-plane correlated noise of lag 0.88 block matching's SSIM fell
below the DCT filter's (tuning set -0.006, reporting set -0.021, there below the network's own), while at lag 0.65
it was still 0.34 dB ahead with SSIM level (RESULTS.md, "Adopted: the DCT filter instead of block matching where
the in-plane noise is strongly correlated")."""
ROWS_PER_CHUNK = 32
"""Block rows (along J) transformed at once: bounds the memory of one pass (about 300 MB at 512x512)."""


def dct_matrix(n: int) -> torch.Tensor:
    """The orthonormal DCT-II matrix (n, n): row k is the k-th basis vector, so ``D @ v`` transforms v."""
    k = np.arange(n)[:, None]
    i = np.arange(n)[None, :]
    m = np.cos(np.pi * (2 * i + 1) * k / (2 * n)) * np.sqrt(2.0 / n)
    m[0] /= np.sqrt(2.0)
    return torch.tensor(m, dtype=torch.float32)


def _transform(blocks: torch.Tensor, dk: torch.Tensor, dj: torch.Tensor, di: torch.Tensor) -> torch.Tensor:
    """Separable 3D transform of (..., bk, bj, bi) blocks by the matrices dk, dj, di (each applied as ``D @ v``
    along its axis)."""
    out = torch.matmul(blocks, di.T)  # along I
    out = torch.matmul(dj, out)  # along J
    return torch.matmul(out.movedim(-3, -1), dk.T).movedim(-1, -3)  # along K


def _starts(n: int, b: int, s: int) -> list[int]:
    """Block origins along an axis of ``n`` voxels: every ``s`` from 0, and the last at n - b so that the blocks
    cover the axis."""
    starts = list(range(0, n - b + 1, s))
    if starts[-1] != n - b:
        starts.append(n - b)
    return starts


def block_shape(shape: tuple[int, int, int], block: int) -> tuple[int, int, int]:
    """The block of a volume of ``shape`` (K, J, I): ``block`` voxels along each axis, or the axis's length where it
    is shorter."""
    return tuple(min(block, n) for n in shape)  # type: ignore[return-value]


def residual_spectrum(noisy: np.ndarray, pilot: np.ndarray, block: int) -> np.ndarray:
    """Mean square of the DCT coefficients of x - f over non-overlapping blocks of ``block`` voxels, shape
    :func:`block_shape`, in the volume's units squared: the noise variance of each coefficient as far as the network
    removed it."""
    b = block_shape(noisy.shape, block)
    d = [dct_matrix(n) for n in b]
    total = torch.zeros(b, dtype=torch.float64)
    count = 0
    for k in _starts(noisy.shape[0], b[0], b[0]):
        r = torch.from_numpy(
            np.asarray(noisy[k : k + b[0]], dtype=np.float32) - np.asarray(pilot[k : k + b[0]], dtype=np.float32)
        )
        blocks = r.unfold(1, b[1], b[1]).unfold(2, b[2], b[2]).permute(1, 2, 0, 3, 4)  # (nj, ni, bk, bj, bi)
        c = _transform(blocks.contiguous(), *d)
        total += (c.double() ** 2).sum(dim=(0, 1))
        count += c.shape[0] * c.shape[1]
    return (total / max(count, 1)).numpy()


@dataclass
class _Sweep:
    """One filter's pass along K: its block origins, in-plane padding and the rolling sums of the slices that its
    blocks still to come may touch."""

    block: tuple[int, int, int]
    step: int
    variance: torch.Tensor
    starts: list[int]
    pad_j: tuple[int, int]
    pad_i: tuple[int, int]
    num: dict[int, torch.Tensor]
    den: dict[int, torch.Tensor]
    row: int = 0

    def frontier(self, n_slices: int) -> int:
        """Slices below this are final for this pass: its next block starts there (all are, once it is done)."""
        return self.starts[self.row] if self.row < len(self.starts) else n_slices


def wiener_into(
    noisy: np.ndarray,
    pilot: np.ndarray,
    filters: Sequence[tuple[int, int, np.ndarray]],
    step: Callable[[int], None] | None = None,
    is_cancelled: Callable[[], bool] | None = None,
    share: float = 1.0,
) -> None:
    """Move ``pilot`` in place by ``share`` towards the mean of the Wiener estimates of ``noisy`` with ``pilot`` as
    the signal estimate, one estimate per filter (``share`` = 1: replace it by that mean).

    Parameters
    ----------
    noisy : ndarray (K, J, I)
        The input, any real dtype, in its own units; only read.
    pilot : ndarray float32 (K, J, I)
        The network's output, same units; overwritten slice by slice with the result. A slice is written once no
        block still to come of any filter covers it (blocks advance along K), so no second volume is held.
    filters : sequence of (block, step, noise_variance)
        Each filter's block edge and block spacing in voxels, and the noise variance of each DCT coefficient of its
        block (shape :func:`block_shape` of the volume and ``block``), in units squared.
    step : callable(row), optional
        Called after each block row along K of every filter, ``row`` counting them all from 0 (progress; their
        number is :func:`row_count` for the engine's filters).
    is_cancelled : callable, optional
        Checked before every block row; raises :class:`CancelledError` (``pilot`` is then partly overwritten).
    share : float
        The weight of the estimates' mean in the result, 0..1.
    """
    shape = noisy.shape
    sweeps = []
    for block, stride, variance in filters:
        b = block_shape(shape, block)
        sweeps.append(
            _Sweep(
                b,
                stride,
                torch.as_tensor(np.asarray(variance, dtype=np.float32)),
                _starts(shape[0], b[0], stride),
                _padding(shape[1], b[1], stride),
                _padding(shape[2], b[2], stride),
                {},
                {},
            )
        )
    done = 0  # slices [0, done) are final and written
    for row in range(sum(len(w.starts) for w in sweeps)):
        if is_cancelled is not None and is_cancelled():
            raise CancelledError("Denoising was cancelled.")
        _sweep_row(noisy, pilot, min((w for w in sweeps if w.row < len(w.starts)), key=lambda w: w.starts[w.row]))
        end = min(w.frontier(shape[0]) for w in sweeps)
        while done < end:
            mean = sum(_finish(w, done, shape) for w in sweeps) / len(sweeps)
            pilot[done] += np.float32(share) * (mean.numpy() - pilot[done])
            done += 1
        if step is not None:
            step(row)


def _sweep_row(noisy: np.ndarray, pilot: np.ndarray, w: _Sweep) -> None:
    """Filter the next block row of one pass and add it to that pass's rolling sums."""
    k0 = w.starts[w.row]
    bk = w.block[0]
    x = _pad(noisy[k0 : k0 + bk], w.pad_j, w.pad_i)
    p = _pad(pilot[k0 : k0 + bk], w.pad_j, w.pad_i)
    ynum, yden = _filter_slab(x, p, w.variance, w.block, w.step)
    for dk in range(bk):
        kk = k0 + dk
        if kk not in w.num:
            w.num[kk] = torch.zeros(x.shape[1:], dtype=torch.float32)
            w.den[kk] = torch.zeros(x.shape[1:], dtype=torch.float32)
        w.num[kk] += ynum[dk]
        w.den[kk] += yden[dk]
    w.row += 1


def _finish(w: _Sweep, k: int, shape: tuple[int, ...]) -> torch.Tensor:
    """One pass's final estimate of slice ``k`` (J, I), its sums released."""
    est = w.num.pop(k) / w.den.pop(k).clamp_min(1e-20)
    return est[w.pad_j[0] : w.pad_j[0] + shape[1], w.pad_i[0] : w.pad_i[0] + shape[2]]


def _padding(n: int, b: int, step: int) -> tuple[int, int]:
    """In-plane padding (before, after) of an axis of ``n`` voxels for blocks of ``b`` every ``step``: b - 1 on each
    side, so that the first and last voxel lie in as many blocks as a middle one, plus what makes the padded length
    a whole number of steps."""
    before = b - 1
    extra = -(n + 2 * before - b) % step
    return before, before + extra


def _pad(slab: np.ndarray, pj: tuple[int, int], pi: tuple[int, int]) -> torch.Tensor:
    """Mirror-pad a (bk, J, I) slab in-plane (numpy's 'reflect', which repeats the mirror where the pad is longer
    than the axis) as a float32 tensor."""
    return torch.from_numpy(np.pad(np.asarray(slab, dtype=np.float32), ((0, 0), pj, pi), mode="reflect"))


def _filter_slab(
    x: torch.Tensor, p: torch.Tensor, v: torch.Tensor, b: tuple[int, int, int], step: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Wiener-filter every block (``b``, origins ``step`` apart in-plane) of one block row (bk slices, padded
    in-plane) and fold the weighted blocks back: (numerator, weight) each (bk, H, W)."""
    bk, bj, bi = b
    d = [dct_matrix(n) for n in b]
    hp, wp = x.shape[1], x.shape[2]
    nj = (hp - bj) // step + 1
    num = torch.zeros((bk, hp, wp), dtype=torch.float32)
    den = torch.zeros((bk, hp, wp), dtype=torch.float32)
    for j0 in range(0, nj, ROWS_PER_CHUNK):
        j1 = min(nj, j0 + ROWS_PER_CHUNK)
        rows = slice(j0 * step, (j1 - 1) * step + bj)
        xs = x[:, rows].unfold(1, bj, step).unfold(2, bi, step).permute(1, 2, 0, 3, 4).contiguous()
        ps = p[:, rows].unfold(1, bj, step).unfold(2, bi, step).permute(1, 2, 0, 3, 4).contiguous()
        xc = _transform(xs, *d)
        pc = _transform(ps, *d)
        p2 = pc * pc
        w = p2 / (p2 + v).clamp_min(1e-30)  # 0 where neither the pilot nor the noise has power
        weight = 1.0 / (w * w).sum(dim=(-3, -2, -1)).clamp_min(1e-12)  # (nj', ni)
        y = _transform(w * xc, d[0].T, d[1].T, d[2].T) * weight[..., None, None, None]
        h = (j1 - 1 - j0) * step + bj
        # fold: (1, bk*bj*bi, L) with L = nj' * ni blocks, kernel (bj, bi), stride step
        cols = y.permute(2, 3, 4, 0, 1).reshape(1, bk * bj * bi, -1)
        num[:, rows] += F.fold(cols, (h, wp), (bj, bi), stride=step).reshape(bk, h, wp)
        ones = weight[None, None, None].expand(bk, bj, bi, -1, -1).reshape(1, bk * bj * bi, -1)
        den[:, rows] += F.fold(ones, (h, wp), (bj, bi), stride=step).reshape(bk, h, wp)
    return num, den


def noise_class(lag1: tuple[float, float] | None) -> str:
    """'white' when the in-plane noise's lag-1 correlation was measured and is at most
    ``inference.WHITE_LAG1`` along rows and columns, else 'correlated' (low-dose CT, or not measured)."""
    from .inference import WHITE_LAG1

    if lag1 is not None and max(abs(v) for v in lag1) <= WHITE_LAG1:
        return "white"
    return "correlated"


def stage_kind(kind: str, lag1: tuple[float, float] | None) -> str:
    """The stage that ``inference.wiener = kind`` runs for noise of in-plane lag-1 correlation ``lag1`` (rows,
    columns; None: not measured): 'matched' becomes 'filters' where ``lag1`` exceeds :data:`MATCHED_MAX_LAG1`."""
    if kind == "matched" and lag1 is not None and max(abs(v) for v in lag1) > MATCHED_MAX_LAG1:
        return "filters"
    return kind


def row_count(n_slices: int, kind: str, lag1: tuple[float, float] | None = None) -> int:
    """Block rows of the stage ``kind`` ('filters': every filter of :data:`PASSES`; 'matched': the block-matched filter,
    or the filters where :func:`stage_kind` says so for ``lag1``) along a slice axis of ``n_slices`` (the stage's
    progress steps)."""
    kind = stage_kind(kind, lag1)
    if kind == "matched":
        from . import block_matching  # it builds on this module

        cls = noise_class(lag1)
        free = block_matching.network_free_rows(n_slices) if block_matching.NETWORK_FREE_SHARE[cls] else 0
        return sum(block_matching.row_count(n_slices, f) for f in block_matching.PASSES[cls]) + free
    return sum(len(_starts(n_slices, min(f.block, n_slices), f.step)) for f in PASSES)


def _matched_entry(shape: tuple[int, ...], f) -> dict:
    """The report's description of a block-matched filter ``f`` (``block_matching.MatchedFilter``) on a volume of
    ``shape``: its block in voxels (slice axis first), step, factor, group, search and window."""
    return {
        "block": list(block_shape(shape, f.block)),
        "step": f.step,
        "factor": f.factor,
        "group": f.group,
        "search": list(f.search),
        "window": f.window,
    }


def apply_wiener(
    noisy: np.ndarray,
    denoised: np.ndarray,
    lag1: tuple[float, float] | None,
    kind: str,
    step: Callable[[int], None] | None = None,
    is_cancelled: Callable[[], bool] | None = None,
) -> dict:
    """The Wiener stage on a run's output: ``denoised`` (the network's output, float32, same shape as ``noisy``,
    slice axis first) becomes, in place,

    - ``kind`` = 'matched' (the default's): the block-matched Wiener estimate of ``noisy`` with it as the pilot
      (:mod:`.block_matching`), the noise variance being the residual's spectrum for its block times its factor;
      for white noise (``lag1`` at most ``inference.WHITE_LAG1``) two passes of ``block_matching.PASSES``, the
      second with the first's estimate as its pilot and the same residual's spectrum, then averaged with the
      network-free estimate of ``block_matching.network_free`` (weight ``block_matching.NETWORK_FREE_SHARE``) at
      the noise level read inside the body (``noise_estimates.body_sigma``); where that level cannot be read
      (0), without it, the entry saying so (``network_free_reason``);
      where the in-plane noise is strongly correlated (``lag1`` above :data:`MATCHED_MAX_LAG1`), 'filters' instead,
      the entry then saying so (``requested`` and ``reason``);
    - ``kind`` = 'filters': the mean of itself and the Wiener estimates of every filter of :data:`PASSES`, the
      noise variance of each being the residual's spectrum (for its block) times its factor for the noise class of
      ``lag1``.

    Returns the report's ``wiener`` entry: the kind, the noise class, the filters' constants, the share of the
    estimates in the output ('matched': also the network-free estimate's share and, where it was read, its noise
    level in the volume's units), and the residual's RMS in the volume's units (the square root of the spectrum's mean
    for 8-voxel blocks, before any factor)."""
    cls = noise_class(lag1)
    rms = float(np.sqrt(residual_spectrum(noisy, denoised, 8).mean()))
    ran = stage_kind(kind, lag1)
    instead = {}
    if ran != kind:
        shown = ", ".join(f"{v:.2f}" for v in lag1)  # type: ignore[union-attr]
        instead = {
            "requested": kind,
            "reason": f"in-plane noise strongly correlated (lag-1 correlation {shown} > {MATCHED_MAX_LAG1}): "
            "4-voxel blocks cannot tell it from anatomy, so the DCT filter of 8-voxel blocks ran instead",
        }
    kind = ran
    if kind == "matched":
        from . import block_matching  # it builds on this module
        from .noise_estimates import body_sigma

        passes = block_matching.PASSES[cls]
        block_matching.passes_into(noisy, denoised, passes, step, is_cancelled)
        mix = block_matching.NETWORK_FREE_SHARE[cls]
        free: dict = {"network_free_share": 0.0}
        if mix:
            sigma = body_sigma(noisy)
            free = {
                "network_free_share": mix if sigma > 0 else 0.0,
                "network_free_sigma": sigma,
                "network_free_filters": [_matched_entry(noisy.shape, f) for f in block_matching.NETWORK_FREE],
            }
            done = sum(block_matching.row_count(noisy.shape[0], f) for f in passes)
            shifted = None if step is None else (lambda row: step(done + row))
            if sigma > 0:
                estimate = block_matching.network_free(noisy, sigma, shifted, is_cancelled)
                for k in range(noisy.shape[0]):  # slice by slice: no third volume
                    denoised[k] += np.float32(mix) * (estimate[k] - denoised[k])
            else:
                free["network_free_reason"] = "no noise level could be read inside the body"
                for row in range(block_matching.network_free_rows(noisy.shape[0])) if shifted is not None else ():
                    shifted(row)  # the progress the estimate would have made
        return {
            "applied": True,
            "kind": kind,
            "noise_class": cls,
            "filters": [_matched_entry(noisy.shape, f) for f in passes],
            "share": 1.0,
            **free,
            "residual_rms": rms,
        }
    if kind != "filters":
        raise ValueError(f"unknown Wiener stage {kind!r}")
    spectra = [residual_spectrum(noisy, denoised, f.block) for f in PASSES]
    share = len(PASSES) / (len(PASSES) + 1)
    filters = [(f.block, f.step, f.factors[cls] * spectrum) for f, spectrum in zip(PASSES, spectra, strict=True)]
    wiener_into(noisy, denoised, filters, step, is_cancelled, share)
    return {
        "applied": True,
        "kind": kind,
        "noise_class": cls,
        "filters": [
            {"block": list(block_shape(noisy.shape, f.block)), "step": f.step, "factor": f.factors[cls]} for f in PASSES
        ],
        "share": share,
        "residual_rms": rms,
        **instead,
    }
