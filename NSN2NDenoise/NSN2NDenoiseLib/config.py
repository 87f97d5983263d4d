"""The one configuration object of NSN2N.

It holds what a user or a preset sets, and the method's own terms (docs/METHOD.md), each with a bounded value and
a one-line reason for its default; ideas that lost their ablation are not here (their rows stay in
benchmarks/RESULTS.md). The object is frozen and validated when it is built; unknown keys are an error. It is plain
``dataclasses`` rather than pydantic because the engine must import inside 3D Slicer's Python, which ships
numpy, SimpleITK and vtk but not pydantic.

Build one with :func:`make_config` (a preset plus overrides), or ``NSN2NConfig.from_dict(d)`` to reload the
``config`` stored in a run report.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from .errors import ConfigError

PRESETS = ("fast", "default", "best")
SLICE_AXES = ("auto", "k", "j", "i")
DEVICES = ("auto", "cpu", "cuda")


def _check_range(section: str, name: str, value: float, low: float, high: float) -> None:
    if not (low <= value <= high):
        raise ConfigError(f"{section}.{name} = {value!r} is out of range: it must lie in [{low}, {high}].")


def _check_choice(section: str, name: str, value: Any, choices: tuple) -> None:
    if value not in choices:
        raise ConfigError(f"{section}.{name} = {value!r} is not one of {', '.join(map(repr, choices))}.")


def _check_bool(section: str, name: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise ConfigError(f"{section}.{name} = {value!r} must be true or false.")


def _check_int(section: str, name: str, value: Any, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{section}.{name} = {value!r} must be an integer.")
    _check_range(section, name, value, low, high)


def _check_float(section: str, name: str, value: Any, low: float, high: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{section}.{name} = {value!r} must be a number.")
    _check_range(section, name, float(value), low, high)


@dataclass(frozen=True)
class WeightConfig:
    """How the weight map of a slice and its interpolation target is built (docs/METHOD.md section 2).

    Intensities are in normalised units (robust 0..1), distances in pixels of the slice.
    """

    lowpass_sigma: float = 2.0
    """Gaussian sigma in pixels of the low-pass residual test; 2 px removes most per-pixel noise while keeping
    organ-scale mismatch."""
    tau: float = 0.015
    """Lower bound of the threshold on |LPF(x_i) - LPF(target)| in normalised units (the re-implementation's value);
    the threshold rises to 3x the low-passed residual's robust spread over the body when noise is strong."""
    energy_window: int = 5
    """Side in pixels of the box mean of the squared unfiltered difference (the energy test)."""
    energy_factor: float = 2.0
    """A pixel matches when its local difference energy is at most this times the body median."""
    keep_factor: float = 8.0
    """Where the self term applies (see ``loss.lambda_self``): 0 = every unmatched pixel; > 0 = only unmatched
    pixels whose local difference energy exceeds this times the body median, i.e. mismatch far above the noise
    (bone, strong edges), so that weak mismatch at high noise is smoothed rather than kept noisy."""

    def validate(self) -> None:
        s = "weights"
        _check_float(s, "lowpass_sigma", self.lowpass_sigma, 0.1, 20.0)
        _check_float(s, "tau", self.tau, 1e-4, 1.0)
        _check_int(s, "energy_window", self.energy_window, 1, 31)
        if self.energy_window % 2 == 0:
            raise ConfigError(f"weights.energy_window = {self.energy_window} must be odd (a centred window).")
        _check_float(s, "energy_factor", self.energy_factor, 0.5, 100.0)
        _check_float(s, "keep_factor", self.keep_factor, 0.0, 10000.0)


@dataclass(frozen=True)
class LossConfig:
    """Loss terms (docs/METHOD.md section 3): L = L_Recon + lambda_rc L_RC + lambda_ic L_IC + lambda_self L_Self.

    L_Recon's target is the cubic interpolation of slice i from its four neighbours (docs/METHOD.md section 3).
    """

    lambda_rc: float = 0.0
    """Weight of the paper's regional consistency term (the re-implementations use 0.5). Off by default: with it a
    training step needs three forward passes instead of one (docs/METHOD.md section 3)."""
    lambda_ic: float = 0.0
    """Weight of the paper's inter-slice continuity term (the re-implementations use 1.0); off by default, as
    lambda_rc."""
    lambda_self: float = 0.5
    """Weight of the self term M(K, (f(x_i) - x_i)^2), K = strongly unmatched pixels (``weights.keep_factor``):
    where no neighbour matches, the network is taught to keep its input rather than smooth it away (bone, moving
    edges; docs/METHOD.md section 3)."""
    target_warmup: float = 0.2
    """Share of the iterations over which the target moves linearly from the 3-slice mean to the cubic
    interpolation. The noisier interpolation alone left the network near its identity start on low-noise CT
    (``fast``'s 400 iterations: 34.12 dB against the noisy 33.78 at I0 = 2.5e5; RESULTS.md, "What changed for the
    fourth default"); the mean gets it moving at once."""

    def validate(self) -> None:
        s = "loss"
        _check_float(s, "lambda_rc", self.lambda_rc, 0.0, 100.0)
        _check_float(s, "lambda_ic", self.lambda_ic, 0.0, 100.0)
        _check_float(s, "lambda_self", self.lambda_self, 0.0, 100.0)
        _check_float(s, "target_warmup", self.target_warmup, 0.0, 1.0)


@dataclass(frozen=True)
class NetworkConfig:
    """The residual 2D U-Net (see ``network.py``)."""

    depth: int = 2
    """Number of 2x down-samplings (benchmarks/RESULTS.md, "Ablation": deeper costs CPU time)."""
    width: int = 16
    """Channels of the first level, doubled at each level."""

    def validate(self) -> None:
        s = "network"
        _check_int(s, "depth", self.depth, 1, 6)
        _check_int(s, "width", self.width, 4, 256)


@dataclass(frozen=True)
class TrainingConfig:
    """Training on the one volume (docs/METHOD.md section 4)."""

    iterations: int = 1500
    """Optimiser steps; the main quality/time knob (RESULTS.md: quality against iterations)."""
    patch_size: int = 64
    """Side in pixels of the square training patches (clipped to the slice size)."""
    batch_size: int = 8
    """Patches per optimiser step."""
    learning_rate: float = 2e-3
    """Adam's initial step size, decayed by a cosine to learning_rate * final_lr_fraction."""
    final_lr_fraction: float = 0.05
    """Learning rate at the last iteration as a fraction of the initial one."""
    seed: int = 0
    """Seed of every random draw, so that a run is repeatable on the same device."""
    threads: int = 0
    """CPU threads for torch; 0 keeps torch's choice. Ignored on CUDA."""
    mixed_precision: bool = True
    """bf16 autocast: training and inference on CUDA; inference only on a CPU with native bf16 (AVX512-BF16 or
    AMX), where it is 2x faster than float32 at a cost of < 0.01 dB (RESULTS.md, "Real sizes")."""

    def validate(self) -> None:
        s = "training"
        _check_int(s, "iterations", self.iterations, 1, 1_000_000)
        _check_int(s, "patch_size", self.patch_size, 8, 1024)
        _check_int(s, "batch_size", self.batch_size, 1, 1024)
        _check_float(s, "learning_rate", self.learning_rate, 1e-6, 1.0)
        _check_float(s, "final_lr_fraction", self.final_lr_fraction, 0.0, 1.0)
        _check_int(s, "seed", self.seed, 0, 2**31 - 1)
        _check_int(s, "threads", self.threads, 0, 1024)
        _check_bool(s, "mixed_precision", self.mixed_precision)


TTA_CHOICES = (1, 2, 4, 8)
AXES_CHOICES = ("auto", "slice", "all")
FUSION_CHOICES = ("off", "auto", "on")
WIENER_CHOICES = ("off", "filters", "matched")


@dataclass(frozen=True)
class InferenceConfig:
    """Denoising every slice with the trained network (docs/METHOD.md section 5)."""

    tta: int = 8
    """Test-time augmentation: the mean of the network over this many of the 8 flips/rotations of each slice
    (1 = none). Inference time grows in proportion (RESULTS.md, "Real sizes", for its cost and gain)."""
    batch_size: int = 1
    """Whole slices per forward pass: one 512x512 slice at a time is the fastest on a 2-core CPU (bf16 and
    channels-last: 0.049 s per slice against 0.066 in batches of 4; RESULTS.md, "Real sizes")."""
    axes: str = "auto"
    """Axes along which the trained network denoises the volume, averaged: 'slice' (the slice axis only), 'all'
    (the slice axis and both in-plane axes), or 'auto': all three where the voxels are near-isotropic and the
    noise is white in-plane (independent between slices is NS-N2N's own assumption), else the slice axis only
    (docs/METHOD.md section 5; +0.7 to +1.2 dB on isotropic MRI, RESULTS.md "Protocol"). Inference time grows with the
    number of axes."""
    neighbour_fusion: str = "off"
    """A second network that predicts each slice from its four neighbours, trained against the slice itself and
    blended into the output (docs/METHOD.md section 5): 'off' (the default), 'auto' (where the volume is denoised
    along all three axes, see ``axes``) or 'on'. Where it applies it doubles the training time. Not the default:
    it gained on the reporting set only at high noise on the smooth MNI152 slab (+0.42 dB at Rician 10 %), tied
    on Colin27 with Rician noise and lost 0.04-0.08 dB on MNI152 at 5 % and Colin27 with Gaussian noise (RESULTS.md,
    "Measured and offered as an option: the neighbour network")."""
    wiener: str = "matched"
    """The Wiener stage (docs/METHOD.md section 5), with the network's output as the pilot and a noise level read
    from the removed residual: 'matched' (the default) groups similar blocks of the input and filters each group
    (BM3D/BM4D's second step; where the noise is white, twice, then averaged with a network-free estimate of
    BM4D's kind, ``block_matching.network_free``), except where the in-plane noise is strongly correlated (lag-1 above
    ``wiener.MATCHED_MAX_LAG1``), where it runs 'filters'; 'filters' is the cheaper mean of the network's output
    and a sliding-window DCT Wiener filter (no block matching; the fast preset's); 'off' returns the network's
    output (RESULTS.md, "Adopted: block matching in the Wiener stage")."""

    def validate(self) -> None:
        s = "inference"
        _check_choice(s, "axes", self.axes, AXES_CHOICES)
        _check_choice(s, "neighbour_fusion", self.neighbour_fusion, FUSION_CHOICES)
        _check_choice(s, "wiener", self.wiener, WIENER_CHOICES)
        if isinstance(self.tta, bool):
            raise ConfigError(f"inference.tta = {self.tta!r} must be one of {', '.join(map(str, TTA_CHOICES))}.")
        _check_choice(s, "tta", self.tta, TTA_CHOICES)
        _check_int(s, "batch_size", self.batch_size, 1, 1024)


_SECTIONS = {
    "weights": WeightConfig,
    "loss": LossConfig,
    "network": NetworkConfig,
    "training": TrainingConfig,
    "inference": InferenceConfig,
}


@dataclass(frozen=True)
class NSN2NConfig:
    """Everything that decides a run. Frozen; build with :func:`make_config` or :meth:`from_dict`."""

    preset: str = "default"
    """Name of the preset the values started from ('fast', 'default', 'best'); informative only."""
    slice_axis: str = "auto"
    """Array axis of the slices in K,J,I order: 'k' (0), 'j' (1), 'i' (2), or 'auto' (largest spacing if the
    volume is clearly anisotropic, else 'k')."""
    device: str = "auto"
    """'cuda' when available with 'auto', else 'cpu'."""
    weights: WeightConfig = field(default_factory=WeightConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    network: NetworkConfig = field(default_factory=NetworkConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    inference: InferenceConfig = field(default_factory=InferenceConfig)

    def __post_init__(self) -> None:
        _check_choice("config", "preset", self.preset, PRESETS)
        _check_choice("config", "slice_axis", self.slice_axis, SLICE_AXES)
        _check_choice("config", "device", self.device, DEVICES)
        for name, cls in _SECTIONS.items():
            value = getattr(self, name)
            if not isinstance(value, cls):
                raise ConfigError(f"config.{name} must be a {cls.__name__}, not {type(value).__name__}.")
            value.validate()
        size = self.training.patch_size
        if size % (2**self.network.depth) != 0:
            raise ConfigError(
                f"training.patch_size = {size} must be divisible by 2**network.depth = {2**self.network.depth}."
            )

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready nested dict (stored in every run report)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> NSN2NConfig:
        """Build from a nested dict; unknown keys at any level raise :class:`ConfigError`."""
        return _apply(cls(), data)

    def replace(self, **changes: Any) -> NSN2NConfig:
        """A copy with nested changes, e.g. ``cfg.replace(training={'iterations': 50})``."""
        return _apply(self, changes)


def _apply(base: NSN2NConfig, changes: dict[str, Any]) -> NSN2NConfig:
    if not isinstance(changes, dict):
        raise ConfigError("configuration changes must be a mapping of field names to values.")
    top_fields = {f.name for f in dataclasses.fields(NSN2NConfig)}
    unknown = set(changes) - top_fields
    if unknown:
        raise ConfigError(f"unknown configuration key(s): {', '.join(sorted(unknown))}.")
    kwargs: dict[str, Any] = {}
    for key, value in changes.items():
        if key in _SECTIONS:
            section_cls = _SECTIONS[key]
            if isinstance(value, section_cls):
                kwargs[key] = value
                continue
            if not isinstance(value, dict):
                raise ConfigError(f"config.{key} must be a mapping of its fields.")
            names = {f.name for f in dataclasses.fields(section_cls)}
            bad = set(value) - names
            if bad:
                raise ConfigError(f"unknown key(s) in {key}: {', '.join(sorted(bad))}.")
            kwargs[key] = dataclasses.replace(getattr(base, key), **value)
        else:
            kwargs[key] = value
    return dataclasses.replace(base, **kwargs)


def _preset_changes(name: str) -> dict[str, Any]:
    # Reasons and figures: benchmarks/RESULTS.md, section "Presets".
    if name == "fast":
        # Half of 400 iterations on the 3-slice mean: 36.6 dB at I0 = 2.5e5, where 20 % gave 35.2 (RESULTS.md).
        # The DCT filter, not block matching: block matching alone takes 126 s of a 512x512x300 CT on 2 cores,
        # past this preset's 120 s ("Real sizes").
        return {
            "preset": "fast",
            "training": {"iterations": 400},
            "loss": {"target_warmup": 0.5},
            "inference": {"tta": 1, "wiener": "filters"},
        }
    if name == "default":
        return {"preset": "default"}
    if name == "best":
        return {
            "preset": "best",
            "network": {"width": 32},
            "training": {"iterations": 4000},
        }
    raise ConfigError(f"unknown preset {name!r}: choose one of {', '.join(PRESETS)}.")


def make_config(preset: str = "default", **overrides: Any) -> NSN2NConfig:
    """The configuration of a preset with optional nested overrides.

    Parameters
    ----------
    preset : {'fast', 'default', 'best'}
        Quality/time trade-off; see ``benchmarks/RESULTS.md`` for each preset's figures.
    **overrides
        Top-level fields or section mappings, e.g. ``training={'iterations': 200}, device='cpu'``.

    Raises
    ------
    ConfigError
        For an unknown preset, an unknown key or a value out of its bounds.
    """
    cfg = _apply(NSN2NConfig(), _preset_changes(preset))
    return _apply(cfg, overrides) if overrides else cfg
