"""The run report: everything needed to judge and reproduce one denoising run."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any


@dataclass
class RunReport:
    """Summary of a run of :func:`NSN2NDenoiseLib.denoise`. Times in seconds, intensities in input units."""

    config: dict[str, Any]
    """The full configuration used (``NSN2NConfig.to_dict()``)."""
    device: str
    """'cpu' or 'cuda:N', with the GPU's name in ``device_name``."""
    device_name: str
    shape: list[int]
    """Input shape in K,J,I order."""
    spacing: list[float]
    """Voxel spacing in mm, K,J,I order."""
    slice_axis: int
    """Array axis (0=K, 1=J, 2=I) used as the slice axis."""
    iterations: int
    phase_seconds: dict[str, float]
    """Wall time of 'weights' (maps and noise estimates), 'training', 'inference' (the network), 'wiener' (the
    Wiener stage, when on) and 'residual_check'."""
    total_seconds: float
    loss_curve: list[list[float]]
    """[iteration, mean loss] every few iterations."""
    training_recoveries: list[dict[str, Any]]
    """Each divergence training recovered from (``training.Recovery`` as a dict: iteration, loss (None when not
    finite), restored_iteration, learning_rate_scale); empty for a normal run."""
    matched_fraction: float
    """Share of body pixels whose interpolation target is a valid Noise2Noise target (0..1)."""
    matched_per_slice: list[float]
    """The same share for each slice 1..N-2 against its interpolation target."""
    noise_sigma: float
    """Estimated noise standard deviation, in input units."""
    interslice_noise_correlation: float
    """Correlation of neighbouring slices' noise in flat regions (0..1); high values break NS-N2N's assumption."""
    residual_check: dict[str, Any] | None = None
    """The reference-free check of the removed residual (``residual_check.ResidualCheck.to_dict()``): the share of
    its energy that is structure, overall and per slice of the slice axis, and the flagged slices."""
    prediction_axes: list[str] = field(default_factory=list)
    """Axes ('K', 'J', 'I') along which the network denoised the volume, averaged; the slice axis first."""
    prediction_axes_reason: str = ""
    """Why those axes (``inference.axes`` and, for 'auto', the spacing and in-plane noise test)."""
    inplane_noise_lag1: list[float] = field(default_factory=list)
    """Lag-1 correlation of the noise within a slice, along its rows and columns (about 0 for white noise)."""
    neighbour_fusion: dict[str, Any] = field(default_factory=dict)
    """The neighbour network (``inference.neighbour_fusion``): applied (bool), reason, weight (its share of the
    output, 0 when not applied), loss_curve and recoveries of its training (docs/METHOD.md section 5)."""
    wiener: dict[str, Any] = field(default_factory=dict)
    """The Wiener stage (``inference.wiener``): applied (bool); where applied, noise_class ('white' or
    'correlated'), filters (each pass or filter its block in voxels, slice axis first, step in voxels, and factor on
    the residual's spectrum; for block matching also group, search and window), share (the filters' estimates'
    weight in the output) and residual_rms (input units); for block matching network_free_share (the network-free
    estimate's weight in the output: 0.5 on white noise, else 0), on white noise network_free_sigma (the noise level
    it was given, input units), network_free_filters (its hard-threshold pass, then its Wiener pass, described as
    filters are) and, where no noise level could be read, network_free_reason; where another kind ran than the
    one asked for (the DCT filter for block matching, where the in-plane noise is strongly correlated) requested and
    reason; else reason (docs/METHOD.md section 5)."""
    peak_gpu_mb: float | None = None
    """Peak GPU memory allocated by PyTorch during the run, in MiB (None on the CPU)."""
    warnings: list[str] = field(default_factory=list)
    versions: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return dataclasses.asdict(self)

    def to_json(self, indent: int = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)
