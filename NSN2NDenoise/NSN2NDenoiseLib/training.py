"""Training the 2D network on one volume's neighbouring slice pairs (METHOD.md sections 3 and 4).

``slices`` is (N, H, W) float32 in normalised units on the run's device (slice axis first); ``weights`` is the
(N - 1, H, W) map of :mod:`weights`. Patches are drawn from random pairs at random positions; the same random
flip/rotation is applied to every slice of a sample and to its weights.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable

import numpy as np
import torch

from .config import THREE_SLICE_TARGETS, NSN2NConfig
from .errors import CancelledError
from .losses import pair_loss
from .network import UNet2D

ProgressFn = Callable[[str, int, int, "float | None"], None]
CancelFn = Callable[[], bool]

# Loss values are averaged and recorded (and reported to progress) every this many iterations.
LOG_EVERY = 10


def build_network(cfg: NSN2NConfig) -> UNet2D:
    """The U-Net described by ``cfg.network``: one output channel, one input channel (three with
    ``network.context_slices = 1``)."""
    n = cfg.network
    return UNet2D(1 + 2 * n.context_slices, 1, depth=n.depth, width=n.width, residual=n.residual)


def context_input(slices: torch.Tensor, index: torch.Tensor | slice, context: int) -> torch.Tensor:
    """The network input of slices ``index`` of ``slices`` (N, H, W): (B, 1, H, W) without context, else
    (B, 3, H, W) = (x_i-2, x_i, x_i+2), a missing side mirrored from the other (x_i+2, x_i, x_i+2) at the ends."""
    n = slices.shape[0]
    idx = torch.arange(n, device=slices.device)[index]
    if not context:
        return slices[idx].unsqueeze(1)
    lo, hi = idx - 2, idx + 2
    lo = torch.where(lo < 0, hi, lo).clamp(0, n - 1)
    hi = torch.where(hi > n - 1, lo, hi).clamp(0, n - 1)
    return torch.stack([slices[lo], slices[idx], slices[hi]], dim=1)


def dihedral(x: torch.Tensor, k: int) -> torch.Tensor:
    """The k-th of the 8 flips/rotations (k in 0..7) of the last two axes."""
    if k >= 4:
        x = x.flip(-1)
    return torch.rot90(x, k % 4, dims=(-2, -1))


def inverse_dihedral(x: torch.Tensor, k: int) -> torch.Tensor:
    """Undo :func:`dihedral` with the same k."""
    x = torch.rot90(x, -(k % 4), dims=(-2, -1))
    if k >= 4:
        x = x.flip(-1)
    return x


class PatchSampler:
    """Random training samples: stacks of neighbouring slice patches and their weights.

    ``sample()`` returns (slices, weights), shapes (B, S, p, p) and (B, S - 1 + E, p, p), where S is 2 for the
    pair target and 3 for the 3-slice target, the slices are x_i .. x_i+S-1 of a random i, and the weights are
    the pair maps W_i .. W_i+S-2 followed by ``extra[i]`` when extra maps are given: (M, H, W) adds E = 1
    channel, (M, C, H, W) adds C.
    """

    def __init__(
        self,
        slices: torch.Tensor,
        weights: torch.Tensor,
        n_slices: int,
        patch: int,
        batch: int,
        seed: int,
        extra: torch.Tensor | None = None,
        extra_shift: int = 0,
    ) -> None:
        self.slices = slices
        self.weights = weights
        self.extra = extra
        self.extra_shift = extra_shift
        self.n_slices = n_slices
        n, h, w = slices.shape
        self.ph, self.pw = min(patch, h), min(patch, w)
        # Square patches so that rotations keep the shape.
        self.ph = self.pw = min(self.ph, self.pw)
        self.batch = batch
        self.rng = np.random.default_rng(seed)
        self.max_start = n - n_slices

    def sample(self) -> tuple[torch.Tensor, torch.Tensor]:
        n, h, w = self.slices.shape
        s = self.n_slices
        starts = self.rng.integers(0, self.max_start + 1, self.batch)
        ys = self.rng.integers(0, h - self.ph + 1, self.batch)
        xs = self.rng.integers(0, w - self.pw + 1, self.batch)
        ks = self.rng.integers(0, 8, self.batch)
        xb, wb = [], []
        for i, y, x, k in zip(starts, ys, xs, ks, strict=False):
            sl = self.slices[i : i + s, y : y + self.ph, x : x + self.pw]
            wt = self.weights[i : i + s - 1, y : y + self.ph, x : x + self.pw]
            if self.extra is not None:
                ex = self.extra[i + self.extra_shift, ..., y : y + self.ph, x : x + self.pw]
                wt = torch.cat([wt, ex.reshape(-1, self.ph, self.pw)])
            xb.append(dihedral(sl, int(k)))
            wb.append(dihedral(wt, int(k)))
        return torch.stack(xb), torch.stack(wb)


def either_target(
    x_prev: torch.Tensor, x_next: torch.Tensor, w_prev: torch.Tensor, w_next: torch.Tensor, w_three: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-pixel target for x_i from whichever neighbours match it (``loss.target = 'either'``).

    The mean (x_i-1 + x_i+1) / 2 where both neighbours match or the 3-slice test passes (half the target's noise
    variance); else the one neighbour that matches; the weight is the largest of the three weights, so only
    pixels that no neighbour confirms are left to the self term. Shapes (B, 1, H, W).
    """
    use_mean = torch.maximum(w_prev * w_next, w_three)
    single = torch.where(w_prev >= w_next, x_prev, x_next)
    target = torch.where(use_mean > 0.5, 0.5 * (x_prev + x_next), single)
    weights = torch.maximum(use_mean, torch.maximum(w_prev, w_next))
    return target, weights


