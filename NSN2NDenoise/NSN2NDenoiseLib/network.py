"""A small 2D U-Net for slice denoising (docs/METHOD.md section 4).

Shapes: input (B, C_in, H, W) with any H and W; output (B, C_out, H, W), same dtype and device as the input.
Sizes that are not multiples of 2**depth are reflect-padded and cropped back in :func:`pad_to_multiple` /
:meth:`UNet2D.forward`. No BatchNorm: statistics of small patch batches would differ from whole-slice inference.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def pad_to_multiple(x: torch.Tensor, multiple: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """Reflect-pad the last two axes of ``x`` (B, C, H, W) up to multiples of ``multiple``.

    Returns the padded tensor and the original (H, W) to crop back to. Slices smaller than the padding needs
    fall back to replicate padding (reflect needs pad < size).
    """
    h, w = x.shape[-2:]
    ph = (-h) % multiple
    pw = (-w) % multiple
    if ph == 0 and pw == 0:
        return x, (h, w)
    mode = "reflect" if (ph < h and pw < w) else "replicate"
    return F.pad(x, (0, pw, 0, ph), mode=mode), (h, w)


class _DoubleConv(nn.Sequential):
    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__(
            nn.Conv2d(c_in, c_out, 3, padding=1),
            nn.LeakyReLU(0.1, inplace=True),
            nn.Conv2d(c_out, c_out, 3, padding=1),
            nn.LeakyReLU(0.1, inplace=True),
        )


class UNet2D(nn.Module):
    """U-Net with ``depth`` 2x down-samplings and ``width * 2**level`` channels per level.

    Parameters
    ----------
    in_channels, out_channels : int
        Channels of input and output images.
    depth : int
        Number of down-samplings (the input is padded to a multiple of 2**depth internally).
    width : int
        Channels at the first level.
    residual : bool
        If true (and out_channels is 1, or equals in_channels) the network predicts a correction added to its
        input (the centre channel of an odd number of input channels), and starts as the identity
        (zero-initialised output layer).
    """

    def __init__(
        self, in_channels: int = 1, out_channels: int = 1, depth: int = 3, width: int = 32, residual: bool = True
    ) -> None:
        super().__init__()
        self.depth = depth
        self.residual = residual and (in_channels == out_channels or (out_channels == 1 and in_channels % 2 == 1))
        self.centre = in_channels // 2 if in_channels != out_channels else None
        chans = [width * 2**level for level in range(depth + 1)]
        self.encoders = nn.ModuleList()
        c_prev = in_channels
        for c in chans[:-1]:
            self.encoders.append(_DoubleConv(c_prev, c))
            c_prev = c
        self.bottleneck = _DoubleConv(chans[-2], chans[-1])
        self.ups = nn.ModuleList()
        self.decoders = nn.ModuleList()
        for level in reversed(range(depth)):
            self.ups.append(nn.ConvTranspose2d(chans[level + 1], chans[level], 2, stride=2))
            self.decoders.append(_DoubleConv(2 * chans[level], chans[level]))
        self.head = nn.Conv2d(chans[0], out_channels, 1)
        if self.residual:
            # Start as the identity: training begins from "keep the input", never from a random perturbation of
            # it, which made some seeds start far off and recover slowly.
            nn.init.zeros_(self.head.weight)
            nn.init.zeros_(self.head.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C_in, H, W) -> (B, C_out, H, W)."""
        padded, (h, w) = pad_to_multiple(x, 2**self.depth)
        skips = []
        y = padded
        for enc in self.encoders:
            y = enc(y)
            skips.append(y)
            y = F.max_pool2d(y, 2)
        y = self.bottleneck(y)
        for up, dec, skip in zip(self.ups, self.decoders, reversed(skips), strict=False):
            y = dec(torch.cat([up(y), skip], dim=1))
        y = self.head(y)
        if self.residual:
            y = y + (padded if self.centre is None else padded[:, self.centre : self.centre + 1])
        return y[..., :h, :w]
