"""Self-supervised and supervised deep baselines, trained per volume with NSN2N's own 2D U-Net.

Every method has the signature of :mod:`benchmarks.baselines` (``method(noisy, ctx) -> (denoised, info)``) and
uses NSN2N's residual ``UNet2D`` with the depth and width of the NSN2N configuration under test (``ctx.network``),
the same patch size, batch size, learning rate, Adam with a cosine decay, and random flips/rotations. The
self-supervised ones stop at NSN2N's wall-time budget (``ctx.budget_seconds``: its weights plus training time,
the learning-rate schedule following elapsed time); the supervised ceiling runs NSN2N's iteration count.

Intensities are normalised as NSN2N does (0.5th and 99.5th percentiles of the noisy volume to 0 and 1) and
mapped back. Slices are along K (array axis 0).
"""

from __future__ import annotations

import math
import time

import numpy as np

MAX_ITERATIONS = 200_000
"""Safety cap of a time-budgeted run."""
N2V_MASK_FRACTION = 0.015
"""Fraction of patch pixels masked per Noise2Void sample (N2V's default 1.5 %)."""
N2V_RADIUS = 2
"""Masked pixels take the value of a random neighbour within this radius (5x5 window, centre excluded)."""
NE2NE_GAMMA = 2.0
"""Neighbor2Neighbor regulariser weight at the end of training (ramped linearly from 0, as in the paper)."""
DEFAULT_NETWORK = {"depth": 3, "width": 32}
DEFAULT_TRAINING = {"patch_size": 64, "batch_size": 8, "learning_rate": 1e-3, "final_lr_fraction": 0.05, "seed": 0}


def _torch():
    import torch

    return torch


def _network(ctx):
    from NSN2NDenoiseLib.network import UNet2D

    n = _network_fields(ctx)
    return UNet2D(1, 1, depth=n["depth"], width=n["width"], residual=True)


def _network_fields(ctx) -> dict:
    """Depth and width of ``ctx.network`` (a configuration's ``network`` section), else the defaults; the network
    is always residual, as NSN2N's (fields other than depth and width, e.g. of older reports, are ignored)."""
    n = {**DEFAULT_NETWORK, **(ctx.network or {})}
    return {"depth": n["depth"], "width": n["width"]}


def _training(ctx) -> dict:
    return {**DEFAULT_TRAINING, **(ctx.training or {})}


def _normalise(volume: np.ndarray) -> tuple[np.ndarray, float, float]:
    low, high = np.percentile(volume, (0.5, 99.5))
    scale = float(high - low) if high > low else 1.0
    return ((volume - low) / scale).astype(np.float32), float(low), scale


def _dihedral(x, k: int):
    torch = _torch()
    if k >= 4:
        x = x.flip(-1)
    return torch.rot90(x, k % 4, dims=(-2, -1))


class _Patches:
    """Random (B, C, p, p) patches of C aligned stacks (e.g. noisy and clean), each with a random flip/rotation."""

    def __init__(self, stacks: list, patch: int, batch: int, seed: int, depth_slices: int = 1) -> None:
        self.stacks = stacks
        _, h, w = stacks[0].shape
        self.p = min(patch, h, w)
        self.batch = batch
        self.depth_slices = depth_slices
        self.rng = np.random.default_rng(seed)

    def sample(self):
        torch = _torch()
        n, h, w = self.stacks[0].shape
        d = self.depth_slices
        out = []
        for _ in range(self.batch):
            k0 = int(self.rng.integers(0, n - d + 1))
            y = int(self.rng.integers(0, h - self.p + 1))
            x = int(self.rng.integers(0, w - self.p + 1))
            rot = int(self.rng.integers(0, 8))
            parts = [s[k0 : k0 + d, y : y + self.p, x : x + self.p] for s in self.stacks]
            out.append(_dihedral(torch.cat(parts, 0), rot))
        return torch.stack(out)  # (B, C * d, p, p)


