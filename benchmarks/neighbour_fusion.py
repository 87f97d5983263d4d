"""Ablation (issue 11, item 5): cross-slice context that does not leak the target's noise.

NSN2N's network f sees one slice x_i and learns from a target built from its neighbours. The other direction is
also a Noise2Noise pair: a network g that sees the four neighbours x_i-2, x_i-1, x_i+1, x_i+2 (and their cubic
interpolation q_i) and is trained against x_i itself, whose noise is independent of everything g sees when the
noise is independent between slices. g never sees x_i's noise, so its errors differ from f's; the row's output is
a fixed blend of the default's output with g's along the slice axis,

    out = (1 - FUSION_WEIGHT) * default + FUSION_WEIGHT * g,

applied only where the default itself denoises along all three axes (near-isotropic voxels, white in-plane noise):
on the 1.5 mm CT slices g alone is far below the noisy input (the anatomy moves too much over four slices), which
the row ``nsn2n_nbfuse_all`` (the same without the gate) measures. g is the default's U-Net with five input
channels (x_i-2, x_i-1, q_i, x_i+1, x_i+2), residual on q_i (so it starts as the cubic interpolation), trained
with the default's iterations, batch, patch, learning rate and schedule on all pixels (no weight maps: g learns
where the interpolation fails), predicted with the default's test-time augmentation. Training g costs as much as
training f.

    python -m benchmarks.protocol run --set tuning --cases mnitune_rician5,mnitune_rician10 --methods nsn2n_nbfuse

This is the implementation the ablation rows ran with; the engine adopted the method as
``NSN2NDenoiseLib.neighbours`` (the same network, input, draws and blend; training on channels-last tensors and bf16
inference where the CPU has it make its figures differ from these by run-to-run amounts, e.g. 33.17 against 33.10 dB
on MNI152 slices 110-157 at Rician 5 %, seed 100). The neighbour rows and the network input come from the engine.
"""

from __future__ import annotations

import math
import time

import numpy as np

FUSION_WEIGHT = 0.3
"""g's share of the blend, chosen on the tuning set (MNI152 slices 110-157, Rician 5 %, seed 100: 0.3 of 0.3, 0.4,
0.5 and 0.6)."""
WEIGHTS_RECORDED = (0.2, 0.3, 0.4, 0.5)
"""Blend weights whose PSNR every run records beside its output (the row's output uses :data:`FUSION_WEIGHT`)."""


def build_interpolator(cfg):
    """The default's U-Net (``cfg.network``) with five input channels, residual on the middle one (q_i)."""
    from NSN2NDenoiseLib.neighbours import build_neighbour_network

    return build_neighbour_network(cfg)


def train_interpolator(source, cfg):
    """Train g on ``source`` (``NormalizedSlices``, N >= 5 slices) with ``cfg.training``'s iterations, batch,
    patch, learning rate, cosine schedule and seed; returns the network in eval mode (CPU)."""
    import torch

    from NSN2NDenoiseLib.neighbours import network_input
    from NSN2NDenoiseLib.training import dihedral

    t = cfg.training
    n, h, w = source.shape
    if n < 5:
        raise ValueError(f"the neighbour network trains on slices with two neighbours each side; got {n} slices")
    torch.manual_seed(t.seed)
    net = build_interpolator(cfg)
    net.train()
    opt = torch.optim.Adam(net.parameters(), lr=t.learning_rate)
    final, total = t.final_lr_fraction, t.iterations
    schedule = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: final + (1.0 - final) * 0.5 * (1.0 + math.cos(math.pi * s / max(1, total)))
    )
    rng = np.random.default_rng(t.seed)
    p = min(t.patch_size, h, w)
    for _ in range(total):
        inputs, targets = [], []
        for _ in range(t.batch_size):
            i = int(rng.integers(2, n - 2))
            y, x, k = int(rng.integers(0, h - p + 1)), int(rng.integers(0, w - p + 1)), int(rng.integers(0, 8))
            stack = torch.from_numpy(source.patch(np.arange(i - 2, i + 3), y, x, p))
            inputs.append(dihedral(stack[[0, 1, 3, 4]], k))
            targets.append(dihedral(stack[2:3], k))
        loss = ((net(network_input(torch.stack(inputs))) - torch.stack(targets)) ** 2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        schedule.step()
    net.eval()
    return net


def predict_interpolator(net, source, tta: int) -> np.ndarray:
    """g's prediction of every slice of ``source`` (slice axis first), in the input's units (float32), with the
    first ``tta`` transforms of the engine's test-time augmentation."""
    import torch

    from NSN2NDenoiseLib.inference import TTA_ORDER
    from NSN2NDenoiseLib.neighbours import neighbour_rows, network_input
    from NSN2NDenoiseLib.training import dihedral, inverse_dihedral

    n = source.shape[0]
    out = np.empty(source.shape, dtype=np.float32)
    with torch.inference_mode():
        for i in range(n):
            stack = np.stack([source.slab(j, j + 1)[0] for j in neighbour_rows(i, n)])
            x = network_input(torch.from_numpy(stack)[None])
            acc = torch.zeros((1, 1, *source.shape[1:]))
            for k in TTA_ORDER[:tta]:
                acc += inverse_dihedral(net(dihedral(x, k)), k)
            out[i] = (acc / tta)[0, 0].numpy()
    out *= np.float32(source.imap.scale)
    out += np.float32(source.imap.offset)
    return out


def fuse(default: np.ndarray, interpolated: np.ndarray, weight: float = FUSION_WEIGHT) -> np.ndarray:
    """(1 - weight) * default + weight * interpolated."""
    return ((1.0 - weight) * default + weight * interpolated).astype(np.float32)


def run(ds, seed: int, default_row, config_of, score, gate: bool = True) -> tuple[np.ndarray, dict]:
    """The row's output and facts for dataset ``ds``: the default (``default_row(ds, seed)`` -> (volume, info)),
    blended with g along the slice axis where the default used three axes (always with ``gate=False``).
    ``config_of(seed)`` is the default's configuration; ``score(volume)`` the PSNR of a volume (for the recorded
    blend weights)."""
    from NSN2NDenoiseLib.normalization import NormalizedSlices, fit_intensity_map

    default, info = default_row(ds, seed)
    info.pop("_extra", None)
    applies = len(info.get("prediction_axes", ["K"])) > 1
    info["neighbour_fusion"] = {"applied": False, "gate": gate, "weight": FUSION_WEIGHT}
    if gate and not applies:
        info["neighbour_fusion"]["reason"] = "the default denoised along the slice axis only"
        return default, info
    cfg = config_of(seed)
    source = NormalizedSlices(ds.noisy, 0, fit_intensity_map(ds.noisy))
    t0 = time.perf_counter()
    net = train_interpolator(source, cfg)
    train_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    g = predict_interpolator(net, source, cfg.inference.tta)
    predict_s = time.perf_counter() - t0
    info["neighbour_fusion"].update(
        applied=True,
        seconds={"training": train_s, "inference": predict_s},
        psnr={
            "default": score(default),
            "neighbour_network_alone": score(g),
            **{f"blend_{w}": score(fuse(default, g, w)) for w in WEIGHTS_RECORDED},
        },
    )
    return fuse(default, g), info
