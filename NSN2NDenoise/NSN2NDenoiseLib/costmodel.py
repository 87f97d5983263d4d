"""Predicted time and memory of a run, from the cost model measured in benchmarks/RESULTS.md ("Real sizes").

Each phase costs a fixed number of seconds per unit of work, fitted to ``python -m benchmarks.scale`` on a 2-core
CPU (AMD EPYC, AVX-512 with native bf16) with 2 threads; other machines scale roughly with their core count. The
front ends use it to warn before a long CPU run and to weigh the phases of one overall progress bar. Shapes are in
K,J,I order.
"""

from __future__ import annotations

from dataclasses import dataclass

from .config import NSN2NConfig

WEIGHTS_S_FIXED = 1.0
"""Seconds of the weights phase that do not grow with the volume (the noise estimates on at most 32 pairs)."""
WEIGHTS_S_PER_VOXEL = 5.0e-8
"""Seconds per voxel of the maps (8.6 s for 512x512x600, 2.1 s for 512x512x100)."""
TRAINING_S_PER_ITERATION = 0.037
"""Seconds per iteration at the default network (width 16, depth 2), batch 8 of 64x64 patches: 54.7-55.7 s for
1500 iterations, 13.9-14.8 s for 400, whatever the volume size."""
INFERENCE_S_PER_VOXEL_BF16 = 1.5e-7
"""Seconds per voxel and TTA transform, bf16 and channels-last, one 512x512 slice per pass (1.49e-7 to 1.59e-7
measured at 100 and 600 slices, TTA 1 and 8)."""
INFERENCE_S_PER_VOXEL_FP32 = 2.85e-7
"""The same in float32 (no native bf16): 1.9x the bf16 time ("Real sizes", inference options)."""
WIENER_S_PER_VOXEL = {"filters": 4.8e-7, "matched": 1.4e-6, "matched_white": 1.5e-5}
"""Seconds per voxel of the Wiener stage by ``inference.wiener`` (on the CPU whatever the network's device), with
2 threads: 37.2 s for the DCT filter on a 512x512x300 CT (benchmarks/results/scale_300_wiener); 'matched', block
matching's one pass there, 125.6 s (benchmarks/results/scale_300_matched, 1.6e-6 s per voxel) times 0.88; and
'matched_white', its two passes on white noise and the network-free estimate averaged in: the two passes took 47.9 s
on a 256x256x200 MRI (benchmarks/results/scale_mri_twopass; one pass 19.4 s), the estimate with BM4D's windows
makes the stage 4.86x as long (benchmarks/results/scale_mri_mix/stage.json, measured in one process; the first
estimate, 1.87x), 1.8e-5 s per voxel, times 0.85. The factors 0.88 and 0.85 are what block matching's preallocated
distance table took off the two passes and the whole white-noise stage, timed in one process against the previous
matching (benchmarks/results/matching_cost/matching.json); the other figures were measured before it. The noise is
known only once the run has measured it: 'matched' is counted as the one pass even where strongly correlated noise
makes it run the cheaper DCT filter, and as the two passes wherever :func:`.inference.expected_axis_count` counts
three axes (near-isotropic voxels: MRI)."""
GPU_SPEEDUP = 20.0
"""A CUDA GPU taken as this many times faster than the 2-core CPU, phase by phase: a conservative guess, not a
measurement (no GPU was available to measure it)."""
HOST_BYTES_PER_VOXEL = 4 + 2
"""Host memory per voxel beyond the caller's input: the float32 output and two one-byte maps."""
NETWORK_FREE_BYTES_PER_VOXEL = 4
"""Host memory per voxel that the white-noise stage adds: the network-free estimate, a float32 volume (50 MB; 61 MB
allocated at 256x256x200 with its filters' arrays, benchmarks/results/scale_mri_mix/stage.json); counted where
'matched_white' is."""
HOST_BYTES_FIXED = 850 * 2**20
"""Host memory that does not grow with the volume: Python, torch, SimpleITK, the network, slabs (measured peak
2110 MB at 512x512x600 with an int16 input of 300 MB)."""


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
    shape_kji: tuple[int, int, int],
    cfg: NSN2NConfig,
    device_type: str = "cpu",
    bf16: bool = True,
    spacing_kji: tuple[float, float, float] | None = None,
) -> Estimate:
    """The cost model's prediction for a volume of ``shape_kji`` voxels run with ``cfg`` on ``device_type``
    ('cpu' or 'cuda'); ``bf16``: the CPU has native bf16 (see ``training.mixed_precision``). ``spacing_kji`` (mm)
    tells whether ``inference.axes = 'auto'`` may denoise along three axes (counted as three where it may), and
    so whether ``inference.neighbour_fusion = 'auto'`` trains the neighbour network (twice the training, one more
    pass of inference)."""
    from .inference import expected_axis_count

    axes = expected_axis_count(spacing_kji, cfg.inference.axes)
    fusion = cfg.inference.neighbour_fusion == "on" or (cfg.inference.neighbour_fusion == "auto" and axes > 1)
    voxels = float(shape_kji[0]) * shape_kji[1] * shape_kji[2]
    t = cfg.training
    per_iter = TRAINING_S_PER_ITERATION * _width_factor(cfg) * (t.batch_size / 8) * (t.patch_size / 64) ** 2
    per_voxel = INFERENCE_S_PER_VOXEL_BF16 if (bf16 and t.mixed_precision) else INFERENCE_S_PER_VOXEL_FP32
    seconds = {
        "weights": WEIGHTS_S_FIXED + WEIGHTS_S_PER_VOXEL * voxels,
        "training": per_iter * t.iterations * (2 if fusion else 1),
        "inference": per_voxel * _width_factor(cfg) * voxels * cfg.inference.tta * (axes + (1 if fusion else 0)),
    }
    if device_type == "cuda":
        seconds = {k: v / GPU_SPEEDUP for k, v in seconds.items()}
    per_voxel_bytes = HOST_BYTES_PER_VOXEL
    if cfg.inference.wiener != "off":
        kind = cfg.inference.wiener
        if kind == "matched" and axes > 1:
            kind = "matched_white"  # near-isotropic voxels, where white noise (MRI) and its two passes are expected
            per_voxel_bytes += NETWORK_FREE_BYTES_PER_VOXEL
        seconds["inference"] += WIENER_S_PER_VOXEL[kind] * voxels  # on the CPU whatever the device
    return Estimate(seconds=seconds, host_bytes=int(per_voxel_bytes * voxels + HOST_BYTES_FIXED))


PHASES = ("weights", "training", "inference")


def overall_fraction(phase: str, step: int, total: int, est: Estimate) -> float:
    """Fraction 0..1 of the whole run done at ``step`` of ``total`` in ``phase``, phases weighted by ``est``."""
    if phase not in PHASES:
        return 0.0
    weights = [max(est.seconds.get(p, 0.0), 1e-9) for p in PHASES]
    index = PHASES.index(phase)
    done = sum(weights[:index]) + weights[index] * (min(step, total) / total if total > 0 else 0.0)
    return min(1.0, done / sum(weights))