def _fit(net, step_loss, iterations: int | None, budget: float | None, tcfg: dict) -> dict:
    """Adam + cosine decay driven by max(step / iterations, elapsed / budget); returns training facts."""
    torch = _torch()
    opt = torch.optim.Adam(net.parameters(), lr=tcfg["learning_rate"])
    final = tcfg["final_lr_fraction"]
    limit = iterations if iterations is not None else MAX_ITERATIONS
    start = time.perf_counter()
    curve, running, steps = [], 0.0, 0
    net.train()
    for step in range(1, limit + 1):
        frac = step / limit if iterations is not None else 0.0
        if budget is not None:
            frac = max(frac, (time.perf_counter() - start) / budget)
            if frac >= 1.0:
                break
        for g in opt.param_groups:
            g["lr"] = tcfg["learning_rate"] * (final + (1 - final) * 0.5 * (1 + math.cos(math.pi * min(frac, 1.0))))
        loss = step_loss(frac)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        running += float(loss.detach())
        steps = step
        if step % 10 == 0:
            curve.append([step, running / 10])
            running = 0.0
    net.eval()
    return {"iterations": steps, "training_seconds": time.perf_counter() - start, "loss_curve": curve}


def _predict(net, slices, batch: int = 4) -> np.ndarray:
    torch = _torch()
    out = []
    with torch.no_grad():
        for k in range(0, slices.shape[0], batch):
            out.append(net(slices[k : k + batch, None])[:, 0])
    return torch.cat(out).numpy()


def _run(noisy: np.ndarray, ctx, make_loss, supervised: bool = False):
    """Shared frame: normalise, build the network, train with ``make_loss(net, slices, clean, tcfg)``, predict."""
    torch = _torch()
    tcfg = _training(ctx)
    torch.manual_seed(tcfg["seed"])
    norm, low, scale = _normalise(noisy)
    slices = torch.from_numpy(norm)
    clean = None
    if supervised:
        if ctx.clean is None:
            raise ValueError("the supervised ceiling needs the clean volume")
        clean = torch.from_numpy(((ctx.clean - low) / scale).astype(np.float32))
    net = _network(ctx)
    step_loss = make_loss(net, slices, clean, tcfg)
    if supervised:
        facts = _fit(net, step_loss, ctx.iterations or 1000, None, tcfg)
    else:
        facts = _fit(net, step_loss, None, ctx.budget_seconds or 60.0, tcfg)
    t0 = time.perf_counter()
    out = _predict(net, slices) * scale + low
    facts["inference_seconds"] = time.perf_counter() - t0
    facts["budget_seconds"] = None if supervised else (ctx.budget_seconds or 60.0)
    facts["network"] = {**_network_fields(ctx), "residual": True}
    facts["patch_size"], facts["batch_size"] = tcfg["patch_size"], tcfg["batch_size"]
    return out.astype(np.float32), facts


# ---------------------------------------------------------------------------------------------------------------
# Losses of each method: make_loss(net, slices, clean, tcfg) -> step_loss(frac) -> scalar tensor


def _n2v_loss(net, slices, clean, tcfg):
    torch = _torch()
    sampler = _Patches([slices], tcfg["patch_size"], tcfg["batch_size"], tcfg["seed"])
    rng = np.random.default_rng(tcfg["seed"] + 1)
    offsets = np.array(
        [
            (dy, dx)
            for dy in range(-N2V_RADIUS, N2V_RADIUS + 1)
            for dx in range(-N2V_RADIUS, N2V_RADIUS + 1)
            if (dy, dx) != (0, 0)
        ]
    )

    def step(frac):
        x = sampler.sample()  # (B, 1, p, p)
        b, _, p, _ = x.shape
        m = max(1, round(N2V_MASK_FRACTION * p * p))
        bi = np.repeat(np.arange(b), m)
        ys = rng.integers(0, p, b * m)
        xs = rng.integers(0, p, b * m)
        off = offsets[rng.integers(0, len(offsets), b * m)]
        ny = np.clip(ys + off[:, 0], 0, p - 1)
        nx = np.clip(xs + off[:, 1], 0, p - 1)
        masked = x.clone()
        masked[bi, 0, ys, xs] = x[bi, 0, ny, nx]
        out = net(masked)
        return torch.mean((out[bi, 0, ys, xs] - x[bi, 0, ys, xs]) ** 2)

    return step


_NEIGHBOURS = np.array([[1, 2], [0, 3], [0, 3], [1, 2]])  # adjacent cells of a 2x2 cell (0=TL, 1=TR, 2=BL, 3=BR)


