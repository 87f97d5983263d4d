"""The front API of the engine: one function, array in, array out.

Every front end (the ``nsn2n`` command line, the Slicer module, the batch script, the benchmarks) calls
:func:`denoise` and nothing deeper. Arrays are in K,J,I order (slice, row, column), as Slicer's
``arrayFromVolume`` and SimpleITK's ``GetArrayFromImage`` give them; spacing is in mm in the same order.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import numpy as np
import torch

from . import __version__
from .config import INTERPOLATION_TARGETS, THREE_SLICE_TARGETS, NSN2NConfig, make_config
from .errors import CancelledError, DeviceError, InputError
from .inference import apply_safeguard, predict_slices
from .normalization import denormalize, fit_intensity_map, normalize
from .report import RunReport
from .training import train_network
from .weights import BODY_THRESHOLD, compute_three_slice_maps, compute_weight_maps, gaussian_blur, interpolation_offset

ProgressFn = Callable[[str, int, int, float | None], None]

# 'auto' picks the largest-spacing axis as slice axis when it exceeds the others by this factor.
ANISOTROPY_RATIO = 1.2
# Above this correlation of neighbouring slices' noise the report warns (METHOD.md section 6); see
# interslice_noise_correlation for the figures it was set from.
CORRELATION_WARNING = 0.6
# Below this share of matched pixels the report warns that slices are too far apart to help each other.
MATCHED_WARNING = 0.3


class CancelToken:
    """A thread-safe cancel flag: call :meth:`cancel` from any thread; the run stops within one iteration."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def cancel(self) -> None:
        self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    def __call__(self) -> bool:
        return self._event.is_set()


CancelLike = CancelToken | threading.Event | Callable[[], bool] | None


def _cancel_check(cancel: CancelLike) -> Callable[[], bool] | None:
    if cancel is None:
        return None
    if isinstance(cancel, threading.Event):
        return cancel.is_set
    if callable(cancel):
        return cancel
    raise TypeError("cancel must be a CancelToken, a threading.Event or a callable returning bool.")


def validate_volume(volume: np.ndarray, min_slices: int = 3) -> np.ndarray:
    """Check that ``volume`` is a real 3D scalar volume NSN2N can denoise; return it as a float64 array.

    Raises
    ------
    InputError
        With a message that says what to do, for: not an array, complex or non-numeric values, not 3D,
        fewer than ``min_slices`` slices along every axis, slices smaller than 4x4, NaN or Inf voxels.
    """
    try:
        arr = np.asarray(volume)
    except Exception as exc:  # pragma: no cover - exotic array-likes
        raise InputError(f"The input is not an array: {exc}") from exc
    if arr.dtype == object or arr.dtype.kind not in "biuf":
        raise InputError(
            f"The volume has data type {arr.dtype}; NSN2N needs real scalar voxels (integer or float). "
            "Convert complex data to magnitude first."
        )
    if arr.ndim == 2:
        raise InputError("The input is a 2D image; NSN2N needs a 3D volume with at least 3 slices.")
    if arr.ndim == 4:
        raise InputError(
            f"The input has 4 dimensions {arr.shape} (a time series or a vector/RGB image); "
            "denoise one time point or one component at a time."
        )
    if arr.ndim != 3:
        raise InputError(f"The input has {arr.ndim} dimensions; NSN2N needs a 3D volume (K,J,I).")
    if arr.dtype.kind == "b":
        raise InputError("The volume is binary (a mask or label map); there is no noise to remove.")
    finite = np.isfinite(arr)
    if not finite.all():
        bad = int(arr.size - np.count_nonzero(finite))
        raise InputError(
            f"The volume has {bad} NaN or infinite voxels; replace them (for example with the background value) "
            "before denoising."
        )
    return arr.astype(np.float64, copy=False)


def choose_slice_axis(shape: tuple[int, ...], spacing: tuple[float, float, float], choice: str) -> int:
    """The array axis (0=K, 1=J, 2=I) to use as slice axis. See ``NSN2NConfig.slice_axis``."""
    if choice != "auto":
        return {"k": 0, "j": 1, "i": 2}[choice]
    sp = np.asarray(spacing, dtype=float)
    axis = int(np.argmax(sp))
    others = np.delete(sp, axis)
    if sp[axis] >= ANISOTROPY_RATIO * others.max() and shape[axis] >= 3:
        return axis
    return 0


def resolve_device(choice: str) -> torch.device:
    """'auto' -> CUDA when available else CPU; 'cuda' without a usable GPU raises :class:`DeviceError`."""
    if choice == "cpu":
        return torch.device("cpu")
    available = torch.backends.cuda.is_built() and torch.cuda.is_available()
    if choice == "cuda" and not available:
        raise DeviceError("CUDA was requested but no usable GPU is available: choose the CPU (or 'auto').")
    return torch.device("cuda") if available else torch.device("cpu")


