"""Method-noise check: does the removed residual r = input - output hold anatomy? No clean volume is needed.

A denoiser should remove noise only, so its residual should look like noise. Two reference-free measures of
structure in r, each an estimate of the *share of the residual's energy that is structure* (0 = pure noise,
1 = pure structure), so that one threshold serves CT and MRI in any units:

- ``interslice``: the correlation of neighbouring slices' residuals over the body. Noise that NS-N2N can remove
  is independent between slices, anatomy continues from one slice to the next: for r_i = n_i + s_i with s shared
  by the neighbours, corr(r_i, r_i+1) = S / (S + N).
- ``edge``: 1 - (residual energy in the flattest half of the body) / (residual energy on the strongest 20 % of
  edges of the low-passed output). Noise of uniform level reads 0; removed edges (blurring) read up to 1. This
  one also sees structure removed from a single slice, which the interslice measure cannot.

The same logic gives a *local* Wiener weight for a measured safe action (:func:`blend_toward_input`): where a
residual is locally correlated with its neighbours' residuals, the share S / (S + N) of it is structure, and
blending that share back, y + w r, minimises the squared error of a structure-removing output.

Every array here is (N, H, W) with the **slice axis first**: the engine passes its slice stack in the order it
denoised it (``np.moveaxis(volume, slice_axis, 0)``), in the volume's own intensity units (HU, MRI units); the
scores are unitless. Computations run slice by slice on the CPU with numpy/SciPy, in float32: the score holds a
few slices at a time; the blend holds one float32 map of the volume's size (plus its output, unless written in
place). Limits, measured in benchmarks/results/residual_check: noise correlated between slices reads as
structure (the engine's inter-slice noise warning covers it), and anatomy that changes at the pixel scale from one
slice to the next (thick, low-resolution EPI) reads as noise.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass

import numpy as np
from scipy import ndimage

THRESHOLD = 0.5
"""A slice (or the volume) scoring above this is flagged: the residual holds more structure than noise, the
break-even beyond which the output's squared error exceeds the input's. It separates the tuning cases of
``benchmarks/residual_check.py`` (gains scored <= 0.32, losses >= 0.75; benchmarks/results/residual_check)."""
MAX_PIXELS = 2**16
"""Per-slice scores are computed on every slice, subsampled in-plane by the smallest stride that leaves at most
this many pixels (a 512x512 slice is read on every second row and column): correlations and energy ratios need
no more, and a 512x512x600 volume costs a few seconds."""
EDGE_SHARE = 0.2
"""The strongest share of the body's low-passed output gradient that counts as edges."""
FLAT_SHARE = 0.5
"""The weakest share of it that counts as flat (the noise's own residual level)."""
LOWPASS_PX = 2.0
"""Gaussian sigma (full-resolution pixels) of the low-pass before the output's gradient and the body mask."""
BODY_LEVEL = 0.1
"""Body: low-passed input above p1 + BODY_LEVEL x (p99 - p1) of the volume (air and background excluded)."""
NOTHING_REMOVED = 1e-4
"""A slice whose residual RMS is below this share of the volume's intensity range (p99 - p1) had nothing
removed: it scores 0 (nothing removed, no harm), not the correlation of float rounding errors."""
MIN_BODY_PIXELS = 256
"""A slice with fewer body pixels (after subsampling) is not scored (NaN)."""
BLEND_SIGMA_PX = 4.0
"""Gaussian window (pixels) of the local residual correlation that weighs the blend."""
BLEND_DEAD_ZONE = 0.2
"""Local correlations below this are read as noise (their estimation spread on a window of BLEND_SIGMA_PX); the
blend weight is (rho - dead_zone) / (1 - dead_zone), clipped to 0..1."""
BLEND_EDGE = True
"""Whether the blend's structure map also counts local residual energy above the slice's noise level
(:func:`local_structure`). Window 4 px, edge term on, dead zone 0.2: the best worst case on the tuning cases of
``benchmarks/residual_check.py``; without the edge term, over-smoothed outputs kept most of their loss."""


