"""Noise simulators of the benchmark, each tested statistically (Testing/test_benchmark_noise.py), with an on-disk
cache.

All functions take and return float32 arrays in K,J,I order (slice, row, column) in the volume's own units, and
are deterministic for a given ``seed``: the noise of slice k comes from ``SeedSequence(seed).spawn`` child k, so
results do not depend on the number of worker processes.
"""

from __future__ import annotations

import hashlib
import json
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from scipy import ndimage

MU_WATER = 0.0192
"""Linear attenuation of water in 1/mm (about 70 keV); HU -> mu = MU_WATER * (1 + HU / 1000)."""
CT_VIEWS = 360
"""Projection angles over 180 degrees (parallel beam)."""

CACHE_DIR = Path(os.environ.get("NSN2N_BENCH_CACHE", Path(__file__).resolve().parent / ".cache"))
"""Git-ignored cache of clean sinograms, simulated volumes and method results (override with NSN2N_BENCH_CACHE)."""


def _slice_rngs(seed: int, n: int) -> list[np.random.Generator]:
    return [np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(n)]


def _volume_rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence(seed))


def volume_key(volume: np.ndarray) -> str:
    """Short content hash of a volume (shape, dtype and bytes), used in cache keys."""
    h = hashlib.sha1(str((volume.shape, str(volume.dtype))).encode())
    h.update(np.ascontiguousarray(volume).tobytes())
    return h.hexdigest()[:12]


def params_key(**params) -> str:
    """Short stable hash of JSON-able parameters."""
    return hashlib.sha1(json.dumps(params, sort_keys=True, default=str).encode()).hexdigest()[:12]


# ---------------------------------------------------------------------------------------------------------------
# Gaussian and Rician noise


def gaussian_iid(clean: np.ndarray, sigma: float, seed: int) -> np.ndarray:
    """Add i.i.d. Gaussian noise of standard deviation ``sigma`` (volume units)."""
    noise = _volume_rng(seed).standard_normal(clean.shape, dtype=np.float32)
    return (clean + sigma * noise).astype(np.float32)


def correlated_noise(shape: tuple[int, int, int], sigma: float, inplane_px: float, slice_px: float, seed: int):
    """Gaussian noise blurred by a Gaussian kernel and renormalised to standard deviation ``sigma``.

    Parameters
    ----------
    shape : (K, J, I)
    sigma : float
        Standard deviation of the result (volume units).
    inplane_px : float
        Kernel sigma along J and I, in pixels.
    slice_px : float
        Kernel sigma along K, in slices; 0 keeps slices independent (in-plane correlated noise), > 0 correlates
        neighbouring slices (the 3D-correlated negative control).
    """
    white = _volume_rng(seed).standard_normal(shape).astype(np.float64)
    blurred = ndimage.gaussian_filter(white, sigma=(slice_px, inplane_px, inplane_px), mode="wrap")
    # Exact renormalisation: the std of filtered white noise is the kernel's L2 norm (wrap mode, stationary).
    delta = np.zeros(shape)
    delta[0, 0, 0] = 1.0
    norm = np.sqrt(np.sum(ndimage.gaussian_filter(delta, sigma=(slice_px, inplane_px, inplane_px), mode="wrap") ** 2))
    return (sigma * blurred / norm).astype(np.float32)


def gaussian_inplane(clean: np.ndarray, sigma: float, inplane_px: float, seed: int) -> np.ndarray:
    """Add in-plane correlated Gaussian noise (independent between slices): the stress test of DATA.md."""
    return (clean + correlated_noise(clean.shape, sigma, inplane_px, 0.0, seed)).astype(np.float32)


def gaussian_3d(clean: np.ndarray, sigma: float, inplane_px: float, slice_px: float, seed: int) -> np.ndarray:
    """Add Gaussian noise correlated along all three axes: the negative control that breaks NS-N2N."""
    return (clean + correlated_noise(clean.shape, sigma, inplane_px, slice_px, seed)).astype(np.float32)


