"""PNG figures: the middle slice of clean, noisy, NSN2N and the two best baselines (with a zoom and the
difference images), and PSNR against wall time."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy import ndimage

CT_WINDOW = (-160.0, 240.0)
"""Display window for CT slices in HU (level 40, width 400)."""
SHORT = {
    "diffusion_gradient": "grad. diffusion",
    "diffusion_curvature": "curv. diffusion",
    "nlm": "NLM",
    "nlm_3d": "NLM 3D",
    "tv": "TV",
    "bm4d_est": "BM4D est.",
    "bm4d_oracle": "BM4D oracle",
    "bm3d_slices": "BM3D",
    "nsn2n": "NSN2N",
    "ns_n2n_plain": "plain NS-N2N",
    "n2v": "N2V",
    "ne2ne": "Ne2Ne",
    "zsn2n": "ZS-N2N",
    "supervised": "supervised",
}
"""Point labels of the PSNR-time figure."""
CT_DIFF = 100.0
"""Difference images are shown in +-this many HU (CT) or +-25 % of the data range (MRI)."""


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def best_baselines(results: dict, n: int = 2) -> list[str]:
    """The ``n`` methods with the highest PSNR, excluding NSN2N rows and methods that need the truth."""
    from .report import NOT_USER_METHODS

    ok = [
        (r["quality"]["psnr"], m)
        for m, r in results.items()
        if "quality" in r and m not in NOT_USER_METHODS and not m.startswith("nsn2n")
    ]
    return [m for _, m in sorted(ok, reverse=True)[:n]]


def zoom_box(clean_mid: np.ndarray, size: int, window: tuple[float, float]) -> tuple[int, int]:
    """Top-left (j, i) of the ``size`` window with the most visible edges: the largest mean gradient of the
    display-clipped clean slice, among windows where at least 60 % of the pixels lie inside the display range."""
    lo, hi = window
    x = np.clip(clean_mid.astype(np.float64), lo, hi)
    grad = np.hypot(ndimage.sobel(x, 0), ndimage.sobel(x, 1))
    visible = ((clean_mid > lo) & (clean_mid < hi)).astype(np.float64)
    score = ndimage.uniform_filter(grad, size)
    score[ndimage.uniform_filter(visible, size) < 0.6] = -1
    h = size // 2
    score[:h], score[-h:], score[:, :h], score[:, -h:] = -2, -2, -2, -2
    j, i = np.unravel_index(np.argmax(score), score.shape)
    return int(j - h), int(i - h)


def comparison_figure(path: Path, ds, res: dict) -> Path:
    """clean | noisy | NSN2N | best baseline | second best: full slice, zoom, difference to clean."""
    plt = _pyplot()
    results, mids = res["results"], res["mids"]
    cols = ["clean", "noisy"] + [m for m in ("nsn2n",) if m in mids] + best_baselines(results)
    cols = [c for c in cols if c in mids]
    if ds.modality == "ct":
        vmin, vmax = CT_WINDOW
        dlim = CT_DIFF
    else:
        vmin, vmax = 0.0, ds.data_range
        dlim = 0.25 * ds.data_range
    clean = mids["clean"]
    size = max(16, min(clean.shape) // 4)
    j0, i0 = zoom_box(clean, size, (vmin, vmax))
    fig, axes = plt.subplots(3, len(cols), figsize=(3 * len(cols), 9), squeeze=False)
    from .report import LABELS

    for c, name in enumerate(cols):
        img = mids[name]
        title = "clean" if name == "clean" else LABELS.get(name, name).replace("**", "")
        if name in results and "quality" in results[name]:
            title += f"\n{results[name]['quality']['psnr']:.2f} dB"
        axes[0, c].imshow(img, cmap="gray", vmin=vmin, vmax=vmax)
        axes[0, c].add_patch(plt.Rectangle((i0, j0), size, size, fill=False, edgecolor="yellow", lw=1))
        axes[0, c].set_title(title, fontsize=8)
        axes[1, c].imshow(img[j0 : j0 + size, i0 : i0 + size], cmap="gray", vmin=vmin, vmax=vmax)
        if name != "clean":
            axes[2, c].imshow(img - clean, cmap="RdBu_r", vmin=-dlim, vmax=dlim)
            axes[2, c].set_title(f"minus clean (+-{dlim:.0f})", fontsize=8)
        for r in range(3):
            axes[r, c].axis("off")
    fig.suptitle(f"{ds.name}: middle slice (K = {ds.noisy.shape[0] // 2} of the crop)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def psnr_time_figure(path: Path, ds, results: dict) -> Path:
    """PSNR against wall time (log scale) for every method of one dataset; the noisy input as a line."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, r in results.items():
        if "quality" not in r:
            continue
        if name == "noisy":
            ax.axhline(r["quality"]["psnr"], color="gray", ls="--", lw=1, label="noisy input")
            continue
        # Diffusion: the time of one run at the chosen iteration count (what a user spends), not the whole sweep.
        t = max(r.get("info", {}).get("seconds_of_chosen", r["cost"]["seconds"]), 0.1)
        marker = "*" if name.startswith("nsn2n") else "o"
        ax.scatter(t, r["quality"]["psnr"], marker=marker, s=120 if marker == "*" else 40)
        ax.annotate(
            SHORT.get(name, name),
            (t, r["quality"]["psnr"]),
            fontsize=7,
            xytext=(4, -10) if name.startswith("nsn2n") else (4, 2),
            textcoords="offset points",
        )
    ax.set_xscale("log")
    ax.set_xlabel("wall time, s (log; diffusion: one run at the best iteration count)")
    ax.set_ylabel("PSNR in the head mask, dB")
    ax.set_title(f"{ds.name}: quality against time", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