def _check_spacing(spacing) -> tuple[float, float, float]:
    try:
        sp = tuple(float(s) for s in spacing)
    except Exception as exc:
        raise InputError(f"spacing must be three numbers in mm (K,J,I order), got {spacing!r}.") from exc
    if len(sp) != 3 or not all(np.isfinite(s) and s > 0 for s in sp):
        raise InputError(f"spacing must be three positive numbers in mm (K,J,I order), got {spacing!r}.")
    return sp  # type: ignore[return-value]


def estimate_noise_sigma(slices: torch.Tensor) -> float:
    """Noise standard deviation (normalised units) from neighbouring-slice differences.

    For independent noise of std sigma in two matched slices, d = x_i+1 - x_i has std sqrt(2) sigma; the median
    absolute deviation over the body makes the estimate robust to the anatomy that does change.
    """
    estimates = []
    with torch.no_grad():
        for i in range(slices.shape[0] - 1):
            a, b = slices[i], slices[i + 1]
            d = b - a
            body = gaussian_blur(torch.maximum(a, b).unsqueeze(0), 2.0)[0] > BODY_THRESHOLD
            vals = d[body] if body.float().mean() > 0.01 else d.flatten()
            mad = (vals - vals.median()).abs().median()
            estimates.append(float(1.4826 * mad / np.sqrt(2.0)))
    return float(np.median(estimates))


def interslice_noise_correlation(slices: torch.Tensor, flat_share: float = 0.3) -> float:
    """Correlation of the noise of neighbouring slices (METHOD.md section 6), median over pairs.

    The residual x - Gaussian(x, 2 px) is compared between neighbours only where the anatomy is flat (the
    ``flat_share`` of body pixels with the smallest low-passed gradient), so that edges, which continue from slice
    to slice, do not pass for correlated noise. Measured on the development CT: 0.13-0.25 for low-dose CT noise,
    0.45 for in-plane correlated noise, 0.78 for noise correlated across slices (benchmarks/RESULTS.md).
    A nearly noise-free volume reads high too (the anatomy's own correlation): the warning says "may".
    """
    out = []
    with torch.no_grad():
        low = gaussian_blur(slices, 2.0)
        residual = slices - low
        grad = torch.zeros_like(slices)
        grad[:, 1:, :] += (low[:, 1:, :] - low[:, :-1, :]).abs()
        grad[:, :, 1:] += (low[:, :, 1:] - low[:, :, :-1]).abs()
        for k in range(slices.shape[0] - 1):
            body = torch.minimum(low[k], low[k + 1]) > BODY_THRESHOLD
            if int(body.sum()) < 100:
                body = torch.ones_like(body)
            g = torch.maximum(grad[k], grad[k + 1])
            flat = body & (g <= torch.quantile(g[body].float(), flat_share))
            a = residual[k][flat] - residual[k][flat].mean()
            b = residual[k + 1][flat] - residual[k + 1][flat].mean()
            denom = ((a * a).sum() * (b * b).sum()).sqrt()
            if denom > 0:
                out.append(float((a * b).sum() / denom))
    return float(np.median(out)) if out else 0.0