def correlated_noise_psd(shape: tuple[int, int, int], sigma: float, inplane_px: float, slice_px: float):
    """The exact noise power spectrum of :func:`correlated_noise`, in bm4d's convention E|fftn(noise)|^2."""
    delta = np.zeros(shape)
    delta[0, 0, 0] = 1.0
    kernel = ndimage.gaussian_filter(delta, sigma=(slice_px, inplane_px, inplane_px), mode="wrap")
    kernel *= sigma / np.sqrt(np.sum(kernel**2))
    return (np.abs(np.fft.fftn(kernel)) ** 2 * np.prod(shape)).astype(np.float32)


def white_psd(shape: tuple[int, int, int], sigma: float) -> np.ndarray:
    """Power spectrum of white noise of standard deviation ``sigma`` in bm4d's convention."""
    return np.full(shape, sigma**2 * np.prod(shape), dtype=np.float32)


def empirical_psd(noise: np.ndarray, smooth_px: float = 1.0) -> np.ndarray:
    """Oracle power spectrum of noise known to be independent between slices (low-dose CT, in-plane Gaussian).

    The in-plane spectrum is averaged over the K slices, smoothed by ``smooth_px`` frequency bins, and repeated
    along K (flat along the slice frequency), scaled to bm4d's convention E|fftn(noise)|^2 of the whole volume.
    """
    k = noise.shape[0]
    p2 = np.mean(np.abs(np.fft.fft2(noise.astype(np.float64), axes=(1, 2))) ** 2, axis=0)
    if smooth_px > 0:
        p2 = ndimage.gaussian_filter(p2, smooth_px, mode="wrap")
    return np.repeat((k * p2)[None], k, axis=0).astype(np.float32)


def rician(clean: np.ndarray, sigma: float, seed: int) -> np.ndarray:
    """Magnitude of the clean image plus complex Gaussian noise: |x + n1 + i n2|, n1, n2 ~ N(0, sigma^2)."""
    rng = _volume_rng(seed)
    n1 = rng.standard_normal(clean.shape, dtype=np.float32)
    n2 = rng.standard_normal(clean.shape, dtype=np.float32)
    return np.sqrt((clean + sigma * n1) ** 2 + (sigma * n2) ** 2).astype(np.float32)


def rician_mean(nu: np.ndarray | float, sigma: float) -> np.ndarray:
    """Expected magnitude of Rician noise for true signal ``nu``: sigma sqrt(pi/2) L_{1/2}(-nu^2 / (2 sigma^2))."""
    from scipy.special import i0e, i1e

    x = np.asarray(nu, dtype=np.float64) ** 2 / (4 * sigma**2)
    # L_{1/2}(-2x) = e^{-x} [(1 + 2x) I0(x) + 2x I1(x)]; i0e/i1e carry the e^{-x} factor (stable for large x).
    return sigma * np.sqrt(np.pi / 2) * ((1 + 2 * x) * i0e(x) + 2 * x * i1e(x))


# ---------------------------------------------------------------------------------------------------------------
# Low-dose CT in the projection domain


def _theta() -> np.ndarray:
    return np.linspace(0.0, 180.0, CT_VIEWS, endpoint=False)


def _clean_slice(args):
    from skimage.transform import iradon, radon

    hu, pixel_mm = args
    mu = np.clip(MU_WATER * (1.0 + hu.astype(np.float64) / 1000.0), 0.0, None)
    sino = radon(mu, theta=_theta(), circle=False) * pixel_mm  # line integrals, dimensionless
    fbp = iradon(sino / pixel_mm, theta=_theta(), circle=False, filter_name="ramp", output_size=hu.shape[0])
    return sino.astype(np.float32), fbp.astype(np.float32)


def _noise_slice(args):
    from skimage.transform import iradon

    sino, fbp_clean, pixel_mm, i0, seed_seq = args
    rng = np.random.default_rng(seed_seq)
    counts = rng.poisson(i0 * np.exp(-sino.astype(np.float64)))
    # Photon starvation: a ray with zero counts is read as one count (as scanners clamp before the log).
    p_noisy = -np.log(np.maximum(counts, 1) / i0)
    fbp = iradon(p_noisy / pixel_mm, theta=_theta(), circle=False, filter_name="ramp", output_size=fbp_clean.shape[0])
    return ((fbp - fbp_clean) / MU_WATER * 1000.0).astype(np.float32)


