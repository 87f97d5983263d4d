"""The front API of the engine: one function, array in, array out.

Every front end (the ``nsn2n`` command line, the worker process of the Slicer module and its CLI module, the
benchmarks' method rows) calls :func:`denoise`; only the benchmarks' oracle experiments, which swap in a clean
target, reach the training internals. Arrays are in K,J,I order (slice, row, column), as Slicer's
``arrayFromVolume`` and SimpleITK's ``GetArrayFromImage`` give them; spacing is in mm in the same order.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable, Mapping

import numpy as np
import torch

from . import __version__
from .config import NSN2NConfig, make_config
from .errors import OUT_OF_MEMORY_ADVICE, CancelledError, DeviceError, InputError
from .inference import predict_into, prediction_axes, use_bf16
from .neighbours import FUSION_WEIGHT, blend_into, fusion_applies, train_neighbour_network
from .noise_estimates import estimate_inplane_lag1, estimate_noise
from .normalization import NormalizedSlices, fit_intensity_map
from .report import RunReport
from .residual_check import residual_structure
from .training import Recovery, train_network
from .weights import compute_targets
from .wiener import apply_wiener, row_count

ProgressFn = Callable[[str, int, int, float | None], None]

# 'auto' picks the largest-spacing axis as slice axis when it exceeds the others by this factor.
ANISOTROPY_RATIO = 1.2
# Above this correlation of neighbouring slices' noise the report warns (docs/METHOD.md section 6); see
# noise_estimates.interslice_correlation for the figures it was set from.
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
    """Check that ``volume`` is a real 3D scalar volume NSN2N can denoise; return it as an array, not copied.

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
    if arr.dtype.kind == "f":
        bad = sum(
            int(arr[k : k + 16].size - np.count_nonzero(np.isfinite(arr[k : k + 16])))
            for k in range(0, arr.shape[0], 16)
        )
        if bad:
            raise InputError(
                f"The volume has {bad} NaN or infinite voxels; replace them (for example with the background value) "
                "before denoising."
            )
    return arr


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


def _predict_along(net, arr, imap, source, axis, axes, cfg, device, bf16, progress, is_cancelled, total) -> np.ndarray:
    """The network's output along each of ``axes`` (the slice axis first), summed in place and averaged; progress
    counts its slices as the first of ``total`` inference steps (the neighbour network's slices and the Wiener
    stage's block rows come after)."""
    denoised = np.empty(arr.shape, dtype=np.float32)
    done = 0
    for n, a in enumerate(axes):
        slices = source if a == axis else NormalizedSlices(arr, a, imap)

        def step(phase, i, _n, loss, offset=done):
            progress("inference", offset + i, total, None)

        predict_into(
            net,
            slices,
            np.moveaxis(denoised, a, 0),
            cfg.inference,
            device,
            bf16,
            step if progress is not None else None,
            is_cancelled,
            accumulate=n > 0,
        )
        done += arr.shape[a]
    if len(axes) > 1:
        denoised /= np.float32(len(axes))
    return denoised


def _offset_progress(progress: ProgressFn | None, offset: int, total: int) -> ProgressFn | None:
    """``progress`` with the step moved by ``offset`` and the total replaced by ``total`` (two networks' training
    counted as one phase)."""
    if progress is None:
        return None
    return lambda phase, step, _total, loss: progress(phase, offset + step, total, loss)


def _recovery_dict(r: Recovery) -> dict:
    """A JSON-ready :class:`training.Recovery`: a loss that was not finite becomes None."""
    out = dataclasses.asdict(r)
    out["loss"] = r.loss if np.isfinite(r.loss) else None
    return out


