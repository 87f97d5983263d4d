"""Predicted time and memory of a run, from the cost model measured in benchmarks/RESULTS.md ("Real sizes").

Each phase costs a fixed number of seconds per unit of work, measured on a 2-core CPU (AVX-512 with bf16) with 2
threads; other machines scale roughly with their core count. The front ends use it to warn before a long CPU run
and to weigh the phases of one overall progress bar. Shapes are in K,J,I order.
"""

from __future__ import annotations

from dataclasses import dataclass

from .config import NSN2NConfig

# Seconds per voxel of the weights phase (three-slice maps, noise estimates), CPU.
WEIGHTS_S_PER_VOXEL = 4.0e-8
# Seconds per training iteration at the default network (width 16, depth 2) and batch 8 of 64x64 patches, CPU.
TRAINING_S_PER_ITERATION = 0.06
# Seconds per voxel of one forward pass at inference (width 16, depth 2), CPU, float32 and bf16.
INFERENCE_S_PER_VOXEL_FP32 = 4.6e-7
INFERENCE_S_PER_VOXEL_BF16 = 2.0e-7
# A CUDA GPU is this many times faster than the 2-core CPU, phase by phase (a conservative figure).
GPU_SPEEDUP = 20.0
# Host memory of the engine beyond the caller's input: the float32 output, two uint8 maps per voxel, and torch.
HOST_BYTES_PER_VOXEL = 4 + 2
HOST_BYTES_FIXED = 600 * 2**20


@dataclass(frozen=True)
class Estimate:
    """Predicted seconds per phase and peak host memory of a run."""

    seconds: dict[str, float]
    """'weights', 'training', 'inference'."""
    host_bytes: int
    """Peak host memory of the engine, beyond the input volume the caller holds."""

    @property
    def total_seconds(self) -> float:
        return sum(self.seconds.values())


def _width_factor(cfg: NSN2NConfig) -> float:
    # Convolution cost grows with the square of the width; deeper levels add little (a quarter each).
    return (cfg.network.width / 16.0) ** 2


def estimate(
    shape_kji: tuple[int, int, int], cfg: NSN2NConfig, device_type: str = "cpu", bf16: bool = True
) -> Estimate:
    """The cost model's prediction for a volume of ``shape_kji`` voxels run with ``cfg`` on ``device_type``
    ('cpu' or 'cuda'); ``bf16``: the CPU has native bf16 (see ``training.mixed_precision``)."""
    voxels = float(shape_kji[0]) * shape_kji[1] * shape_kji[2]
    t = cfg.training
    per_iter = TRAINING_S_PER_ITERATION * _width_factor(cfg) * (t.batch_size / 8) * (t.patch_size / 64) ** 2
    per_voxel = INFERENCE_S_PER_VOXEL_BF16 if (bf16 and t.mixed_precision) else INFERENCE_S_PER_VOXEL_FP32
    seconds = {
        "weights": WEIGHTS_S_PER_VOXEL * voxels,
        "training": per_iter * t.iterations,
        "inference": per_voxel * _width_factor(cfg) * voxels * cfg.inference.tta,
    }
    if device_type == "cuda":
        seconds = {k: v / GPU_SPEEDUP for k, v in seconds.items()}
    return Estimate(seconds=seconds, host_bytes=int(HOST_BYTES_PER_VOXEL * voxels + HOST_BYTES_FIXED))


PHASES = ("weights", "training", "inference")


def overall_fraction(phase: str, step: int, total: int, est: Estimate) -> float:
    """Fraction 0..1 of the whole run done at ``step`` of ``total`` in ``phase``, phases weighted by ``est``."""
    if phase not in PHASES:
        return 0.0
    weights = [max(est.seconds.get(p, 0.0), 1e-9) for p in PHASES]
    index = PHASES.index(phase)
    done = sum(weights[:index]) + weights[index] * (min(step, total) / total if total > 0 else 0.0)
    return min(1.0, done / sum(weights))