def _workers(n_jobs: int | None, n_tasks: int) -> int:
    if n_jobs is None:
        n_jobs = os.cpu_count() or 1
    return max(1, min(n_jobs, n_tasks))


def _map(func, tasks: list, n_jobs: int | None) -> list:
    workers = _workers(n_jobs, len(tasks))
    if workers == 1:
        return [func(t) for t in tasks]
    with ProcessPoolExecutor(workers) as pool:
        return list(pool.map(func, tasks, chunksize=max(1, len(tasks) // (4 * workers))))


def ct_clean_projections(clean_hu: np.ndarray, pixel_mm: float, n_jobs: int | None = None, cache: bool = True):
    """Clean sinograms and their FBP for every slice, cached on disk by the volume's content hash.

    Parameters
    ----------
    clean_hu : np.ndarray
        (K, J, I) float32 in HU, square slices (J == I).
    pixel_mm : float
        In-plane pixel size in mm (line integrals are sums times the pixel size).

    Returns
    -------
    sino : np.ndarray
        (K, detector bins, CT_VIEWS) float32 line integrals of mu (dimensionless).
    fbp : np.ndarray
        (K, J, I) float32 filtered back-projection of ``sino`` in 1/mm.
    """
    if clean_hu.shape[1] != clean_hu.shape[2]:
        raise ValueError(f"projection-domain CT noise needs square slices, got {clean_hu.shape[1:]}.")
    path = CACHE_DIR / "ct_clean" / f"{volume_key(clean_hu)}_{params_key(px=pixel_mm, views=CT_VIEWS)}.npz"
    if cache and path.is_file():
        with np.load(path) as f:
            return f["sino"], f["fbp"]
    results = _map(_clean_slice, [(s, pixel_mm) for s in clean_hu], n_jobs)
    sino = np.stack([r[0] for r in results])
    fbp = np.stack([r[1] for r in results])
    if cache:
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez(path, sino=sino, fbp=fbp)
    return sino, fbp


def ct_lowdose_noise(
    clean_hu: np.ndarray, pixel_mm: float, i0: float, seed: int, n_jobs: int | None = None, cache: bool = True
) -> np.ndarray:
    """Projection-domain low-dose CT noise in HU, (K, J, I) float32 (DATA.md, "Low-dose CT").

    Per slice: HU -> mu, parallel-beam Radon transform (``CT_VIEWS`` views, ``circle=False``), Poisson counts
    of ``i0 * exp(-p)``, ``-log(counts / i0)``, ramp-filtered back-projection, minus the FBP of the clean sinogram,
    back to HU. Only this difference is returned, so that ``clean + noise`` keeps the clean volume's own
    reconstruction. Slices are independent; the noise within a slice is streaky and correlated.
    """
    key = f"{volume_key(clean_hu)}_{params_key(px=pixel_mm, views=CT_VIEWS, i0=float(i0), seed=seed)}"
    path = CACHE_DIR / "ct_noise" / f"{key}.npy"
    if cache and path.is_file():
        return np.load(path)
    sino, fbp = ct_clean_projections(clean_hu, pixel_mm, n_jobs=n_jobs, cache=cache)
    seeds = np.random.SeedSequence(seed).spawn(len(sino))
    tasks = [(sino[k], fbp[k], pixel_mm, float(i0), seeds[k]) for k in range(len(sino))]
    noise = np.stack(_map(_noise_slice, tasks, n_jobs))
    if cache:
        path.parent.mkdir(parents=True, exist_ok=True)
        np.save(path, noise)
    return noise


def ct_lowdose(clean_hu: np.ndarray, pixel_mm: float, i0: float, seed: int, **kwargs) -> np.ndarray:
    """``clean_hu`` plus :func:`ct_lowdose_noise` (HU, float32)."""
    return (clean_hu + ct_lowdose_noise(clean_hu, pixel_mm, i0, seed, **kwargs)).astype(np.float32)
