"""Training the 2D network on one volume (docs/METHOD.md sections 3 and 4).

Patches are drawn at random slices i (1 <= i <= N - 2), positions and flips/rotations from the normalised slices
(:class:`normalization.NormalizedSlices`, slice axis first) and the maps of :func:`weights.compute_targets`; every
value a sample carries is named (:class:`Batch`), and one random flip/rotation is applied to all of them.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
import torch

from .config import NSN2NConfig
from .errors import CancelledError, TrainingDivergedError
from .losses import Outputs, total_loss
from .network import UNet2D
from .normalization import NormalizedSlices
from .weights import TrainingTargets, interpolate

ProgressFn = Callable[[str, int, int, "float | None"], None]
CancelFn = Callable[[], bool]

LOG_EVERY = 10
"""Loss values are averaged and recorded (and reported to progress) every this many iterations."""
SPIKE_FACTOR = 10.0
"""Training has diverged when the mean loss of the last :data:`LOG_EVERY` iterations is not finite or exceeds this
times the lowest mean so far. The target's warm-up raises a healthy loss by less than 2x (the cubic target's
noise against the 3-slice mean's); a diverged Adam step raises it by 100-1e9x (`best` on Colin27 at Rician 10 %:
0.007 to 4.0 to 8e6 within 100 iterations, never recovering; benchmarks/RESULTS.md, "Presets on the reporting
set")."""
MAX_RECOVERIES = 3
"""Divergences a run recovers from (each restores the last good weights and optimiser state and halves the
learning rate) before it stops with :class:`TrainingDivergedError`."""


@dataclass(frozen=True)
class Recovery:
    """One divergence of a training run and what was done about it."""

    iteration: int
    """The iteration at which the spike was seen (the end of its :data:`LOG_EVERY` window)."""
    loss: float
    """The window's mean loss (may be inf or nan)."""
    restored_iteration: int
    """The iteration whose weights and optimiser state were restored (0 = the start)."""
    learning_rate_scale: float
    """The learning rate's scale from here on (0.5 after the first recovery, 0.25 after the second, ...)."""


def build_network(cfg: NSN2NConfig) -> UNet2D:
    """The residual U-Net described by ``cfg.network``: one input and one output channel."""
    return UNet2D(1, 1, depth=cfg.network.depth, width=cfg.network.width)


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


@dataclass(frozen=True)
class Batch:
    """One training batch; every field is (B, 1, p, p) float32 on the run's device, normalised units."""

    x: torch.Tensor
    """The network's input x_i."""
    target: torch.Tensor
    """Its Noise2Noise target: the (ramped) cubic interpolation of x_i's neighbours."""
    weights: torch.Tensor
    """1 where the target matches x_i."""
    keep: torch.Tensor
    """1 where the self term keeps x_i."""
    x_next: torch.Tensor | None = None
    """x_i+1, for the RC and IC terms."""
    pair_weights: torch.Tensor | None = None
    """The match of the pair (x_i, x_i+1), for the RC term."""


