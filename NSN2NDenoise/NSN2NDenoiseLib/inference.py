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


def predict_into(
    net: torch.nn.Module,
    source: NormalizedSlices,
    out: np.ndarray,
    cfg: InferenceConfig,
    device: torch.device,
    bf16: bool = False,
    progress: ProgressFn | None = None,
    is_cancelled: Callable[[], bool] | None = None,
) -> None:
    """Write f(x_i) of every slice of ``source``, in the input's units, into ``out`` (N, H, W), slice axis first
    (a view of the output volume). With ``cfg.tta`` = n > 1, the mean over the first n transforms of
    :data:`TTA_ORDER`.

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
            out[start:stop] = result
            if progress is not None:
                progress("inference", stop, n, None)
