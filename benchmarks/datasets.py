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
CT_BRAIN_BOX = ((28, 47), (32, 127), (72, 183))
"""Brain-only crop of the development CT, inclusive (K, J, I) ranges: the upper slices 28-47, in-plane inside the
skull (96 x 112 pixels: brain with a little skull base and falx)."""
CT_TUNE_SLICES = (0, 27)
"""Tuning-set CT: slices 0-27 of the development slab (disjoint from the brain crop's 28-47)."""
CT_TUNE_BRAIN_BOX = ((12, 27), (56, 99), (96, 167))
"""The brain inside the skull in the tuning slices (frontal lobes), inclusive (K, J, I) ranges of the development
slab, inside the tuning slices 0-27 (16 x 44 x 72 voxels): the tuning set's brain-only crop (``cttunebrain_*``), the
soft-tissue anatomy beside the tuning slices' skull base (added 2026-12-01 for the Wiener stage's choices on low-dose
CT, ``benchmarks.correlated_free``)."""
MRI_SLICES = 48
MNI_REPORT_CENTER = 80
"""MNI152 reporting slab: slices 56-103 (mid-brain, ventricles and cortex)."""
MNI_TUNE_CENTER = 134
"""MNI152 tuning slab: slices 110-157 (upper brain, cortex), disjoint from the reporting slab."""
QUICK_INPLANE = 128
"""In-plane centre crop of the quick run (pixels)."""
GAUSS_CT_HU = 30.0
"""i.i.d. / correlated Gaussian noise on the CT: 30 HU (DATA.md)."""
INPLANE_PX = 1.5
"""Kernel sigma (pixels) of the in-plane correlated noise (lag-1 correlation about 0.88)."""
INPLANE_NARROW_PX = 0.75
"""Kernel sigma (pixels) of the narrower in-plane correlated noise (lag-1 correlation about 0.6), between the
low-dose CT's (about 0.35 along one axis) and the stress test's."""
INPLANE_MID_PX = 1.0
"""Kernel sigma (pixels) of in-plane correlated noise of lag-1 correlation about 0.78: just above the bound where
the Wiener stage's block matching gives way to the DCT filter (0.75), between the two kernels it was placed from."""
SLICE_PX = 1.0
"""Kernel sigma (slices) of the 3D-correlated negative control."""

VOLUMES = {
    "ct": "head CT slices 0-47",
    "ctbrain": "head CT brain-only crop (slices 28-47, in-plane inside the skull)",
    "cttune": "head CT slices 0-27",
    "cttunebrain": "head CT brain-only crop of the tuning slices (slices 12-27, in-plane inside the skull)",
    "mri": "MNI152 T1 slices 56-103",
    "mnitune": "MNI152 T1 slices 110-157",
    "colin": "Colin27 T1 axial slices 20-67",
}
"""Volume prefixes of a dataset name (before the first underscore)."""
_NOISES = {
    "ld_2.5e5": "projection-domain low-dose noise, I0 = 2.5e5",
    "ld_1e5": "projection-domain low-dose noise, I0 = 1e5",
    "ld_2e4": "projection-domain low-dose noise, I0 = 2e4",
    "gauss30": "i.i.d. Gaussian noise, 30 HU",
    "inplane30": f"in-plane correlated Gaussian noise, 30 HU, kernel sigma {INPLANE_PX} px",
    "inplane30narrow": f"in-plane correlated Gaussian noise, 30 HU, kernel sigma {INPLANE_NARROW_PX} px",
    "inplane30mid": f"in-plane correlated Gaussian noise, 30 HU, kernel sigma {INPLANE_MID_PX} px",
    "3dcorr30": f"3D-correlated Gaussian (negative control), 30 HU, kernel {INPLANE_PX} px x {SLICE_PX} slice",
    "rician5": "Rician noise, sigma 5 % of the brightest tissue",
    "rician10": "Rician noise, sigma 10 % of the brightest tissue",
    "gauss5": "i.i.d. Gaussian noise, 5 % of the brightest tissue",
}
_CT_NOISES = ("ld_2.5e5", "ld_1e5", "ld_2e4", "gauss30", "inplane30", "inplane30narrow", "inplane30mid", "3dcorr30")
_MRI_NOISES = ("rician5", "rician10", "gauss5")

DATASETS = {
    **{
        f"{v}_{n}": f"{VOLUMES[v]}, {_NOISES[n]}"
        for v in ("ct", "ctbrain", "cttune", "cttunebrain")
        for n in _CT_NOISES
    },
    **{f"{v}_{n}": f"{VOLUMES[v]}, {_NOISES[n]}" for v in ("mri", "mnitune", "colin") for n in _MRI_NOISES},
    "example4d": "nibabel example4d EPI: real noise, scored against the second repetition (no clean reference)",
}
"""Every dataset the runner knows, with its one-line description: ``<volume>_<noise>`` or ``example4d``."""


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