def _ne2ne_loss(net, slices, clean, tcfg):
    torch = _torch()
    import torch.nn.functional as F

    sampler = _Patches([slices], tcfg["patch_size"], tcfg["batch_size"], tcfg["seed"])
    rng = np.random.default_rng(tcfg["seed"] + 1)

    def sub(cells, idx):
        return torch.gather(cells, 1, idx)

    def step(frac):
        x = sampler.sample()
        cells = F.pixel_unshuffle(x, 2)  # (B, 4, p/2, p/2)
        b, _, h, w = cells.shape
        i1 = rng.integers(0, 4, (b, 1, h, w))
        i2 = _NEIGHBOURS[i1, rng.integers(0, 2, (b, 1, h, w))]
        i1, i2 = torch.from_numpy(i1), torch.from_numpy(i2)
        g1, g2 = sub(cells, i1), sub(cells, i2)
        with torch.no_grad():
            fy = F.pixel_unshuffle(net(x), 2)
        out = net(g1)
        rec = torch.mean((out - g2) ** 2)
        reg = torch.mean((out - g2 - (sub(fy, i1) - sub(fy, i2))) ** 2)
        return rec + NE2NE_GAMMA * frac * reg

    return step


def _zsn2n_loss(net, slices, clean, tcfg):
    torch = _torch()
    import torch.nn.functional as F

    sampler = _Patches([slices], tcfg["patch_size"], tcfg["batch_size"], tcfg["seed"])

    def down(x):
        c = F.pixel_unshuffle(x, 2)
        return 0.5 * (c[:, 0:1] + c[:, 3:4]), 0.5 * (c[:, 1:2] + c[:, 2:3])

    def step(frac):
        x = sampler.sample()
        d1, d2 = down(x)
        p1, p2 = net(d1), net(d2)
        res = 0.5 * (torch.mean((p1 - d2) ** 2) + torch.mean((p2 - d1) ** 2))
        e1, e2 = down(net(x))
        cons = 0.5 * (torch.mean((p1 - e1) ** 2) + torch.mean((p2 - e2) ** 2))
        return res + cons

    return step


def _neighbour_slice_loss(net, slices, clean, tcfg):
    torch = _torch()
    sampler = _Patches([slices], tcfg["patch_size"], tcfg["batch_size"], tcfg["seed"], depth_slices=2)

    def step(frac):
        pair = sampler.sample()  # (B, 2, p, p): x_i, x_i+1
        x = torch.cat([pair[:, 0:1], pair[:, 1:2]])
        target = torch.cat([pair[:, 1:2], pair[:, 0:1]])  # both directions, as NSN2N's symmetric loss
        return torch.mean((net(x) - target) ** 2)

    return step


def _supervised_loss(net, slices, clean, tcfg):
    torch = _torch()
    sampler = _Patches([slices, clean], tcfg["patch_size"], tcfg["batch_size"], tcfg["seed"])

    def step(frac):
        pair = sampler.sample()  # (B, 2, p, p): noisy, clean
        return torch.mean((net(pair[:, 0:1]) - pair[:, 1:2]) ** 2)

    return step


def noise2void(noisy: np.ndarray, ctx):
    """Compact Noise2Void: 1.5 % of patch pixels replaced by a random 5x5 neighbour, loss on those pixels only."""
    out, info = _run(noisy, ctx, _n2v_loss)
    return out, {**info, "mask_fraction": N2V_MASK_FRACTION, "replacement": "random neighbour, 5x5 window"}


def neighbor2neighbor(noisy: np.ndarray, ctx):
    """Neighbor2Neighbor: random 2x2-cell neighbour sub-images, reconstruction + regulariser (gamma ramp to 2)."""
    out, info = _run(noisy, ctx, _ne2ne_loss)
    return out, {**info, "gamma": NE2NE_GAMMA}


def zs_n2n(noisy: np.ndarray, ctx):
    """ZS-N2N: diagonal-pair down-sampled images as mutual targets, plus the consistency term (on patches)."""
    return _run(noisy, ctx, _zsn2n_loss)


def neighbour_slice_n2n(noisy: np.ndarray, ctx):
    """Plain neighbour-slice Noise2Noise: x_i -> x_i+1 and back, unweighted, no RC or IC term."""
    return _run(noisy, ctx, _neighbour_slice_loss)


def supervised(noisy: np.ndarray, ctx):
    """The supervised ceiling: the same network trained noisy -> clean on this volume, NSN2N's iterations."""
    return _run(noisy, ctx, _supervised_loss, supervised=True)


DEEP = {
    "n2v": noise2void,
    "ne2ne": neighbor2neighbor,
    "zsn2n": zs_n2n,
    "ns_n2n_plain": neighbour_slice_n2n,
    "supervised": supervised,
}
"""Deep baselines by the name used on the command line and in the results."""
