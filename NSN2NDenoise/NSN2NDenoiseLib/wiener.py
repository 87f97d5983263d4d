"""The Wiener stage: the network's output as the pilot of a sliding-window DCT Wiener filter (docs/METHOD.md
section 5).

The network's output f is a good estimate of the signal but keeps the network's own errors. A second,
classical pass uses f only to decide, per 3D block and per DCT coefficient, how much of the *noisy* input to
keep (the second stage of BM3D/BM4D, here without block matching):

    Y = W * X,   W = P**2 / (P**2 + v)

where X and P are the DCT coefficients of a block of the input and of f, and v is the noise variance of that
coefficient. Overlapping blocks (``STEP`` apart) are transformed back and averaged with the weight 1 / sum(W**2)
(each block's inverse noise level after filtering).

The noise variance comes from the volume itself, not from a user: the mean square of the DCT coefficients of
the removed residual x - f over the whole volume (a spectrum, so in-plane correlated noise is modelled), scaled
by a factor chosen on the tuning set for each noise class (white or in-plane correlated; :data:`FACTORS`).

Arrays are (K, J, I) in the volume's own units; blocks are ``BLOCK`` voxels along K, J and I.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

from .errors import CancelledError

BLOCK = 8
"""Block edge in voxels along K, J and I."""
STEP = 3
"""Distance between neighbouring blocks' origins along each axis, in voxels."""
FACTORS = {"white": 2.0, "correlated": 4.0}
"""Noise-variance factor on the residual's spectrum, by the in-plane noise class of the run's report (white:
lag-1 correlation at most ``inference.WHITE_LAG1``). Chosen on the tuning set (RESULTS.md, "The Wiener
stage")."""
SHARE = 0.5
"""The Wiener estimate's share of the output; the rest is the network's output. The two err differently (the
network's output is biased towards smooth anatomy, the Wiener estimate keeps some noise), so their mean beats
both on the tuning set (RESULTS.md, "The Wiener stage")."""
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


def block_shape(shape: tuple[int, int, int]) -> tuple[int, int, int]:
    """The block of a volume of ``shape`` (K, J, I): :data:`BLOCK` along each axis, or the axis's length where it is
    shorter."""
    return tuple(min(BLOCK, n) for n in shape)  # type: ignore[return-value]


def residual_spectrum(noisy: np.ndarray, pilot: np.ndarray) -> np.ndarray:
    """Mean square of the DCT coefficients of x - f over non-overlapping blocks, shape :func:`block_shape`, in the
    volume's units squared: the noise variance of each coefficient as far as the network removed it."""
    b = block_shape(noisy.shape)
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


def wiener_into(
    noisy: np.ndarray,
    pilot: np.ndarray,
    noise_variance: np.ndarray,
    step: Callable[[int], None] | None = None,
    is_cancelled: Callable[[], bool] | None = None,
    share: float = 1.0,
) -> None:
    """Move ``pilot`` in place by ``share`` towards the Wiener estimate of ``noisy`` with ``pilot`` as the signal
    estimate (``share`` = 1: replace it).

    Parameters
    ----------
    noisy : ndarray (K, J, I)
        The input, any real dtype, in its own units; only read.
    pilot : ndarray float32 (K, J, I)
        The network's output, same units; overwritten slice by slice with the result. A slice is written once no
        block still to come covers it (blocks advance along K), so no second volume is held.
    noise_variance : ndarray, :func:`block_shape` of the volume
        The noise variance of each DCT coefficient of a block, in units squared.
    step : callable(row), optional
        Called after each of the ``len(_starts(K, bk, STEP))`` block rows along K (progress).
    is_cancelled : callable, optional
        Checked before every block row; raises :class:`CancelledError` (``pilot`` is then partly overwritten).
    share : float
        The Wiener estimate's weight in the result, 0..1.
    """
    shape = noisy.shape
    b = block_shape(shape)
    d = [dct_matrix(n) for n in b]
    v = torch.as_tensor(np.asarray(noise_variance, dtype=np.float32))
    starts_k = _starts(shape[0], b[0], STEP)
    # In-plane: pad so that every voxel is covered by as many blocks as in the middle.
    pj, pi = _padding(shape[1], b[1]), _padding(shape[2], b[2])
    hp, wp = shape[1] + sum(pj), shape[2] + sum(pi)
    # Rolling accumulators over the slices that blocks still to come may touch.
    acc_num: dict[int, torch.Tensor] = {}
    acc_den: dict[int, torch.Tensor] = {}
    done = 0  # slices [0, done) are final and written
    for row, k0 in enumerate(starts_k):
        if is_cancelled is not None and is_cancelled():
            raise CancelledError("Denoising was cancelled.")
        x = _pad(noisy[k0 : k0 + b[0]], pj, pi)
        p = _pad(pilot[k0 : k0 + b[0]], pj, pi)
        ynum, yden = _filter_slab(x, p, v, b, d)
        for dk in range(b[0]):
            kk = k0 + dk
            if kk not in acc_num:
                acc_num[kk] = torch.zeros((hp, wp), dtype=torch.float32)
                acc_den[kk] = torch.zeros((hp, wp), dtype=torch.float32)
            acc_num[kk] += ynum[dk]
            acc_den[kk] += yden[dk]
        nxt = starts_k[row + 1] if row + 1 < len(starts_k) else shape[0]
        while done < nxt:
            res = (acc_num.pop(done) / acc_den.pop(done).clamp_min(1e-20))[
                pj[0] : pj[0] + shape[1], pi[0] : pi[0] + shape[2]
            ]
            pilot[done] += np.float32(share) * (res.numpy() - pilot[done])
            done += 1
        if step is not None:
            step(row)


