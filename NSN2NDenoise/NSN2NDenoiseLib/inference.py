"""Denoising every slice with the trained network (METHOD.md section 5), and the optional safeguard.

``slices`` is (N, H, W) float32 in normalised units on the run's device, slice axis first; outputs have the
same shape. Whole slices go through the network in batches (it pads to a multiple of 2**depth itself).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from .config import InferenceConfig
from .errors import CancelledError
from .training import _autocast, context_input, dihedral, inverse_dihedral
from .weights import BODY_THRESHOLD, box_mean, gaussian_blur

ProgressFn = Callable[[str, int, int, "float | None"], None]


def predict_slices(
    net: torch.nn.Module,
    slices: torch.Tensor,
    cfg: InferenceConfig,
    mixed_precision: bool = False,
    progress: ProgressFn | None = None,
    is_cancelled: Callable[[], bool] | None = None,
    context: int = 0,
) -> torch.Tensor:
    """f(x_i) for every slice, first and last included; with ``cfg.tta`` the mean over the 8 flips/rotations.
    ``context`` is ``network.context_slices``: the input is then (x_i-2, x_i, x_i+2), see
    :func:`training.context_input`.

    Raises
    ------
    CancelledError
        When ``is_cancelled()`` turns true between batches.
    """
    n = slices.shape[0]
    out = torch.empty_like(slices)
    transforms = range(8) if cfg.tta else (0,)
    with torch.no_grad():
        for start in range(0, n, cfg.batch_size):
            if is_cancelled is not None and is_cancelled():
                raise CancelledError("Inference was cancelled; no result was produced.")
            batch = context_input(slices, slice(start, start + cfg.batch_size), context)
            acc = torch.zeros_like(batch[:, :1])
            for k in transforms:
                with _autocast(slices.device, mixed_precision):
                    y = net(dihedral(batch, k)).float()
                acc += inverse_dihedral(y, k)
            out[start : start + batch.shape[0]] = (acc / len(transforms)).squeeze(1)
            if progress is not None:
                progress("inference", min(n, start + cfg.batch_size), n, None)
    return out


def apply_safeguard(noisy: torch.Tensor, denoised: torch.Tensor, factor: float) -> tuple[torch.Tensor, float]:
    """Blend back toward the input where the removed residual is far above the noise level.

    The removed residual r = x - f(x) should look like noise. Its level sigma_r is calibrated on the volume
    itself: the square root of the median, over the body, of the local mean of r^2 (5x5 box) in normalised
    units; most of a body is tissue where the network removed only noise. Where the local RMS of r exceeds
    ``factor * sigma_r`` the network removed structure, not noise: there the output keeps the fraction
    1 - alpha of the residual, alpha = factor * sigma_r / local RMS.

    Returns the blended slices (N, H, W) and sigma_r.
    """
    residual = noisy - denoised
    local_ms = box_mean(residual * residual, 5)
    body = gaussian_blur(noisy, 2.0) > BODY_THRESHOLD
    values = local_ms[body] if body.float().mean() > 0.01 else local_ms.flatten()
    sigma_r = float(values.median().clamp_min(1e-12).sqrt())
    alpha = (factor * sigma_r / local_ms.sqrt().clamp_min(1e-12)).clamp(max=1.0)
    return denoised + (1.0 - alpha) * residual, sigma_r
