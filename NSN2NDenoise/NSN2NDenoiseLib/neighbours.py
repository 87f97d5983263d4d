"""The neighbour network: a second network that predicts slice i from its four neighbours (docs/METHOD.md
section 5).

NS-N2N's network f sees x_i and learns from a target built from its neighbours. The reverse is also a
Noise2Noise pair: a network g that sees x_i-2, x_i-1, x_i+1, x_i+2 (and their cubic interpolation q_i) and is
trained against x_i itself, whose noise is independent of everything g sees when the noise is independent between
slices. g never sees x_i's noise, so its errors differ from f's, and a blend of the two has less error than f alone:

    output = (1 - FUSION_WEIGHT) * f-output + FUSION_WEIGHT * g-output   (g along the slice axis).

Stacks are (N, H, W), slice axis first, in normalised units (:class:`normalization.NormalizedSlices`).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from .config import NSN2NConfig
from .errors import CancelledError
from .inference import TTA_ORDER
from .network import UNet2D
from .normalization import NormalizedSlices
from .training import Batch, Recovery, autocast, dihedral, inverse_dihedral, train_network

FUSION_WEIGHT = 0.3
"""g's share of the output. Chosen on the tuning set (MNI152 slices 110-157, 3 seeds): at Rician 5 % 0.2 and 0.3
tie (+0.33 / +0.32 dB) and 0.4 and 0.5 lose part of the gain; at 10 % 0.3 gains +0.89 dB against +0.68 for 0.2
(benchmarks/RESULTS.md, "Adopted: the neighbour network")"""
OFFSETS = (-2, -1, 1, 2)
"""The neighbours g sees, relative to the slice it predicts."""
MIN_SLICES = 5
"""g trains on slices with two neighbours on each side."""


def neighbour_rows(i: int, n: int) -> list[int]:
    """Indices of x_i-2, x_i-1, x_i+1, x_i+2 in a stack of ``n`` >= 3 slices; a neighbour beyond the stack is
    mirrored about i (x_i+d for x_i-d), so that slice i itself is never among them."""
    if n < 3:
        raise ValueError(f"the neighbour network needs at least 3 slices, got {n}")
    rows = []
    for d in OFFSETS:
        j = i + d if 0 <= i + d < n else i - d
        rows.append(min(max(j, 0), n - 1))
    return rows


def network_input(neighbours: torch.Tensor) -> torch.Tensor:
    """(B, 4, H, W) neighbours x_i-2, x_i-1, x_i+1, x_i+2 -> (B, 5, H, W) with their cubic interpolation
    q_i = (-x_i-2 + 4 x_i-1 + 4 x_i+1 - x_i+2) / 6 as the middle channel (the residual network's base)."""
    a, b, c, d = neighbours.unbind(1)
    q = (-a + 4.0 * b + 4.0 * c - d) / 6.0
    return torch.stack([a, b, q, c, d], dim=1)


def build_neighbour_network(cfg: NSN2NConfig) -> UNet2D:
    """The U-Net of ``cfg.network`` with five input channels, residual on the middle one: it starts as the cubic
    interpolation q_i."""
    return UNet2D(5, 1, depth=cfg.network.depth, width=cfg.network.width)


def neighbour_config(cfg: NSN2NConfig) -> NSN2NConfig:
    """The training configuration of g: f's iterations, batch, patch, learning rate, schedule and seed; a plain
    Noise2Noise loss on every pixel (no weight maps, no self term, no RC or IC: g learns where the interpolation
    fails)."""
    return cfg.replace(loss={"lambda_self": 0.0, "lambda_rc": 0.0, "lambda_ic": 0.0})


class NeighbourSampler:
    """Random batches for g: the neighbours of a random slice i (2 <= i <= N - 3) as input, x_i as target, all
    pixels weighted 1; one random flip/rotation per sample. Draws i, row, column and transform per sample from
    ``numpy.random.default_rng(seed)``."""

    def __init__(self, source: NormalizedSlices, patch: int, batch: int, seed: int, device: torch.device) -> None:
        n, h, w = source.shape
        if n < MIN_SLICES:
            raise ValueError(f"the neighbour network needs at least {MIN_SLICES} slices, got {n}")
        self.source = source
        self.size = min(patch, h, w)
        self.batch = batch
        self.device = device
        self.rng = np.random.default_rng(seed)

    def sample(self, ramp: float = 1.0) -> Batch:
        """One batch (``ramp`` is ignored: g's target is x_i itself)."""
        n, h, w = self.source.shape
        p = self.size
        inputs, targets = [], []
        for _ in range(self.batch):
            i = int(self.rng.integers(2, n - 2))
            y, x = int(self.rng.integers(0, h - p + 1)), int(self.rng.integers(0, w - p + 1))
            k = int(self.rng.integers(0, 8))
            stack = torch.from_numpy(self.source.patch(np.arange(i - 2, i + 3), y, x, p))  # x_i-2 .. x_i+2
            inputs.append(dihedral(stack[[0, 1, 3, 4]], k))
            targets.append(dihedral(stack[2:3], k))
        x_in = network_input(torch.stack(inputs)).to(self.device)
        target = torch.stack(targets).to(self.device)
        ones = torch.ones_like(target)
        return Batch(x=x_in, target=target, weights=ones, keep=torch.zeros_like(target))


def train_neighbour_network(
    source: NormalizedSlices,
    cfg: NSN2NConfig,
    device: torch.device,
    progress=None,
    is_cancelled: Callable[[], bool] | None = None,
    on_recovery: Callable[[Recovery], None] | None = None,
) -> tuple[torch.nn.Module, list[tuple[int, float]]]:
    """Train g on ``source`` with f's training settings (:func:`neighbour_config`, :class:`NeighbourSampler`
    seeded by ``cfg.training.seed``) through :func:`training.train_network` (its guard, cancel and progress);
    returns the network in eval mode and its loss curve."""
    t = cfg.training
    return train_network(
        source,
        None,
        neighbour_config(cfg),
        device,
        progress,
        is_cancelled,
        sampler=NeighbourSampler(source, t.patch_size, t.batch_size, t.seed, device),
        on_recovery=on_recovery,
        build=build_neighbour_network,
    )


def fusion_applies(choice: str, axes: list[int], n_slices: int) -> tuple[bool, str]:
    """Whether g is trained and blended in (``inference.neighbour_fusion``), and why. 'auto' follows the
    prediction axes: where the default denoises along all three axes (near-isotropic voxels, white in-plane
    noise); on anisotropic CT slices g alone falls far below the noisy input (RESULTS.md)."""
    if n_slices < MIN_SLICES:
        return False, f"fewer than {MIN_SLICES} slices along the slice axis"
    if choice == "off":
        return False, "inference.neighbour_fusion = 'off'"
    if choice == "on":
        return True, "inference.neighbour_fusion = 'on'"
    if len(axes) > 1:
        return True, "denoised along three axes (near-isotropic voxels, white in-plane noise)"
    return False, "denoised along the slice axis only (anisotropic voxels or in-plane correlated noise)"


def blend_into(
    net: torch.nn.Module,
    source: NormalizedSlices,
    out: np.ndarray,
    tta: int,
    device: torch.device,
    bf16: bool = False,
    progress: Callable[[int], None] | None = None,
    is_cancelled: Callable[[], bool] | None = None,
) -> None:
    """out <- (1 - FUSION_WEIGHT) out + FUSION_WEIGHT g(neighbours), slice by slice, in the input's units.

    ``out`` (N, H, W) is a view of the output volume with the slice axis first, holding f's output; g's output
    (the mean over the first ``tta`` transforms of ``inference.TTA_ORDER``) is never held for the whole volume.
    ``progress(i)`` is called after slice i.

    Raises
    ------
    CancelledError
        When ``is_cancelled()`` turns true between slices.
    """
    n = source.shape[0]
    scale, offset = np.float32(source.imap.scale), np.float32(source.imap.offset)
    keep, add = np.float32(1.0 - FUSION_WEIGHT), np.float32(FUSION_WEIGHT)
    with torch.inference_mode():
        for i in range(n):
            if is_cancelled is not None and is_cancelled():
                raise CancelledError("Inference was cancelled; no result was produced.")
            stack = source.rows(np.array(neighbour_rows(i, n)))
            x = network_input(torch.from_numpy(stack).to(device)[None])
            outputs = []
            for k in TTA_ORDER[:tta]:
                with autocast(device, bf16):
                    y = net(dihedral(x, k).contiguous(memory_format=torch.channels_last)).float()
                outputs.append(inverse_dihedral(y, k))
            g = torch.stack(outputs).mean(dim=0)[0, 0].cpu().numpy()
            g *= scale
            g += offset
            out[i] *= keep
            out[i] += add * g
            if progress is not None:
                progress(i)