class PatchSampler:
    """Random training batches from the normalised slices and their maps.

    Parameters
    ----------
    source : NormalizedSlices
        (N, H, W) slices, N >= 3.
    targets : TrainingTargets
        Maps of every slice (and pair).
    patch, batch, seed : int
        Patch side in pixels (clipped to the slice), samples per batch, seed of the draws.
    need_next : bool
        Also crop x_i+1 (and the pair map when ``targets.pair_weights`` exists).
    device : torch.device
    """

    def __init__(
        self,
        source: NormalizedSlices,
        targets: TrainingTargets,
        patch: int,
        batch: int,
        seed: int,
        need_next: bool = False,
        device: torch.device | None = None,
    ) -> None:
        self.source = source
        self.targets = targets
        n, h, w = source.shape
        self.n = n
        self.size = min(patch, h, w)  # square, so that rotations keep the shape
        self.batch = batch
        self.need_next = need_next
        self.device = device or torch.device("cpu")
        self.rng = np.random.default_rng(seed)

    def sample(self, ramp: float = 1.0) -> Batch:
        """A batch whose targets are moved ``ramp`` (0..1) from the 3-slice mean toward the cubic interpolation."""
        n, p = self.n, self.size
        _, h, w = self.source.shape
        centres = self.rng.integers(1, n - 1, self.batch)
        ys = self.rng.integers(0, h - p + 1, self.batch)
        xs = self.rng.integers(0, w - p + 1, self.batch)
        ks = self.rng.integers(0, 8, self.batch)
        fields: dict[str, list[torch.Tensor]] = {"x": [], "target": [], "weights": [], "keep": []}
        if self.need_next:
            fields["x_next"] = []
            if self.targets.pair_weights is not None:
                fields["pair_weights"] = []
        for i, y, x, k in zip(centres.tolist(), ys.tolist(), xs.tolist(), ks.tolist(), strict=True):
            rows = np.clip(np.arange(i - 2, i + 3), 0, n - 1)
            s = torch.from_numpy(self.source.patch(rows, y, x, p))  # x_i-2 .. x_i+2
            crops = {
                "x": s[2],
                "target": self._target(s, i, rows, y, x, ramp),
                "weights": self._crop(self.targets.weights, i, y, x),
                "keep": self._crop(self.targets.keep, i, y, x),
            }
            if "x_next" in fields:
                crops["x_next"] = s[3]
            if "pair_weights" in fields:
                crops["pair_weights"] = self._crop(self.targets.pair_weights, i, y, x)
            for name, crop in crops.items():
                fields[name].append(dihedral(crop, k))
        return Batch(**{name: torch.stack(v).unsqueeze(1).to(self.device) for name, v in fields.items()})

    def _target(self, s: torch.Tensor, i: int, rows: np.ndarray, y: int, x: int, ramp: float) -> torch.Tensor:
        """The target of slice i from its patch stack ``s`` = x_i-2 .. x_i+2 (rows ``rows``, corner y, x): the
        ramped cubic interpolation (:func:`weights.interpolate`). The benchmarks' oracle rows override it."""
        return interpolate(0.5 * (s[1] + s[3]), 0.5 * (s[0] + s[4]), 2 <= i <= self.n - 3, ramp)

    def _crop(self, maps: np.ndarray, i: int, y: int, x: int) -> torch.Tensor:
        return torch.from_numpy(maps[i, y : y + self.size, x : x + self.size].astype(np.float32))


def target_ramp(step: int, total: int, warmup: float) -> float:
    """Share of the way from the 3-slice mean to the cubic target at ``step`` (1-based) of ``total``: rises
    linearly from 1 / (warmup * total) to 1 over the first ``warmup`` share of the iterations."""
    if warmup <= 0:
        return 1.0
    return min(1.0, step / (warmup * total))


