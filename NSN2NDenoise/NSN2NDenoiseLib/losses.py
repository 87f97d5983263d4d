"""The loss terms of NS-N2N (docs/METHOD.md section 3).

Every tensor is (B, 1, H, W) in normalised units; weights are in [0, 1] with the same shape. A pixel of weight 0
contributes neither value nor gradient to a weighted term. Every term is a mean over all pixels of the batch, so
that each pixel weighs the same in every term (benchmarks/RESULTS.md, "Ablation": with the 3-slice target, 33.68
against 33.53 dB for dividing by the summed weights, row ``nsn2n_nd_normall``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .config import LossConfig


def masked_mean(weights: torch.Tensor, error: torch.Tensor) -> torch.Tensor:
    """M(W, e) = sum(W e) / number of pixels."""
    return (weights * error).sum() / error.numel()


def reconstruction_loss(output: torch.Tensor, target: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """L_Recon = M(W, (f(x_i) - t_i)^2): weighted Noise2Noise toward the interpolation target t_i."""
    return masked_mean(weights, (output - target) ** 2)


def regional_consistency_loss(out_a: torch.Tensor, out_b: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """L_RC = M(W, (f(x_i) - f(x_i+1))^2): where the pair matches, the two outputs agree."""
    return masked_mean(weights, (out_a - out_b) ** 2)


def interslice_continuity_loss(out_mid: torch.Tensor, out_a: torch.Tensor, out_b: torch.Tensor) -> torch.Tensor:
    """L_IC = mean((f((x_i + x_i+1)/2) - (f(x_i) + f(x_i+1))/2)^2), unmasked."""
    return ((out_mid - 0.5 * (out_a + out_b)) ** 2).mean()


def self_loss(output: torch.Tensor, source: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """L_Self = M(K, (f(x_i) - x_i)^2) on the strongly unmatched pixels K: there the output keeps the input."""
    return masked_mean(keep, (output - source) ** 2)


@dataclass(frozen=True)
class Outputs:
    """The network's outputs for one batch: f(x_i), and f(x_i+1) and f((x_i + x_i+1)/2) when RC or IC need them."""

    out: torch.Tensor
    out_next: torch.Tensor | None = None
    out_mid: torch.Tensor | None = None


def total_loss(outputs: Outputs, batch, cfg: LossConfig) -> dict[str, torch.Tensor]:
    """L = L_Recon + lambda_RC L_RC + lambda_IC L_IC + lambda_Self L_Self for a :class:`training.Batch`.

    Returns a dict with keys 'recon', 'rc', 'ic', 'self', 'total' (scalar tensors); a term whose lambda is 0 is a
    zero and is not computed.
    """
    recon = reconstruction_loss(outputs.out, batch.target, batch.weights)
    zero = recon.new_zeros(())
    rc = ic = own = zero
    if cfg.lambda_rc > 0:
        rc = regional_consistency_loss(outputs.out, outputs.out_next, batch.pair_weights)
    if cfg.lambda_ic > 0:
        ic = interslice_continuity_loss(outputs.out_mid, outputs.out, outputs.out_next)
    if cfg.lambda_self > 0:
        own = self_loss(outputs.out, batch.x, batch.keep)
    total = recon + cfg.lambda_rc * rc + cfg.lambda_ic * ic + cfg.lambda_self * own
    return {"recon": recon, "rc": rc, "ic": ic, "self": own, "total": total}