def target_ramp(step: int, total: int, warmup: float) -> float:
    """Share of the interpolation target's offset applied at ``step`` (1-based) of ``total``: rises linearly from
    1 / (warmup * total) to 1 over the first ``warmup`` share of the iterations (``loss.target_warmup``)."""
    if warmup <= 0:
        return 1.0
    return min(1.0, step / (warmup * total))


def _autocast(device: torch.device, enabled: bool):
    if enabled and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def train_network(
    slices: torch.Tensor,
    weights: torch.Tensor,
    cfg: NSN2NConfig,
    progress: ProgressFn | None = None,
    is_cancelled: CancelFn | None = None,
    target_weights: torch.Tensor | None = None,
    target_keep: torch.Tensor | None = None,
    target_offset: torch.Tensor | None = None,
) -> tuple[UNet2D, list[tuple[int, float]]]:
    """Train a fresh network by NS-N2N on ``slices`` (N, H, W) with pair weights (N - 1, H, W).

    ``target_weights`` (N - 2, H, W), used with the 3-slice target only, replace W_i-1 * W_i as the weights of
    that target (``loss.three_slice_weights = 'direct'``); ``target_keep`` (N - 2, H, W) are then the weights of
    the self term (``weights.keep_factor``). ``target_offset`` (N - 2, H, W) is subtracted from the 3-slice mean:
    ``weights.interpolation_offset`` turns it into the cubic or quintic interpolation (``loss.target``), ramped in
    over the first ``loss.target_warmup`` share of the iterations.

    Returns the trained network (in eval mode, on the slices' device) and the loss curve as
    (iteration, mean total loss over the last ``LOG_EVERY`` iterations).

    Raises
    ------
    CancelledError
        When ``is_cancelled()`` turns true; checked before every iteration.
    """
    device = slices.device
    tcfg, lcfg = cfg.training, cfg.loss
    torch.manual_seed(tcfg.seed)
    net = build_network(cfg).to(device)
    net.train()
    optimiser = torch.optim.Adam(net.parameters(), lr=tcfg.learning_rate)
    final = tcfg.final_lr_fraction
    total = tcfg.iterations

    def lr_factor(step: int) -> float:  # cosine decay from 1 to final_lr_fraction
        return final + (1.0 - final) * 0.5 * (1.0 + math.cos(math.pi * step / max(1, total)))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimiser, lr_factor)
    three = lcfg.target in THREE_SLICE_TARGETS and slices.shape[0] >= 3
    extra = None
    if three and target_weights is not None:
        channels = [target_weights] + [t for t in (target_keep, target_offset) if t is not None]
        extra = torch.stack(channels, dim=1)  # (N - 2, C, H, W)
    elif three and target_offset is not None:
        raise ValueError("target_offset needs target_weights (loss.three_slice_weights = 'direct').")
    context = cfg.network.context_slices if three else 0
    if context and slices.shape[0] < 5:
        raise ValueError("network.context_slices = 1 needs at least 5 slices.")
    if context and extra is None:
        raise ValueError("network.context_slices = 1 needs target_weights (loss.three_slice_weights = 'direct').")
    # Each sample is a stack of S slices: x_i-1, x_i, x_i+1 (3-slice target) with x_i-2 and x_i+2 around them
    # when the network sees context, or x_i, x_i+1 (pair); then S - 1 pair maps and the extra maps.
    n_stack = (5 if context else 3) if three else 2
    n_extra = 0 if extra is None else extra.shape[1]
    first_extra = n_stack - 1
    keep_ch = first_extra + 1 if target_keep is not None else None
    offset_ch = first_extra + (2 if target_keep is not None else 1) if target_offset is not None else None
    sampler = PatchSampler(
        slices, weights, n_stack, tcfg.patch_size, tcfg.batch_size, tcfg.seed, extra=extra, extra_shift=int(context)
    )
    need_mid = lcfg.lambda_ic > 0
    need_b = not three or lcfg.lambda_rc > 0 or need_mid
    curve: list[tuple[int, float]] = []
    running: torch.Tensor | float = 0.0
    n_run = 0
    for step in range(1, total + 1):
        if is_cancelled is not None and is_cancelled():
            raise CancelledError("Training was cancelled; no result was produced.")
        stack, wstack = sampler.sample()
        if three:
            c = int(context)
            x_prev, x_a, x_b = stack[:, c : c + 1], stack[:, c + 1 : c + 2], stack[:, c + 2 : c + 3]
            w_prev, w_ab = wstack[:, c : c + 1], wstack[:, c + 1 : c + 2]
            w_three = wstack[:, first_extra : first_extra + 1] if extra is not None else w_prev * w_ab
            keep_a = wstack[:, keep_ch : keep_ch + 1] if keep_ch is not None and n_extra else None
            if lcfg.target == "either":
                target_a, weights_a = either_target(x_prev, x_b, w_prev, w_ab, w_three)
            else:
                target_a, weights_a = 0.5 * (x_prev + x_b), w_three
            if offset_ch is not None:
                ramp = target_ramp(step, total, lcfg.target_warmup)
                target_a = target_a - ramp * wstack[:, offset_ch : offset_ch + 1]
        else:
            x_a, x_b = stack[:, 0:1], stack[:, 1:2]
            w_ab = wstack[:, 0:1]
            target_a = weights_a = keep_a = None
        inputs = [stack[:, 0::2] if context else x_a]
        if need_b:
            inputs.append(x_b)
        if need_mid:
            inputs.append(0.5 * (x_a + x_b))
        with _autocast(device, tcfg.mixed_precision):
            outs = net(torch.cat(inputs, dim=0)).float()
        parts = outs.split(x_a.shape[0], dim=0)
        out_a = parts[0]
        out_b = parts[1] if need_b else out_a
        out_mid = parts[2] if need_mid else None
        losses = pair_loss(out_a, out_b, out_mid, x_a, x_b, w_ab, lcfg, target_a, weights_a, keep_a)
        optimiser.zero_grad(set_to_none=True)
        losses["total"].backward()
        optimiser.step()
        scheduler.step()
        running = running + losses["total"].detach()  # stays on the device: no sync per step
        n_run += 1
        if step % LOG_EVERY == 0 or step == total:
            mean_loss = float(running) / n_run
            curve.append((step, mean_loss))
            running, n_run = 0.0, 0
            if progress is not None:
                progress("training", step, total, mean_loss)
    net.eval()
    return net, curve
