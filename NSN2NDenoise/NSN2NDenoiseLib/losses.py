"""The loss terms of NS-N2N (METHOD.md section 3).

Every tensor is (B, 1, H, W) in normalised units; weights W are in [0, 1] with the same shape. A pixel of weight 0
contributes neither value nor gradient to the weighted terms.
"""

from __future__ import annotations

import torch

from .config import LossConfig


def masked_mean(weights: torch.Tensor, error: torch.Tensor, normalization: str = "matched") -> torch.Tensor:
    """M(W, e): the W-weighted mean of ``error``.

    ``normalization='matched'`` divides by the summed weights (each matched pixel counts the same whatever the
    share of matched pixels); ``'all'`` divides by the number of pixels.
    """
    total = (weights * error).sum()
    if normalization == "matched":
        return total / weights.sum().clamp_min(1.0)
    return total / error.numel()


def reconstruction_loss(
    output: torch.Tensor, target: torch.Tensor, weights: torch.Tensor, normalization: str = "matched"
) -> torch.Tensor:
    """L_Recon = M(W, (f(x_i) - x_i+1)^2): weighted Noise2Noise."""
    return masked_mean(weights, (output - target) ** 2, normalization)


def regional_consistency_loss(
    out_a: torch.Tensor, out_b: torch.Tensor, weights: torch.Tensor, normalization: str = "matched"
) -> torch.Tensor:
    """L_RC = M(W, (f(x_i) - f(x_i+1))^2): in matched regions the two outputs agree."""
    return masked_mean(weights, (out_a - out_b) ** 2, normalization)


def interslice_continuity_loss(out_mid: torch.Tensor, out_a: torch.Tensor, out_b: torch.Tensor) -> torch.Tensor:
    """L_IC = mean((f((x_i + x_i+1)/2) - (f(x_i) + f(x_i+1))/2)^2), unmasked."""
    return ((out_mid - 0.5 * (out_a + out_b)) ** 2).mean()


def self_loss(
    output: torch.Tensor, source: torch.Tensor, keep: torch.Tensor, normalization: str = "matched"
) -> torch.Tensor:
    """L_Self = M(K, (f(x_i) - x_i)^2) with K = 1 - W (or its strong-mismatch part): where no neighbour
    matches, the output keeps the input."""
    return masked_mean(keep, (output - source) ** 2, normalization)


def pair_loss(
    out_a: torch.Tensor,
    out_b: torch.Tensor,
    out_mid: torch.Tensor | None,
    x_a: torch.Tensor,
    x_b: torch.Tensor,
    weights: torch.Tensor,
    cfg: LossConfig,
    target_a: torch.Tensor | None = None,
    weights_a: torch.Tensor | None = None,
    keep_a: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """All terms of one batch of pairs and their total
    L = L_Recon + lambda_RC L_RC + lambda_IC L_IC + lambda_Self L_Self.

    Parameters
    ----------
    out_a, out_b, out_mid
        f(x_a), f(x_b) and f((x_a + x_b) / 2); ``out_mid`` may be None when lambda_IC is 0.
    x_a, x_b, weights
        The pair and its weight map W.
    target_a, weights_a
        Optional target and weights of ``out_a`` replacing (x_b, W) in L_Recon: the 3-slice target
        (x_i-1 + x_i+1) / 2 with W_i-1 * W_i. The symmetric term is not added in that case, as the 3-slice
        target is already symmetric.
    keep_a
        Optional weight of the self term of ``out_a``; defaults to 1 - (``weights_a`` or W).

    Returns
    -------
    dict with keys 'recon', 'rc', 'ic', 'self', 'total' (scalar tensors).
    """
    norm = cfg.normalization
    if target_a is not None:
        recon = reconstruction_loss(out_a, target_a, weights_a if weights_a is not None else weights, norm)
    else:
        recon = reconstruction_loss(out_a, x_b, weights, norm)
        if cfg.symmetric:
            recon = 0.5 * (recon + reconstruction_loss(out_b, x_a, weights, norm))
    zero = recon.new_zeros(())
    rc = regional_consistency_loss(out_a, out_b, weights, norm) if cfg.lambda_rc > 0 else zero
    ic = interslice_continuity_loss(out_mid, out_a, out_b) if (cfg.lambda_ic > 0 and out_mid is not None) else zero
    own = zero
    if cfg.lambda_self > 0:
        w_a = weights_a if weights_a is not None else weights
        own = self_loss(out_a, x_a, keep_a if keep_a is not None else 1.0 - w_a, norm)
        if target_a is None and cfg.symmetric:
            own = 0.5 * (own + self_loss(out_b, x_b, 1.0 - weights, norm))
    total = recon + cfg.lambda_rc * rc + cfg.lambda_ic * ic + cfg.lambda_self * own
    return {"recon": recon, "rc": rc, "ic": ic, "self": own, "total": total}