def autocast(device: torch.device, enabled: bool):
    """bf16 autocast on ``device`` when ``enabled``, else a no-op context."""
    if enabled:
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def train_network(
    source: NormalizedSlices,
    targets: TrainingTargets,
    cfg: NSN2NConfig,
    device: torch.device,
    progress: ProgressFn | None = None,
    is_cancelled: CancelFn | None = None,
    sampler: PatchSampler | None = None,
    init_state: Mapping[str, torch.Tensor] | None = None,
    on_recovery: Callable[[Recovery], None] | None = None,
    build: Callable[[NSN2NConfig], torch.nn.Module] = build_network,
) -> tuple[UNet2D, list[tuple[int, float]]]:
    """Train a network by NS-N2N on ``source`` (N >= 3 slices) with the maps ``targets``.

    Returns the trained network (in eval mode, on ``device``) and the loss curve as (iteration, mean total loss
    over the last :data:`LOG_EVERY` iterations). ``sampler`` replaces the :class:`PatchSampler` built from
    ``source``, ``targets`` and ``cfg.training`` (the benchmarks' oracle rows pass one with clean targets).
    ``init_state`` (a state dict of a network of the same ``cfg.network``, e.g. from :mod:`model_io`) is the
    starting point instead of the identity (a warm start); the optimiser and its schedule start afresh.
    ``build(cfg)`` makes the network (after the seed is set), e.g. :func:`neighbours.build_neighbour_network`
    with a :class:`neighbours.NeighbourSampler`.

    Divergence guard: every :data:`LOG_EVERY` iterations the weights and the optimiser state are kept; when a
    window's mean loss spikes (:data:`SPIKE_FACTOR`), the last kept state is restored, the learning rate halved
    for the rest of the run, ``on_recovery`` called with a :class:`Recovery`, and training goes on (the spiking
    window is not recorded in the curve). A run that never spikes is unchanged by the guard.

    Raises
    ------
    CancelledError
        When ``is_cancelled()`` turns true; checked before every iteration.
    TrainingDivergedError
        When training diverges more than :data:`MAX_RECOVERIES` times.
    """
    tcfg, lcfg = cfg.training, cfg.loss
    torch.manual_seed(tcfg.seed)
    net = build(cfg)
    if init_state is not None:
        net.load_state_dict(init_state)  # strict: keys and shapes are checked where the state was loaded
    net = net.to(device, memory_format=torch.channels_last)
    net.train()
    optimiser = torch.optim.Adam(net.parameters(), lr=tcfg.learning_rate)
    final, total = tcfg.final_lr_fraction, tcfg.iterations

    lr_scale = [1.0]  # halved at each recovery from a divergence

    def lr_factor(step: int) -> float:  # cosine decay from 1 to final_lr_fraction
        return lr_scale[0] * (final + (1.0 - final) * 0.5 * (1.0 + math.cos(math.pi * step / max(1, total))))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimiser, lr_factor)
    need_next = lcfg.lambda_rc > 0 or lcfg.lambda_ic > 0
    if sampler is None:
        sampler = PatchSampler(source, targets, tcfg.patch_size, tcfg.batch_size, tcfg.seed, need_next, device)
    bf16 = tcfg.mixed_precision and device.type == "cuda"
    curve: list[tuple[int, float]] = []
    running: torch.Tensor | float = 0.0
    n_run = 0
    lowest = math.inf
    kept = (0, _keep(net, optimiser))
    recoveries = 0
    for step in range(1, total + 1):
        if is_cancelled is not None and is_cancelled():
            raise CancelledError("Training was cancelled; no result was produced.")
        batch = sampler.sample(target_ramp(step, total, lcfg.target_warmup))
        inputs = [batch.x]
        if need_next:
            inputs.append(batch.x_next)
        if lcfg.lambda_ic > 0:
            inputs.append(0.5 * (batch.x + batch.x_next))
        with autocast(device, bf16):
            parts = net(torch.cat(inputs, dim=0)).float().split(batch.x.shape[0], dim=0)
        outputs = Outputs(
            out=parts[0],
            out_next=parts[1] if need_next else None,
            out_mid=parts[2] if lcfg.lambda_ic > 0 else None,
        )
        losses = total_loss(outputs, batch, lcfg)
        optimiser.zero_grad(set_to_none=True)
        losses["total"].backward()
        optimiser.step()
        scheduler.step()
        running = running + losses["total"].detach()  # stays on the device: no sync per step
        n_run += 1
        if step % LOG_EVERY == 0 or step == total:
            mean_loss = float(running) / n_run
            running, n_run = 0.0, 0
            if not math.isfinite(mean_loss) or mean_loss > SPIKE_FACTOR * lowest:
                if recoveries == MAX_RECOVERIES:
                    raise TrainingDivergedError(
                        f"Training diverged {recoveries + 1} times (mean loss {mean_loss:.3g} at iteration {step}, "
                        f"lowest {lowest:.3g}), even at 1/{2**recoveries} of the learning rate; no result was "
                        "produced. Use a smaller training.learning_rate, the 'default' preset or a smaller network."
                    )
                recoveries += 1
                _restore(net, optimiser, kept[1])
                lr_scale[0] *= 0.5
                for group, base in zip(optimiser.param_groups, scheduler.base_lrs, strict=True):
                    group["lr"] = base * lr_factor(scheduler.last_epoch)  # the restored groups hold an older lr
                if on_recovery is not None:
                    on_recovery(Recovery(step, mean_loss, kept[0], lr_scale[0]))
                continue
            lowest = min(lowest, mean_loss)
            kept = (step, _keep(net, optimiser))
            curve.append((step, mean_loss))
            if progress is not None:
                progress("training", step, total, mean_loss)
    net.eval()
    return net, curve


def _keep(net: torch.nn.Module, optimiser: torch.optim.Optimizer) -> tuple[dict, dict]:
    """Copies of the network's weights and the optimiser's state (moments, step counts), on their devices."""
    weights = {k: v.detach().clone() for k, v in net.state_dict().items()}
    opt = optimiser.state_dict()
    state = {i: {k: v.clone() if torch.is_tensor(v) else v for k, v in st.items()} for i, st in opt["state"].items()}
    return weights, {"state": state, "param_groups": [dict(g) for g in opt["param_groups"]]}


def _restore(net: torch.nn.Module, optimiser: torch.optim.Optimizer, kept: tuple[dict, dict]) -> None:
    """Put back what :func:`_keep` copied (copies again, so that ``kept`` can be restored once more)."""
    weights, opt = kept
    net.load_state_dict(weights)
    state = {i: {k: v.clone() if torch.is_tensor(v) else v for k, v in st.items()} for i, st in opt["state"].items()}
    optimiser.load_state_dict({"state": state, "param_groups": [dict(g) for g in opt["param_groups"]]})
