"""Denoising every slice with the trained network (docs/METHOD.md section 5), streamed into the output.

Whole slices go through the network in batches (it pads to a multiple of 2**depth itself); each batch is read and
normalised from the input, and written, denormalised, straight into the output array, so that inference holds no
copy of the volume beyond the output itself.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from .config import InferenceConfig
from .errors import CancelledError
from .normalization import NormalizedSlices
from .training import autocast, dihedral, inverse_dihedral

ProgressFn = Callable[[str, int, int, "float | None"], None]

ISOTROPY_RATIO = 1.25
"""Largest ratio of the largest to the smallest voxel spacing at which ``inference.axes = 'auto'`` may denoise
along the in-plane axes too (the network learnt the anatomy's scale in the slice plane)."""
WHITE_LAG1 = 0.2
"""Largest |lag-1 correlation| of the in-plane noise (``noise_estimates.inplane_noise_lag1``) at which
``inference.axes = 'auto'`` treats the noise as white: halfway between the readings of white noise (0.02-0.09) and
of low-dose CT (0.31-0.34; 0.88 for in-plane correlated noise) on the tuning set. Fine anatomy at low noise reads
higher than the tuning set's white noise (Colin27 at 5 %: 0.15; benchmarks/RESULTS.md, "Protocol")."""
TTA_ORDER = (0, 4, 2, 6, 1, 5, 3, 7)
"""The dihedral transforms used by ``inference.tta = n``: the first n (identity, flip, half turn, ...)."""


def cpu_has_bf16() -> bool:
    """True when this CPU computes bf16 natively (AVX512-BF16 or AMX), where bf16 inference is faster than
    float32; elsewhere bf16 is emulated and slower."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # pragma: no cover - builds without oneDNN
        return False


def use_bf16(device: torch.device, mixed_precision: bool) -> bool:
    """Whether inference on ``device`` runs under bf16 autocast (``training.mixed_precision``)."""
    return mixed_precision and (device.type == "cuda" or cpu_has_bf16())


def near_isotropic(spacing: tuple[float, float, float]) -> bool:
    """True when the largest voxel spacing is at most :data:`ISOTROPY_RATIO` times the smallest."""
    return max(spacing) <= ISOTROPY_RATIO * min(spacing)


def prediction_axes(
    spacing: tuple[float, float, float], slice_axis: int, choice: str, lag1: tuple[float, float] | None
) -> tuple[list[int], str]:
    """The axes (0=K, 1=J, 2=I; the slice axis first) along which to denoise and average, and why.

    Parameters
    ----------
    spacing : 3 floats
        Voxel spacing in mm, K,J,I order.
    slice_axis : int
        The axis the network was trained along.
    choice : {'auto', 'slice', 'all'}
        ``inference.axes``.
    lag1 : (float, float) or None
        In-plane noise lag-1 correlation along the slice's rows and columns; None when not measured.
    """
    others = [a for a in range(3) if a != slice_axis]
    if choice == "slice":
        return [slice_axis], "inference.axes = 'slice'"
    if choice == "all":
        return [slice_axis, *others], "inference.axes = 'all'"
    if not near_isotropic(spacing):
        ratio = max(spacing) / min(spacing)
        return [slice_axis], f"voxels not near-isotropic (spacing ratio {ratio:.2f} > {ISOTROPY_RATIO})"
    if lag1 is None or max(abs(v) for v in lag1) > WHITE_LAG1:
        shown = "not measured" if lag1 is None else f"{max(abs(v) for v in lag1):.2f}"
        return [slice_axis], f"in-plane noise not white (lag-1 correlation {shown} > {WHITE_LAG1})"
    return [slice_axis, *others], (
        f"near-isotropic voxels and white in-plane noise (lag-1 correlation {max(abs(v) for v in lag1):.2f} "
        f"<= {WHITE_LAG1}): the mean of the network along all three axes"
    )


def expected_axis_count(spacing: tuple[float, float, float] | None, choice: str) -> int:
    """Axes a run will most likely denoise along before the noise is measured (for time forecasts): 3 for
    'all', and for 'auto' on near-isotropic voxels (an upper bound); else 1."""
    if choice == "all" or (choice == "auto" and spacing is not None and near_isotropic(spacing)):
        return 3
    return 1


def predict_into(
    net: torch.nn.Module,
    source: NormalizedSlices,
    out: np.ndarray,
    cfg: InferenceConfig,
    device: torch.device,
    bf16: bool = False,
    progress: ProgressFn | None = None,
    is_cancelled: Callable[[], bool] | None = None,
    accumulate: bool = False,
) -> None:
    """Write f(x_i) of every slice of ``source``, in the input's units, into ``out`` (N, H, W), slice axis first
    (a view of the output volume). With ``cfg.tta`` = n > 1, the mean over the first n transforms of
    :data:`TTA_ORDER`. With ``accumulate``, add it to what ``out`` holds instead (predictions along several
    axes summed in place, with no second volume).

    Raises
    ------
    CancelledError
        When ``is_cancelled()`` turns true between batches.
    """
    n = source.shape[0]
    transforms = TTA_ORDER[: cfg.tta]
    scale, offset = np.float32(source.imap.scale), np.float32(source.imap.offset)
    with torch.inference_mode():
        for start in range(0, n, cfg.batch_size):
            if is_cancelled is not None and is_cancelled():
                raise CancelledError("Inference was cancelled; no result was produced.")
            stop = min(n, start + cfg.batch_size)
            batch = torch.from_numpy(source.slab(start, stop)).to(device).unsqueeze(1)
            acc = torch.zeros_like(batch)
            for k in transforms:
                x = dihedral(batch, k).contiguous(memory_format=torch.channels_last)
                with autocast(device, bf16):
                    y = net(x).float()
                acc += inverse_dihedral(y, k)
            result = (acc / len(transforms)).squeeze(1).cpu().numpy()
            result *= scale
            result += offset
            if accumulate:
                out[start:stop] += result
            else:
                out[start:stop] = result
            if progress is not None:
                progress("inference", stop, n, None)
