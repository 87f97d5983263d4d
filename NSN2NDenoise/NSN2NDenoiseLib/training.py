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

from .config import NSN2NConfig
from .errors import CancelledError
from .losses import pair_loss
from .network import UNet2D

ProgressFn = Callable[[str, int, int, "float | None"], None]
CancelFn = Callable[[], bool]

# Loss values are averaged and recorded (and reported to progress) every this many iterations.
LOG_EVERY = 10


def build_network(cfg: NSN2NConfig) -> UNet2D:
    """The U-Net described by ``cfg.network`` (one input and one output channel)."""
    n = cfg.network
    return UNet2D(1, 1, depth=n.depth, width=n.width, residual=n.residual)


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
    ) -> None:
        self.slices = slices
        self.weights = weights
        self.extra = extra
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
                ex = self.extra[i, ..., y : y + self.ph, x : x + self.pw]
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
) -> tuple[UNet2D, list[tuple[int, float]]]:
    """Train a fresh network by NS-N2N on ``slices`` (N, H, W) with pair weights (N - 1, H, W).

    ``target_weights`` (N - 2, H, W), used with the 3-slice target only, replace W_i-1 * W_i as the weights of
    that target (``loss.three_slice_weights = 'direct'``); ``target_keep`` (N - 2, H, W) are then the weights of
    the self term (``weights.keep_factor``).

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
    three = lcfg.target in ("three_slice", "either") and slices.shape[0] >= 3
    extra = target_weights if three else None
    if extra is not None and target_keep is not None:
        extra = torch.stack([target_weights, target_keep], dim=1)  # (N - 2, 2, H, W)
    sampler = PatchSampler(slices, weights, 3 if three else 2, tcfg.patch_size, tcfg.batch_size, tcfg.seed, extra=extra)
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
            x_prev, x_a, x_b = stack[:, 0:1], stack[:, 1:2], stack[:, 2:3]
            w_ab = wstack[:, 1:2]
            w_prev = wstack[:, 0:1]
            w_three = wstack[:, 2:3] if extra is not None else w_prev * w_ab
            keep_a = wstack[:, 3:4] if (extra is not None and wstack.shape[1] > 3) else None
            if lcfg.target == "either":
                target_a, weights_a = either_target(x_prev, x_b, w_prev, w_ab, w_three)
            else:
                target_a, weights_a = 0.5 * (x_prev + x_b), w_three
        else:
            x_a, x_b = stack[:, 0:1], stack[:, 1:2]
            w_ab = wstack[:, 0:1]
            target_a = weights_a = keep_a = None
        inputs = [x_a]
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