def denoise(
    volume: np.ndarray,
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0),
    config: NSN2NConfig | None = None,
    progress: ProgressFn | None = None,
    cancel: CancelLike = None,
    init_model: Mapping[str, torch.Tensor] | None = None,
    return_model: bool = False,
):
    """Denoise one volume by NS-N2N, learned from that volume alone (or warm-started from another's network).

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
        Called from the running thread; ``phase`` is 'weights', 'training' or 'inference' (the network's slices,
        then the Wiener stage's block rows, in one count), ``loss`` is the mean training loss of the last few
        iterations (None outside training).
    cancel : CancelToken, threading.Event or callable returning bool, optional
        Checked before every slab of weight maps, training iteration, inference batch and Wiener block row.
    init_model : mapping of str to Tensor, optional
        The network's starting weights (a state dict, e.g. ``model_io.load_model(path).state``), trained on
        another volume with the same ``config.network``; training starts from it instead of the identity.
    return_model : bool
        Also return the trained network's state dict (CPU tensors), e.g. for ``model_io.save_model``: the slice
        network's (the neighbour network of ``inference.neighbour_fusion`` is trained afresh in every run).

    Returns
    -------
    denoised : ndarray, float32, shape (K, J, I)
        In the input's units, same shape as the input.
    report : RunReport
    state : dict of str to Tensor
        Only with ``return_model=True``: the trained weights, on the CPU.

    Raises
    ------
    InputError
        A volume NSN2N cannot denoise (2D, 4D, < 3 slices, NaN/Inf, constant, ...), with what to do.
    ConfigError
        ``init_model`` does not fit ``config.network``.
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
    if init_model is not None:
        from .model_io import check_state

        check_state(init_model, cfg)  # a clear ConfigError before any work, not torch's at training
    axis = choose_slice_axis(arr.shape, sp, cfg.slice_axis)
    if arr.shape[axis] < 3:
        raise InputError(
            f"The volume has {arr.shape[axis]} slices along the slice axis {'KJI'[axis]}; NS-N2N needs at least 3 "
            "neighbouring slices. Choose another slice axis or a thicker volume."
        )
    if min(np.delete(arr.shape, axis)) < 4:
        raise InputError(f"Slices of {np.delete(arr.shape, axis).tolist()} pixels are too small; need at least 4x4.")
    imap = fit_intensity_map(arr)
    source = NormalizedSlices(arr, axis, imap)
    device = resolve_device(cfg.device)
    previous_threads = torch.get_num_threads()
    if device.type == "cpu" and cfg.training.threads > 0:
        torch.set_num_threads(cfg.training.threads)
    phase_seconds: dict[str, float] = {}
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    bf16 = use_bf16(device, cfg.training.mixed_precision)
    try:
        t0 = time.perf_counter()
        targets = compute_targets(source, cfg, device, progress, is_cancelled)
        sigma, correlation = estimate_noise(source, device)
        lag1 = estimate_inplane_lag1(source, device)
        axes, axes_reason = prediction_axes(sp, axis, cfg.inference.axes, lag1)
        fusion, fusion_reason = fusion_applies(cfg.inference.neighbour_fusion, axes, arr.shape[axis])
        phase_seconds["weights"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        iterations = cfg.training.iterations
        trainings = 2 if fusion else 1
        recoveries: list[Recovery] = []
        net, curve = train_network(
            source,
            targets,
            cfg,
            device,
            _offset_progress(progress, 0, trainings * iterations),
            is_cancelled,
            init_state=init_model,
            on_recovery=recoveries.append,
        )
        matched_fraction, matched_per_slice = targets.matched_fraction, targets.matched_per_slice
        del targets  # the maps are not needed any more: free them before the output is allocated
        neighbour_net, neighbour_curve, neighbour_recoveries = None, [], []
        if fusion:
            neighbour_net, neighbour_curve = train_neighbour_network(
                source,
                cfg,
                device,
                _offset_progress(progress, iterations, trainings * iterations),
                is_cancelled,
                on_recovery=neighbour_recoveries.append,
            )
        phase_seconds["training"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        n = arr.shape[axis]
        wiener_rows = row_count(n, cfg.inference.wiener, lag1) if cfg.inference.wiener != "off" else 0
        total = sum(arr.shape[a] for a in axes) + (n if fusion else 0) + wiener_rows
        denoised = _predict_along(net, arr, imap, source, axis, axes, cfg, device, bf16, progress, is_cancelled, total)
        if neighbour_net is not None:
            first = total - wiener_rows - n
            step = None if progress is None else (lambda i: progress("inference", first + i + 1, total, None))
            blend_into(
                neighbour_net,
                source,
                np.moveaxis(denoised, axis, 0),
                cfg.inference.tta,
                device,
                bf16,
                step,
                is_cancelled,
            )
        phase_seconds["inference"] = time.perf_counter() - t0
        wiener_info: dict = {"applied": False, "reason": "inference.wiener = 'off'"}
        if cfg.inference.wiener != "off":
            t0 = time.perf_counter()
            first = total - wiener_rows
            step = None if progress is None else (lambda r: progress("inference", first + r + 1, total, None))
            wiener_info = apply_wiener(
                np.moveaxis(arr, axis, 0),
                np.moveaxis(denoised, axis, 0),
                lag1,
                cfg.inference.wiener,
                step,
                is_cancelled,
            )
            phase_seconds["wiener"] = time.perf_counter() - t0
        peak_gpu_mb = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
    except torch.cuda.OutOfMemoryError as exc:
        raise DeviceError(f"The GPU ran out of memory. {OUT_OF_MEMORY_ADVICE}") from exc
    except MemoryError as exc:
        raise DeviceError(f"The computer ran out of memory (RAM). {OUT_OF_MEMORY_ADVICE}") from exc
    finally:
        torch.set_num_threads(previous_threads)
        if device.type == "cuda":
            torch.cuda.empty_cache()

    t0 = time.perf_counter()
    check = residual_structure(np.moveaxis(arr, axis, 0), np.moveaxis(denoised, axis, 0))
    phase_seconds["residual_check"] = time.perf_counter() - t0
    warnings = []
    if check.warn:
        shown = ", ".join(str(k) for k in check.flagged[:8]) + (" ..." if len(check.flagged) > 8 else "")
        where = f" (slices {shown} along axis {'KJI'[axis]})" if check.flagged else ""
        cause = " or noise correlated between slices" if correlation > CORRELATION_WARNING else ""
        warnings.append(
            f"The removed residual holds structure{where}: score {check.score:.2f} against the threshold "
            f"{check.threshold:.2f}, i.e. anatomy{cause} was removed along with the noise. Look at the residual "
            "(input minus output) there; try the 'fast' preset or fewer iterations, another slice axis, or keep the "
            "input for those slices."
        )
    for r, which in [(r, "Training") for r in recoveries] + [
        (r, "The neighbour network's training") for r in neighbour_recoveries
    ]:
        warnings.append(
            f"{which} diverged at iteration {r.iteration} (mean loss {r.loss:.3g}); the weights of iteration "
            f"{r.restored_iteration} were restored and the learning rate scaled by {r.learning_rate_scale:g} for the "
            "rest of the run. Check the result; a smaller training.learning_rate avoids this."
        )
    if correlation > CORRELATION_WARNING:
        warnings.append(
            f"Neighbouring slices' noise may be correlated (correlation {correlation:.2f} in flat regions): NS-N2N "
            "assumes independent noise between slices and keeps correlated noise (interpolated or overlapping "
            "slices?). Check the result, or try another slice axis."
        )
    if matched_fraction < MATCHED_WARNING:
        warnings.append(
            f"Only {100 * matched_fraction:.0f}% of body pixels match their neighbour slices: slices are far "
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
        training_recoveries=[_recovery_dict(r) for r in recoveries],
        matched_fraction=matched_fraction,
        matched_per_slice=matched_per_slice,
        noise_sigma=sigma * imap.scale,
        peak_gpu_mb=peak_gpu_mb,
        interslice_noise_correlation=correlation,
        residual_check=check.to_dict(),
        prediction_axes=["KJI"[a] for a in axes],
        prediction_axes_reason=axes_reason,
        inplane_noise_lag1=[float(v) for v in lag1],
        neighbour_fusion={
            "applied": fusion,
            "reason": fusion_reason,
            "weight": FUSION_WEIGHT if fusion else 0.0,
            "loss_curve": [[int(i), float(v)] for i, v in neighbour_curve],
            "recoveries": [_recovery_dict(r) for r in neighbour_recoveries],
        },
        wiener=wiener_info,
        warnings=warnings,
        versions={"nsn2n": __version__, "torch": torch.__version__, "numpy": np.__version__},
    )
    if return_model:
        return denoised, report, {name: t.detach().cpu().contiguous() for name, t in net.state_dict().items()}
    return denoised, report


__all__ = ["CancelToken", "CancelledError", "denoise", "validate_volume", "choose_slice_axis", "resolve_device"]