@dataclass(frozen=True)
class ResidualCheck:
    """Structure in the removed residual of one denoised volume (see the module docstring).

    Scores are unitless shares of the residual energy that is structure: about 0 for a residual of pure noise,
    up to 1. Per-slice tuples have one entry per slice of the stack (slice axis first); NaN where a slice was
    not scored (too little body).
    """

    score: float
    """Overall: the mean over scored slices of ``per_slice``."""
    per_slice: tuple[float, ...]
    """max(interslice, edge) of each slice."""
    interslice: float
    """Mean over slices of ``interslice_per_slice``."""
    edge: float
    """Mean over slices of ``edge_per_slice``."""
    interslice_per_slice: tuple[float, ...]
    """Slice i: the larger of corr(r_i, r_i-1) and corr(r_i, r_i+1) over the body."""
    edge_per_slice: tuple[float, ...]
    """Slice i: 1 - mean r^2 on flat body pixels / mean r^2 on the output's edges."""
    flagged: tuple[int, ...]
    """Indices (in the stack passed) of the slices whose score exceeds ``threshold``."""
    threshold: float
    residual_rms: float
    """Root mean square of the residual over the body, in input units: how much was removed at all."""
    stride: int
    """In-plane subsampling stride the scores were computed with."""

    @property
    def warn(self) -> bool:
        """True when the whole volume scores above the threshold or any slice is flagged."""
        return bool(self.flagged) or self.score > self.threshold

    def to_dict(self) -> dict:
        """JSON-ready (NaN per-slice entries become None)."""
        out = asdict(self)
        for key in ("per_slice", "interslice_per_slice", "edge_per_slice"):
            out[key] = [None if not math.isfinite(v) else round(v, 4) for v in out[key]]
        out["flagged"] = list(self.flagged)
        return out


