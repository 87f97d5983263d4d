"""Benchmark datasets: a clean volume, a simulated (or real) noisy version, and how to score it.

A dataset name encodes the volume and the noise, e.g. ``ct_ld_1e5`` (head CT, projection-domain low-dose noise at
I0 = 1e5) or ``mri_rician10`` (MNI152 T1, Rician noise of 10 % of the brightest tissue). Arrays are (K, J, I).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from . import data, metrics, noise

CT_SLICES = (0, 47)
"""Development CT slices (DATA.md): the skull base."""
MRI_SLICES = 48
QUICK_INPLANE = 128
"""In-plane centre crop of the quick run (pixels)."""
GAUSS_CT_HU = 30.0
"""i.i.d. / correlated Gaussian noise on the CT: 30 HU (DATA.md)."""
INPLANE_PX = 1.5
"""Kernel sigma (pixels) of the in-plane correlated noise."""
SLICE_PX = 1.0
"""Kernel sigma (slices) of the 3D-correlated negative control."""

DATASETS = {
    "ct_ld_2.5e5": "head CT, projection-domain low-dose noise, I0 = 2.5e5",
    "ct_ld_1e5": "head CT, projection-domain low-dose noise, I0 = 1e5",
    "ct_ld_2e4": "head CT, projection-domain low-dose noise, I0 = 2e4",
    "ct_gauss30": "head CT, i.i.d. Gaussian noise, 30 HU",
    "ct_inplane30": f"head CT, in-plane correlated Gaussian noise, 30 HU, kernel sigma {INPLANE_PX} px",
    "ct_3dcorr30": f"head CT, 3D-correlated Gaussian (negative control), 30 HU, kernel {INPLANE_PX} px x "
    f"{SLICE_PX} slice",
    "mri_rician5": "MNI152 T1, Rician noise, sigma 5 % of the brightest tissue",
    "mri_rician10": "MNI152 T1, Rician noise, sigma 10 % of the brightest tissue",
    "mri_gauss5": "MNI152 T1, i.i.d. Gaussian noise, 5 % of the brightest tissue",
    "example4d": "nibabel example4d EPI: real noise, scored against the second repetition (no clean reference)",
}
"""Every dataset the runner knows, with its one-line description."""


@dataclass
class Dataset:
    """One benchmark case. ``clean`` is the reference (for example4d, the second repetition)."""

    name: str
    description: str
    clean: np.ndarray
    noisy: np.ndarray
    spacing: tuple[float, float, float]
    modality: str
    mask: np.ndarray
    data_range: float
    crop: str
    noise_psd: np.ndarray | None = None
    noise_sigma: float | None = None
    has_clean: bool = True
    meta: dict = field(default_factory=dict)

    def key(self) -> str:
        """Cache key: the name plus a hash of the noisy and reference arrays."""
        return f"{self.name}_{noise.volume_key(self.noisy)}_{noise.volume_key(self.clean)}"


def _crop_ct(vol: data.Volume, size: int | None) -> tuple[np.ndarray, str]:
    cropped, (j0, i0) = data.center_crop(vol.data, size)
    text = vol.crop if size is None else f"{vol.crop}; centre crop J {j0}-{j0 + size - 1}, I {i0}-{i0 + size - 1}"
    return cropped, text


def build(name: str, quick: bool, seed: int = 0, n_jobs: int | None = None) -> Dataset:
    """Build dataset ``name`` (a key of :data:`DATASETS`); ``quick`` crops in-plane to :data:`QUICK_INPLANE`.

    Simulated noise is cached on disk (``noise.CACHE_DIR``), keyed by the clean volume, parameters and seed.
    """
    if name not in DATASETS:
        raise KeyError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)}")
    size = QUICK_INPLANE if quick else None
    desc = DATASETS[name]
    if name.startswith("ct_"):
        vol = data.load_cranium(*CT_SLICES)
        if name.startswith("ct_ld_"):
            i0 = float(name.split("_")[-1])
            # Simulate on the whole slice (the projections need it), then crop.
            full_noise = noise.ct_lowdose_noise(vol.data, vol.spacing[2], i0, seed, n_jobs=n_jobs)
            clean, crop = _crop_ct(vol, size)
            nz, _ = data.center_crop(full_noise, size)
            noisy = (clean + nz).astype(np.float32)
            psd = noise.empirical_psd(nz)
            sigma = None
        else:
            clean, crop = _crop_ct(vol, size)
            clean = np.ascontiguousarray(clean)
            slice_px = SLICE_PX if name == "ct_3dcorr30" else 0.0
            inplane_px = 0.0 if name == "ct_gauss30" else INPLANE_PX
            nz = noise.correlated_noise(clean.shape, GAUSS_CT_HU, inplane_px, slice_px, seed)
            noisy = (clean + nz).astype(np.float32)
            psd = noise.correlated_noise_psd(clean.shape, GAUSS_CT_HU, inplane_px, slice_px)
            sigma = GAUSS_CT_HU
        clean = np.ascontiguousarray(clean)
        mask = metrics.head_mask(clean, "ct")
        return Dataset(
            name,
            desc,
            clean,
            noisy,
            vol.spacing,
            "ct",
            mask,
            metrics.CT_DATA_RANGE,
            crop,
            psd,
            sigma,
            meta={"noise_std_in_mask": float(np.std((noisy - clean)[mask]))},
        )
    if name.startswith("mri_"):
        vol = data.load_mni152(MRI_SLICES)
        clean, (j0, i0) = data.center_crop(vol.data, size)
        clean = np.ascontiguousarray(clean)
        crop = vol.crop if size is None else f"{vol.crop}; centre crop J {j0}-{j0 + size - 1}, I {i0}-{i0 + size - 1}"
        mask = metrics.head_mask(clean, "mri")
        # Brightest tissue = the data range (99th percentile of the clean head), computed on the full slices so
        # that the quick crop gets the same absolute noise level.
        brightest = metrics.mri_data_range(vol.data, metrics.head_mask(vol.data, "mri"))
        pct = float(name.replace("mri_rician", "").replace("mri_gauss", ""))
        sigma = pct / 100.0 * brightest
        if name.startswith("mri_rician"):
            noisy = noise.rician(clean, sigma, seed)
        else:
            noisy = noise.gaussian_iid(clean, sigma, seed)
        return Dataset(
            name,
            desc,
            clean,
            noisy,
            vol.spacing,
            "mri",
            mask,
            brightest,
            crop,
            None,
            sigma,
            meta={"brightest_tissue": brightest, "sigma": sigma},
        )
    # example4d: denoise repetition 0, reference = repetition 1 (real noise on both).
    vol = data.load_example4d()
    repeat = vol.extra["repeat"]
    mask = metrics.head_mask(0.5 * (vol.data + repeat), "mri")
    rng = metrics.mri_data_range(repeat, mask)
    return Dataset(name, desc, repeat, vol.data, vol.spacing, "mri", mask, rng, vol.crop, has_clean=False)