def _padding(n: int, b: int) -> tuple[int, int]:
    """In-plane padding (before, after) of an axis of ``n`` voxels: b - 1 on each side, so that the first and last
    voxel lie in as many blocks as a middle one, plus what makes the padded length a whole number of steps."""
    before = b - 1
    extra = -(n + 2 * before - b) % STEP
    return before, before + extra


def _pad(slab: np.ndarray, pj: tuple[int, int], pi: tuple[int, int]) -> torch.Tensor:
    """Mirror-pad a (bk, J, I) slab in-plane (numpy's 'reflect', which repeats the mirror where the pad is longer
    than the axis) as a float32 tensor."""
    return torch.from_numpy(np.pad(np.asarray(slab, dtype=np.float32), ((0, 0), pj, pi), mode="reflect"))


def _filter_slab(
    x: torch.Tensor, p: torch.Tensor, v: torch.Tensor, b: tuple[int, int, int], d: list[torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Wiener-filter every block of one block row (bk slices, padded in-plane) and fold the weighted blocks back:
    (numerator, weight) each (bk, H, W)."""
    bk, bj, bi = b
    hp, wp = x.shape[1], x.shape[2]
    nj = (hp - bj) // STEP + 1
    num = torch.zeros((bk, hp, wp), dtype=torch.float32)
    den = torch.zeros((bk, hp, wp), dtype=torch.float32)
    for j0 in range(0, nj, ROWS_PER_CHUNK):
        j1 = min(nj, j0 + ROWS_PER_CHUNK)
        rows = slice(j0 * STEP, (j1 - 1) * STEP + bj)
        xs = x[:, rows].unfold(1, bj, STEP).unfold(2, bi, STEP).permute(1, 2, 0, 3, 4).contiguous()
        ps = p[:, rows].unfold(1, bj, STEP).unfold(2, bi, STEP).permute(1, 2, 0, 3, 4).contiguous()
        xc = _transform(xs, *d)
        pc = _transform(ps, *d)
        p2 = pc * pc
        w = p2 / (p2 + v).clamp_min(1e-30)  # 0 where neither the pilot nor the noise has power
        weight = 1.0 / (w * w).sum(dim=(-3, -2, -1)).clamp_min(1e-12)  # (nj', ni)
        y = _transform(w * xc, d[0].T, d[1].T, d[2].T) * weight[..., None, None, None]
        h = (j1 - 1 - j0) * STEP + bj
        # fold: (1, bk*bj*bi, L) with L = nj' * ni blocks, kernel (bj, bi), stride STEP
        cols = y.permute(2, 3, 4, 0, 1).reshape(1, bk * bj * bi, -1)
        num[:, rows] += F.fold(cols, (h, wp), (bj, bi), stride=STEP).reshape(bk, h, wp)
        ones = weight[None, None, None].expand(bk, bj, bi, -1, -1).reshape(1, bk * bj * bi, -1)
        den[:, rows] += F.fold(ones, (h, wp), (bj, bi), stride=STEP).reshape(bk, h, wp)
    return num, den


def noise_class(lag1: tuple[float, float] | None) -> str:
    """'white' when the in-plane noise's lag-1 correlation was measured and is at most
    ``inference.WHITE_LAG1`` along rows and columns, else 'correlated' (low-dose CT, or not measured)."""
    from .inference import WHITE_LAG1

    if lag1 is not None and max(abs(v) for v in lag1) <= WHITE_LAG1:
        return "white"
    return "correlated"


def row_count(n_slices: int) -> int:
    """Block rows of :func:`wiener_into` along a slice axis of ``n_slices`` (its progress steps)."""
    return len(_starts(n_slices, min(BLOCK, n_slices), STEP))


def apply_wiener(
    noisy: np.ndarray,
    denoised: np.ndarray,
    lag1: tuple[float, float] | None,
    step: Callable[[int], None] | None = None,
    is_cancelled: Callable[[], bool] | None = None,
) -> dict:
    """The Wiener stage on a run's output: ``denoised`` (the network's output, float32, same shape as ``noisy``,
    slice axis first) becomes, in place, the mean (weight :data:`SHARE`) of itself and the Wiener estimate of
    ``noisy`` with it as the pilot, the noise variance being the residual's spectrum times :data:`FACTORS` of the
    noise class of ``lag1``.

    Returns the report's ``wiener`` entry: noise class, factor, and the residual's RMS in the volume's units (the
    square root of the spectrum's mean, before the factor)."""
    cls = noise_class(lag1)
    spectrum = residual_spectrum(noisy, denoised)
    wiener_into(noisy, denoised, FACTORS[cls] * spectrum, step, is_cancelled, SHARE)
    return {
        "applied": True,
        "noise_class": cls,
        "factor": FACTORS[cls],
        "share": SHARE,
        "residual_rms": float(np.sqrt(spectrum.mean())),
        "block": list(block_shape(noisy.shape)),
        "step": STEP,
    }