def denoise(
    volume: np.ndarray,
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0),
    config: NSN2NConfig | None = None,
    progress: ProgressFn | None = None,
    cancel: CancelLike = None,
) -> tuple[np.ndarray, RunReport]:
    """Denoise one volume by NS-N2N, learned from that volume alone.

    Parameters
    ----------
    volume : ndarray, shape (K, J, I)
        The noisy volume in K,J,I order (slice, row, column), any real dtype, in its own units (e.g. HU).
        It is never modified.
    spacing : 3 floats
        Voxel spacing in mm, K,J,I order (used by ``slice_axis='auto'`` and reported).
    config : NSN2NConfig, optional
        Defaults to ``make_config('default')``.
    progress : callable(phase, step, total, loss), optional
        Called from the running thread; ``phase`` is 'weights', 'training' or 'inference', ``loss`` is the mean
        training loss of the last few iterations (None outside training).
    cancel : CancelToken, threading.Event or callable returning bool, optional
        Checked before every training iteration and inference batch.

    Returns
    -------
    denoised : ndarray, float32, shape (K, J, I)
        In the input's units, same shape as the input.
    report : RunReport

    Raises
    ------
    InputError
        A volume NSN2N cannot denoise (2D, 4D, < 3 slices, NaN/Inf, constant, ...), with what to do.
    DeviceError
        CUDA requested but unavailable, or out of GPU memory.
    CancelledError
        The run was cancelled; nothing is returned.
    """
    t_start = time.perf_counter()
    cfg = config if config is not None else make_config()
    is_cancelled = _cancel_check(cancel)
    arr = validate_volume(volume)
    sp = _check_spacing(spacing)
    axis = choose_slice_axis(arr.shape, sp, cfg.slice_axis)
    if arr.shape[axis] < 3:
        raise InputError(
            f"The volume has {arr.shape[axis]} slices along the slice axis {'KJI'[axis]}; NS-N2N needs at least 3 "
            "neighbouring slices. Choose another slice axis or a thicker volume."
        )
    if min(np.delete(arr.shape, axis)) < 4:
        raise InputError(f"Slices of {np.delete(arr.shape, axis).tolist()} pixels are too small; need at least 4x4.")
    imap = fit_intensity_map(arr, cfg.normalization_percentiles)
    device = resolve_device(cfg.device)
    previous_threads = torch.get_num_threads()
    if device.type == "cpu" and cfg.training.threads > 0:
        torch.set_num_threads(cfg.training.threads)
    phase_seconds: dict[str, float] = {}
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    try:
        t0 = time.perf_counter()
        stack = np.moveaxis(normalize(arr, imap), axis, 0)
        slices = torch.from_numpy(np.ascontiguousarray(stack)).to(device)
        phase_seconds["preparation"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        if progress is not None:
            progress("weights", 0, 1, None)
        wmaps = compute_weight_maps(slices, cfg.weights)
        target_maps = target_keep = offset = None
        if cfg.loss.target in THREE_SLICE_TARGETS and cfg.loss.three_slice_weights == "direct":
            points = INTERPOLATION_TARGETS.get(cfg.loss.target)
            offset = interpolation_offset(slices, points) if points else None
            three = compute_three_slice_maps(slices, cfg.weights, offset)
            target_maps, target_keep = three.maps, three.keep
        sigma = estimate_noise_sigma(slices)
        correlation = interslice_noise_correlation(slices)
        if progress is not None:
            progress("weights", 1, 1, None)
        phase_seconds["weights"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        net, curve = train_network(
            slices, wmaps.maps, cfg, progress, is_cancelled, target_maps, target_keep, target_offset=offset
        )
        phase_seconds["training"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        out = predict_slices(
            net, slices, cfg.inference, cfg.training.mixed_precision, progress, is_cancelled, cfg.network.context_slices
        )
        if cfg.inference.safeguard:
            out, _ = apply_safeguard(slices, out, cfg.inference.safeguard_factor)
        result = out.float().cpu().numpy()
        phase_seconds["inference"] = time.perf_counter() - t0
        peak_gpu_mb = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
    except torch.cuda.OutOfMemoryError as exc:
        raise DeviceError(
            "The GPU ran out of memory. Lower training.batch_size or training.patch_size, or network.width, "
            "or run on the CPU."
        ) from exc
    finally:
        torch.set_num_threads(previous_threads)
        if device.type == "cuda":
            torch.cuda.empty_cache()

    denoised = denormalize(np.moveaxis(result, 0, axis), imap)
    warnings = []
    if correlation > CORRELATION_WARNING:
        warnings.append(
            f"Neighbouring slices' noise may be correlated (correlation {correlation:.2f} in flat regions): NS-N2N "
            "assumes independent noise between slices and keeps correlated noise (interpolated or overlapping "
            "slices?). Check the result, or try another slice axis."
        )
    if wmaps.matched_fraction < MATCHED_WARNING:
        warnings.append(
            f"Only {100 * wmaps.matched_fraction:.0f}% of body pixels match their neighbour slice: slices are far "
            "apart for this anatomy, expect less denoising (try another slice axis)."
        )
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    report = RunReport(
        config=cfg.to_dict(),
        device=str(device),
        device_name=device_name,
        shape=list(arr.shape),
        spacing=list(sp),
        slice_axis=axis,
        iterations=cfg.training.iterations,
        phase_seconds={k: round(v, 4) for k, v in phase_seconds.items()},
        total_seconds=round(time.perf_counter() - t_start, 4),
        loss_curve=[[int(i), float(v)] for i, v in curve],
        matched_fraction=wmaps.matched_fraction,
        matched_per_pair=wmaps.matched_per_pair,
        noise_sigma=sigma * imap.scale,
        peak_gpu_mb=peak_gpu_mb,
        interslice_noise_correlation=correlation,
        warnings=warnings,
        versions={"nsn2n": __version__, "torch": torch.__version__, "numpy": np.__version__},
    )
    return denoised, report


__all__ = ["CancelToken", "CancelledError", "denoise", "validate_volume", "choose_slice_axis", "resolve_device"]