def _check_pair(noisy: np.ndarray, denoised: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    x, y = np.asarray(noisy), np.asarray(denoised)
    if x.ndim != 3 or x.shape != y.shape:
        raise ValueError(f"noisy and denoised must be 3D arrays of the same shape, got {x.shape} and {y.shape}.")
    if x.shape[0] < 2:
        raise ValueError("the residual check needs at least 2 slices along the first (slice) axis.")
    return x, y


def _stride(shape: tuple[int, ...], max_pixels: int) -> int:
    return max(1, math.ceil(math.sqrt(shape[1] * shape[2] / max_pixels)))


def _body_level(x: np.ndarray, step: int) -> tuple[float, float]:
    """(intensity above which the low-passed input is body, intensity range p99 - p1), from a subsample."""
    sample = x[:: max(1, x.shape[0] // 32), ::step, ::step].astype(np.float32)
    lo, hi = np.percentile(sample, [1, 99])
    return float(lo + BODY_LEVEL * (hi - lo)), float(hi - lo)


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    a = a - a.mean()
    b = b - b.mean()
    denom = math.sqrt(float(np.dot(a, a)) * float(np.dot(b, b)))
    return float(np.dot(a, b)) / denom if denom > 0 else float("nan")


def residual_structure(
    noisy: np.ndarray,
    denoised: np.ndarray,
    threshold: float = THRESHOLD,
    max_pixels: int = MAX_PIXELS,
) -> ResidualCheck:
    """Score the structure in the residual ``noisy - denoised``, without a clean reference.

    Parameters
    ----------
    noisy, denoised : ndarray, shape (N, H, W)
        The input and the output, slice axis first (the stack order the denoiser used), same units.
    threshold : float
        Per-slice score above which a slice is flagged (:data:`THRESHOLD`).
    max_pixels : int
        In-plane subsampling bound per slice (:data:`MAX_PIXELS`).

    Returns
    -------
    ResidualCheck

    Raises
    ------
    ValueError
        Shapes differ, not 3D, or fewer than 2 slices.
    """
    x, y = _check_pair(noisy, denoised)
    n = x.shape[0]
    step = _stride(x.shape, max_pixels)
    level, span = _body_level(x, step)
    floor = (NOTHING_REMOVED * span) ** 2
    sigma = max(0.7, LOWPASS_PX / step)
    inter_pairs = np.full(n - 1, np.nan)
    edge = np.full(n, np.nan)
    energy, count = 0.0, 0
    prev_r = prev_body = None
    prev_removed = False
    for k in range(n):
        xk = x[k, ::step, ::step].astype(np.float32)
        yk = y[k, ::step, ::step].astype(np.float32)
        rk = xk - yk
        body = ndimage.gaussian_filter(xk, sigma) > level
        body_energy = float(np.sum(rk[body].astype(np.float64) ** 2))
        energy, count = energy + body_energy, count + int(body.sum())
        removed = bool(body.any()) and body_energy / max(1, int(body.sum())) > floor
        if prev_r is not None:
            both = body | prev_body
            if not (removed and prev_removed):
                inter_pairs[k - 1] = 0.0
            elif both.sum() >= MIN_BODY_PIXELS:
                inter_pairs[k - 1] = _pearson(prev_r[both], rk[both])
        prev_r, prev_body, prev_removed = rk, body, removed
        if body.sum() < MIN_BODY_PIXELS:
            continue
        if not removed:
            edge[k] = 0.0
            continue
        e_edge, e_flat = _edge_flat_energy(rk, yk, body, sigma)
        if e_edge > 0:
            edge[k] = max(-1.0, 1.0 - e_flat / e_edge)
    with warnings.catch_warnings():  # all-NaN columns (slices without body) are NaN by design
        warnings.simplefilter("ignore", RuntimeWarning)
        left = np.concatenate([[np.nan], inter_pairs])
        right = np.concatenate([inter_pairs, [np.nan]])
        inter = np.nanmax(np.stack([left, right]), axis=0)
        per_slice = np.nanmax(np.stack([inter, edge]), axis=0)
    flagged = tuple(int(i) for i in np.flatnonzero(np.nan_to_num(per_slice, nan=-np.inf) > threshold))
    return ResidualCheck(
        score=_nanmean(per_slice),
        per_slice=tuple(float(v) for v in per_slice),
        interslice=_nanmean(inter),
        edge=_nanmean(edge),
        interslice_per_slice=tuple(float(v) for v in inter),
        edge_per_slice=tuple(float(v) for v in edge),
        flagged=flagged,
        threshold=float(threshold),
        residual_rms=math.sqrt(energy / count) if count else float("nan"),
        stride=step,
    )


def _edge_flat_energy(r: np.ndarray, y: np.ndarray, body: np.ndarray, sigma: float) -> tuple[float, float]:
    """Mean squared residual (minus its body mean) on the output's edges and on its flat body pixels: the
    :data:`EDGE_SHARE` strongest and the :data:`FLAT_SHARE` weakest gradients of the low-passed output."""
    low = ndimage.gaussian_filter(y, sigma)
    grad = np.hypot(ndimage.sobel(low, 0), ndimage.sobel(low, 1))[body]
    res = r[body] - r[body].mean()
    flat_cut, edge_cut = np.quantile(grad, [FLAT_SHARE, 1.0 - EDGE_SHARE])
    return float(np.mean(res[grad >= edge_cut] ** 2)), float(np.mean(res[grad <= flat_cut] ** 2))


def _nanmean(values: np.ndarray) -> float:
    finite = values[np.isfinite(values)]
    return float(finite.mean()) if finite.size else float("nan")


def local_structure(
    noisy: np.ndarray,
    denoised: np.ndarray,
    sigma_px: float = BLEND_SIGMA_PX,
    edge: bool = False,
) -> np.ndarray:
    """Local share of the residual r = noisy - denoised that is structure, (N, H, W), at most 1.

    For slice i, the windowed correlation G(r_i r_j) / sqrt(G(r_i^2) G(r_j^2)) with each neighbour j = i +- 1
    (Gaussian window G of ``sigma_px`` pixels, not mean-centred, so that a removed blob counts), averaged over the
    neighbours there are. It estimates S / (S + N) where the removed structure continues into the neighbours;
    about 0 (spread ~ 1 / (2.5 sigma_px) for white noise) where the residual is noise.

    With ``edge=True``, the larger of that and the local energy excess 1 - N_i / G(r_i^2), N_i the slice's
    residual energy on its flattest body pixels (the noise level): this also sees structure removed from one
    slice only, but reads noise whose level varies within a slice as structure.

    Parameters
    ----------
    noisy, denoised : ndarray, shape (N, H, W)
        Slice axis first, same units.
    sigma_px : float
        Window in pixels (:data:`BLEND_SIGMA_PX`).
    edge : bool
        Add the local energy excess (see above).

    Returns
    -------
    ndarray, float32, shape (N, H, W)
    """
    x, y = _check_pair(noisy, denoised)
    n = x.shape[0]
    out = np.zeros(x.shape, dtype=np.float32)
    flat = _flat_levels(x, y) if edge else None

    def residual(k: int) -> np.ndarray:
        return x[k].astype(np.float32) - y[k].astype(np.float32)

    def finish(k: int, neighbours: int, energy: np.ndarray) -> None:
        out[k] /= neighbours
        if flat is not None and np.isfinite(flat[k]):
            excess = np.divide(flat[k], energy, out=np.ones_like(energy), where=energy > 0)
            np.maximum(out[k], 1.0 - excess, out=out[k])

    r_prev = residual(0)
    e_prev = ndimage.gaussian_filter(r_prev * r_prev, sigma_px)
    for k in range(1, n):
        r_k = residual(k)
        e_k = ndimage.gaussian_filter(r_k * r_k, sigma_px)
        cross = ndimage.gaussian_filter(r_prev * r_k, sigma_px)
        denom = np.sqrt(e_prev * e_k)
        rho = np.divide(cross, denom, out=np.zeros_like(cross), where=denom > 0)
        out[k - 1] += rho
        out[k] += rho
        finish(k - 1, 1 if k == 1 else 2, e_prev)  # slice k - 1 has seen both its neighbours
        r_prev, e_prev = r_k, e_k
    finish(n - 1, 1, e_prev)
    return out


def _flat_levels(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """(N,) residual energy on each slice's flattest body pixels (the noise level); NaN without body."""
    step = _stride(x.shape, MAX_PIXELS)
    level, _ = _body_level(x, step)
    sigma = max(0.7, LOWPASS_PX / step)
    flat = np.full(x.shape[0], np.nan)
    for k in range(x.shape[0]):
        xs = x[k, ::step, ::step].astype(np.float32)
        ys = y[k, ::step, ::step].astype(np.float32)
        body = ndimage.gaussian_filter(xs, sigma) > level
        if body.sum() >= MIN_BODY_PIXELS:
            flat[k] = _edge_flat_energy(xs - ys, ys, body, sigma)[1]
    return flat


@dataclass(frozen=True)
class BlendResult:
    """The output of :func:`blend_toward_input`."""

    volume: np.ndarray
    """float32 (N, H, W), slice axis first, input units: denoised + w (noisy - denoised)."""
    changed_share: float
    """Share of voxels with a non-zero blend weight (0..1)."""
    mean_weight: float
    """Mean blend weight over the volume (0 = the denoised output, 1 = the input)."""


def blend_weight(structure: np.ndarray, dead_zone: float = BLEND_DEAD_ZONE) -> np.ndarray:
    """Blend weight w in 0..1 from a local structure share: (structure - dead_zone) / (1 - dead_zone), clipped."""
    if not 0.0 <= dead_zone < 1.0:
        raise ValueError(f"dead_zone must be in [0, 1), got {dead_zone}.")
    return np.clip((structure - dead_zone) / (1.0 - dead_zone), 0.0, 1.0).astype(np.float32)


def blend_toward_input(
    noisy: np.ndarray,
    denoised: np.ndarray,
    structure: np.ndarray | None = None,
    dead_zone: float = BLEND_DEAD_ZONE,
    sigma_px: float = BLEND_SIGMA_PX,
    edge: bool = BLEND_EDGE,
    out: np.ndarray | None = None,
) -> BlendResult:
    """Blend the output back toward the input where its residual holds structure, voxel by voxel.

    out = denoised + w (noisy - denoised), w = :func:`blend_weight` of the local structure share
    (:func:`local_structure`): the Wiener weight S / (S + N) that minimises the squared error where the
    denoiser removed structure, 0 where the residual is noise, so a good result is left almost unchanged.

    Parameters
    ----------
    noisy, denoised : ndarray, shape (N, H, W)
        Slice axis first, same units.
    structure : ndarray (N, H, W), optional
        A precomputed :func:`local_structure` map; computed here when None.
    dead_zone, sigma_px : float
        :data:`BLEND_DEAD_ZONE`, :data:`BLEND_SIGMA_PX`.
    edge : bool
        :data:`BLEND_EDGE`: also blend where the local residual energy exceeds the slice's noise level.
    out : ndarray float32 (N, H, W), optional
        Where to write the result; may be ``denoised`` itself (slice by slice, after the structure map is
        computed), which saves a volume of memory. A new array when None.

    Returns
    -------
    BlendResult
    """
    x, y = _check_pair(noisy, denoised)
    if structure is None:
        structure = local_structure(x, y, sigma_px, edge)
    elif structure.shape != x.shape:
        raise ValueError(f"structure has shape {structure.shape}, expected {x.shape}.")
    if out is None:
        out = np.empty(x.shape, dtype=np.float32)
    elif out.shape != x.shape or out.dtype != np.float32:
        raise ValueError(f"out must be float32 of shape {x.shape}, got {out.dtype} {out.shape}.")
    changed = 0
    total_w = 0.0
    for k in range(x.shape[0]):
        w = blend_weight(structure[k], dead_zone)
        yk = y[k].astype(np.float32)
        out[k] = yk + w * (x[k].astype(np.float32) - yk)
        changed += int(np.count_nonzero(w))
        total_w += float(w.sum())
    size = float(x.size)
    return BlendResult(out, changed / size, total_w / size)


__all__ = [
    "BLEND_DEAD_ZONE",
    "BLEND_EDGE",
    "BLEND_SIGMA_PX",
    "THRESHOLD",
    "BlendResult",
    "ResidualCheck",
    "blend_toward_input",
    "blend_weight",
    "local_structure",
    "residual_structure",
]