def box_region(box: tuple[tuple[int, int], ...], label: str) -> tuple[slice, slice, slice, str]:
    """(K, J, I) slices of an inclusive (K, J, I) ``box`` and its description, '; <label> K a-b, J c-d, I e-f'."""
    (k0, k1), (j0, j1), (i0, i1) = box
    text = f"; {label} K {k0}-{k1}, J {j0}-{j1}, I {i0}-{i1}"
    return slice(k0, k1 + 1), slice(j0, j1 + 1), slice(i0, i1 + 1), text


def _ct_region(volume: str) -> tuple[slice, slice, slice, str]:
    """(K, J, I) slices of the 0-47 development slab that a CT volume prefix keeps, and their description."""
    if volume == "ctbrain":
        return box_region(CT_BRAIN_BOX, "brain crop")
    if volume == "cttunebrain":
        return box_region(CT_TUNE_BRAIN_BOX, "tuning brain crop")
    if volume == "cttune":
        k0, k1 = CT_TUNE_SLICES
        return slice(k0, k1 + 1), slice(None), slice(None), f"; tuning slices K {k0}-{k1}"
    return slice(None), slice(None), slice(None), ""


def build(name: str, quick: bool, seed: int = 0, n_jobs: int | None = None) -> Dataset:
    """Build dataset ``name`` (a key of :data:`DATASETS`); ``quick`` crops in-plane to :data:`QUICK_INPLANE`.

    Low-dose CT noise is simulated on the whole 0-47 slab (the projections need whole slices), then cropped, so
    that the slab, its brain crop and its tuning slices share one cached simulation per seed. Simulated noise is
    cached on disk (``noise.CACHE_DIR``), keyed by the clean volume, parameters and seed.
    """
    if name not in DATASETS:
        raise KeyError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)}")
    size = QUICK_INPLANE if quick else None
    desc = DATASETS[name]
    volume, _, kind = name.partition("_")
    if volume in ("ct", "ctbrain", "cttune", "cttunebrain"):
        vol = data.load_cranium(*CT_SLICES)
        ks, js, is_, region = _ct_region(volume)
        if kind.startswith("ld_"):
            i0 = float(kind.split("_")[-1])
            full_noise = noise.ct_lowdose_noise(vol.data, vol.spacing[2], i0, seed, n_jobs=n_jobs)
            clean, crop = _crop_ct(vol, size) if volume == "ct" else (vol.data[ks, js, is_], vol.crop + region)
            nz = data.center_crop(full_noise, size)[0] if volume == "ct" else full_noise[ks, js, is_]
            noisy = (clean + nz).astype(np.float32)
            psd = noise.empirical_psd(nz)
            sigma = None
        else:
            clean, crop = _crop_ct(vol, size) if volume == "ct" else (vol.data[ks, js, is_], vol.crop + region)
            clean = np.ascontiguousarray(clean)
            slice_px = SLICE_PX if kind == "3dcorr30" else 0.0
            widths = {"gauss30": 0.0, "inplane30narrow": INPLANE_NARROW_PX, "inplane30mid": INPLANE_MID_PX}
            inplane_px = widths.get(kind, INPLANE_PX)
            nz = noise.correlated_noise(clean.shape, GAUSS_CT_HU, inplane_px, slice_px, seed)
            noisy = (clean + nz).astype(np.float32)
            psd = noise.correlated_noise_psd(clean.shape, GAUSS_CT_HU, inplane_px, slice_px)
            sigma = GAUSS_CT_HU
        clean = np.ascontiguousarray(clean)
        noisy = np.ascontiguousarray(noisy)
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
    if volume in ("mri", "mnitune", "colin"):
        if volume == "colin":
            vol = data.load_colin27()
        else:
            vol = data.load_mni152(MRI_SLICES, MNI_REPORT_CENTER if volume == "mri" else MNI_TUNE_CENTER)
        clean, (j0, i0) = data.center_crop(vol.data, size)
        clean = np.ascontiguousarray(clean)
        crop = vol.crop if size is None else f"{vol.crop}; centre crop J {j0}-{j0 + size - 1}, I {i0}-{i0 + size - 1}"
        mask = metrics.head_mask(clean, "mri")
        # Brightest tissue = the data range (99th percentile of the clean head), computed on the full slices so
        # that the quick crop gets the same absolute noise level.
        brightest = metrics.mri_data_range(vol.data, metrics.head_mask(vol.data, "mri"))
        pct = float(kind.replace("rician", "").replace("gauss", ""))
        sigma = pct / 100.0 * brightest
        if kind.startswith("rician"):
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
