"""Quality and cost figures of a denoised volume: PSNR, SSIM, tissue RMSE, wall time, peak memory, device.

Arrays are (K, J, I) in the volume's units. Every figure is computed inside a head mask (:func:`head_mask`) with
a fixed, stated data range, so that numbers are comparable across methods and runs.
"""

from __future__ import annotations

import os
import platform
import time
from contextlib import contextmanager

import numpy as np
from scipy import ndimage

CT_DATA_RANGE = 1000.0
"""PSNR/SSIM data range for CT, in HU (DATA.md: a fixed 1000 HU)."""
CT_MASK_HU = -500.0
"""Head mask of a CT: clean above this many HU."""
MRI_MASK_FRACTION = 0.1
"""Head mask of an MRI: clean above this fraction of the 99th percentile of the non-zero voxels."""
SOFT_HU = (-200.0, 200.0)
"""Soft tissue: clean value in this HU interval (DATA.md, issue 6)."""
BONE_HU = 300.0
"""Bone: clean above this many HU (issue 6); :data:`BONE_LOOSE_HU` is DATA.md's looser rule."""
BONE_LOOSE_HU = 200.0

MASK_RULE = {
    "ct": f"clean > {CT_MASK_HU:g} HU, holes filled per slice, largest 3D component",
    "mri": f"clean > {MRI_MASK_FRACTION:g} x p99(clean > 0), holes filled per slice, largest 3D component",
}


def head_mask(clean: np.ndarray, modality: str) -> np.ndarray:
    """Boolean (K, J, I) head mask of a clean volume; the rule is :data:`MASK_RULE` [modality].

    The threshold removes air (and the CT head holder's thin plastic, which falls in the largest component only
    where it touches the head); filling holes per slice brings back the sinuses and ventricles inside the head.
    """
    if modality == "ct":
        mask = clean > CT_MASK_HU
    elif modality == "mri":
        positive = clean[clean > 0]
        mask = clean > MRI_MASK_FRACTION * np.percentile(positive, 99)
    else:
        raise ValueError(f"unknown modality {modality!r}")
    labels, n = ndimage.label(mask)
    if n > 1:
        sizes = ndimage.sum_labels(mask, labels, index=np.arange(1, n + 1))
        mask = labels == (1 + int(np.argmax(sizes)))
    return np.stack([ndimage.binary_fill_holes(s) for s in mask])


def mri_data_range(clean: np.ndarray, mask: np.ndarray) -> float:
    """MRI data range: the 99th percentile of the clean volume inside the head mask (DATA.md)."""
    return float(np.percentile(clean[mask], 99))


def psnr(clean: np.ndarray, estimate: np.ndarray, mask: np.ndarray, data_range: float) -> float:
    """PSNR in dB inside ``mask``: 10 log10(data_range^2 / MSE)."""
    err = (estimate[mask].astype(np.float64) - clean[mask]) ** 2
    return float(10 * np.log10(data_range**2 / np.mean(err)))


def rmse(clean: np.ndarray, estimate: np.ndarray, mask: np.ndarray) -> float:
    """Root mean squared error inside ``mask`` (volume units); NaN for an empty mask."""
    if not mask.any():
        return float("nan")
    return float(np.sqrt(np.mean((estimate[mask].astype(np.float64) - clean[mask]) ** 2)))


def ssim(clean: np.ndarray, estimate: np.ndarray, mask: np.ndarray, data_range: float) -> tuple[float, float]:
    """SSIM inside ``mask``: (3D SSIM map averaged in the mask, mean over slices of the 2D maps in the mask).

    scikit-image's ``structural_similarity`` with its defaults (7-voxel uniform window) and the given data range;
    the maps are averaged over masked voxels only, not over the whole crop.
    """
    from skimage.metrics import structural_similarity

    c = clean.astype(np.float64)
    e = estimate.astype(np.float64)
    _, smap = structural_similarity(c, e, data_range=data_range, full=True)
    s3 = float(smap[mask].mean())
    per_slice = []
    for k in range(c.shape[0]):
        if mask[k].any():
            _, m2 = structural_similarity(c[k], e[k], data_range=data_range, full=True)
            per_slice.append(m2[mask[k]].mean())
    return s3, float(np.mean(per_slice))


def quality(clean: np.ndarray, estimate: np.ndarray, mask: np.ndarray, modality: str, data_range: float) -> dict:
    """Every quality figure of one estimate: psnr, ssim (3D), ssim_2d, rmse; for CT rmse_soft, rmse_bone."""
    s3, s2 = ssim(clean, estimate, mask, data_range)
    out = {
        "psnr": psnr(clean, estimate, mask, data_range),
        "ssim": s3,
        "ssim_2d": s2,
        "rmse": rmse(clean, estimate, mask),
    }
    if modality == "ct":
        out["rmse_soft"] = rmse(clean, estimate, mask & (clean >= SOFT_HU[0]) & (clean <= SOFT_HU[1]))
        out["rmse_bone"] = rmse(clean, estimate, mask & (clean > BONE_HU))
        out["rmse_bone200"] = rmse(clean, estimate, mask & (clean > BONE_LOOSE_HU))
    return out


# ---------------------------------------------------------------------------------------------------------------
# Cost: time and memory


def _read_status_kb(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def reset_peak_rss() -> bool:
    """Reset the process's peak resident set (Linux: write 5 to /proc/self/clear_refs); False where impossible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_rss_mb() -> float:
    """Peak resident memory of this process in MiB since the last :func:`reset_peak_rss` (VmHWM; else ru_maxrss)."""
    kb = _read_status_kb("VmHWM")
    if kb is None:
        import resource

        kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kb / 1024.0


def current_rss_mb() -> float:
    """Current resident memory of this process in MiB (VmRSS), NaN where unknown."""
    kb = _read_status_kb("VmRSS")
    return float("nan") if kb is None else kb / 1024.0


@contextmanager
def measure(device: str = "cpu"):
    """Measure wall time, peak CPU RSS and (on CUDA) peak GPU memory of the enclosed block.

    Yields a dict filled on exit with ``seconds``, ``peak_rss_mb`` (whole process, includes the loaded data),
    ``rss_before_mb`` (resident at entry, so the block's own share is the difference), ``peak_gpu_mb`` (None
    off CUDA) and ``device``.
    """
    out: dict = {"device": device}
    cuda = device.startswith("cuda")
    if cuda:
        import torch

        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    out["peak_reset"] = reset_peak_rss()
    out["rss_before_mb"] = current_rss_mb()
    start = time.perf_counter()
    try:
        yield out
    finally:
        if cuda:
            import torch

            torch.cuda.synchronize()
        out["seconds"] = time.perf_counter() - start
        out["peak_rss_mb"] = peak_rss_mb()
        out["peak_gpu_mb"] = None
        if cuda:
            import torch

            out["peak_gpu_mb"] = torch.cuda.max_memory_allocated() / 2**20


def machine() -> dict:
    """The machine the figures come from: CPU count and model, GPU name when CUDA is available, versions."""
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    info = {"cpu_count": os.cpu_count(), "cpu_model": model, "python": platform.python_version()}
    try:
        import torch

        info["torch"] = torch.__version__
        info["torch_threads"] = torch.get_num_threads()
        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
    except ImportError:
        pass
    return info
