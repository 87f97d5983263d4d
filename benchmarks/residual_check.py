"""How the reference-free residual check relates to the true PSNR change, and what its blend gives.

For each benchmark case (dataset x method) it records the residual check of ``NSN2NDenoiseLib.residual_check``
(overall score, components, flagged slices), the true PSNR of the input, the output and the blended output
against the clean reference (example4d: against the second repetition, as ``benchmarks.datasets`` scores it),
inside the dataset's head mask and data range. Methods: NSN2N's ``fast`` preset (``default`` on the datasets of
``--default-on``), and over-smoothing baselines that do remove structure (in-plane Gaussian blur, TV with the
benchmark's weight and with 4x that weight).

The threshold and the blend's parameters are chosen on the **tuning** datasets only (:data:`TUNING`); every other
dataset is a **reporting** case. Threshold: the midpoint of the widest gap between the scores of tuning cases
that gain and those that lose PSNR. Blend: the (window, dead zone) of :data:`BLEND_GRID` that maximises the worst
tuning case's PSNR after the blend minus the better of input and output (the regret against an oracle that
picks the better of the two).

    python -m benchmarks.residual_check --out benchmarks/results/residual_check

Arrays are passed to the check slice axis first, along the axis NSN2N chose for the volume. Denoised volumes are
cached in ``benchmarks/.cache/residual_check/`` (git-ignored), so a rerun only recomputes the analysis.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

import numpy as np
from scipy import ndimage

from . import baselines, datasets, metrics, noise
from .report import portable_command

TUNING = ("ct_ld_1e5", "mri_rician10")
"""Datasets where the threshold and the blend are chosen (every method on them)."""
ORDER = (
    "ct_ld_1e5",
    "mri_rician10",
    "example4d",
    "ct_3dcorr30",
    "ct_ld_2e4",
    "ct_ld_2.5e5",
    "mri_rician5",
    "ct_gauss30",
    "ct_inplane30",
    "mri_gauss5",
)
BLUR_PX = 2.0
"""In-plane Gaussian sigma (pixels) of the over-smoothing blur."""
TV_STRONG = 4.0
"""The strong TV's weight: this many times the benchmark's TV weight (1 x estimated sigma)."""
BLEND_GRID = {"sigma_px": (2.0, 4.0, 8.0), "edge": (False, True), "dead_zone": (0.1, 0.2, 0.3, 0.5)}
"""Blend parameters tried (keys of a row's ``blend``: 'sigma/edge/dead_zone', edge as 0/1)."""
THEORY_THRESHOLD = 0.5
"""Score at which the removed structure equals the removed noise (see :func:`choose_threshold`)."""
CACHE = noise.CACHE_DIR / "residual_check"


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def _methods(name: str, with_default: bool) -> list[str]:
    out = ["nsn2n_fast"] + (["nsn2n_default"] if with_default else [])
    return out + ["gauss_blur", "tv", "tv_strong"]


def _denoise(method: str, ds: datasets.Dataset) -> tuple[np.ndarray, int, dict]:
    """(output, slice axis, info) of one method on one dataset."""
    from NSN2NDenoiseLib import denoise, make_config

    if method.startswith("nsn2n_"):
        cfg = make_config(method.split("_", 1)[1], device="cpu", training={"threads": 1})
        t0 = time.perf_counter()
        out, report = denoise(ds.noisy, ds.spacing, cfg)
        info = {"seconds": round(time.perf_counter() - t0, 1), "warnings": report.warnings}
        info["interslice_noise_correlation"] = report.interslice_noise_correlation
        return out, report.slice_axis, info
    if method == "gauss_blur":
        return ndimage.gaussian_filter(ds.noisy, (0, BLUR_PX, BLUR_PX)).astype(np.float32), -1, {"sigma_px": BLUR_PX}
    from skimage.restoration import denoise_tv_chambolle

    sigma = baselines.estimated_sigma(ds.noisy)
    weight = baselines.TV_WEIGHT_FACTOR * sigma * (TV_STRONG if method == "tv_strong" else 1.0)
    out = denoise_tv_chambolle(ds.noisy.astype(np.float64), weight=weight).astype(np.float32)
    return out, -1, {"weight": weight}


def _cached(method: str, ds: datasets.Dataset) -> tuple[np.ndarray, int, dict]:
    path = CACHE / f"{ds.key()}_{method}.npy"
    meta = path.with_suffix(".json")
    if path.exists() and meta.exists():
        info = json.loads(meta.read_text())
        return np.load(path), info.pop("slice_axis"), info
    out, axis, info = _denoise(method, ds)
    CACHE.mkdir(parents=True, exist_ok=True)
    np.save(path, out)
    meta.write_text(json.dumps({"slice_axis": axis, **info}))
    return out, axis, info


def measure_case(ds: datasets.Dataset, method: str, out: np.ndarray, axis: int, info: dict) -> dict:
    """Every figure of one case; the blend is evaluated on the whole :data:`BLEND_GRID`."""
    from NSN2NDenoiseLib.residual_check import blend_toward_input, local_structure, residual_structure

    x, y = np.moveaxis(ds.noisy, axis, 0), np.moveaxis(out, axis, 0)
    t0 = time.perf_counter()
    check = residual_structure(x, y)
    check_s = time.perf_counter() - t0

    def score(volume_stack: np.ndarray) -> float:
        return metrics.psnr(ds.clean, np.moveaxis(volume_stack, 0, axis), ds.mask, ds.data_range)

    row = {
        "dataset": ds.name,
        "method": method,
        "set": "tuning" if ds.name in TUNING else "reporting",
        "slice_axis": axis,
        "shape": list(ds.noisy.shape),
        "crop": ds.crop,
        "psnr_input": score(x),
        "psnr_output": score(y),
        "score": check.score,
        "interslice": check.interslice,
        "edge": check.edge,
        "per_slice": [round(v, 4) for v in check.per_slice],
        "slices": x.shape[0],
        "residual_rms": check.residual_rms,
        "check_seconds": round(check_s, 3),
        "info": info,
        "blend": {},
    }
    row["psnr_change"] = row["psnr_output"] - row["psnr_input"]
    for sigma in BLEND_GRID["sigma_px"]:
        for edge in BLEND_GRID["edge"]:
            rho = local_structure(x, y, sigma, edge)
            for dz in BLEND_GRID["dead_zone"]:
                b = blend_toward_input(x, y, structure=rho, dead_zone=dz)
                row["blend"][f"{sigma:g}/{int(edge)}/{dz:g}"] = {
                    "psnr": score(b.volume),
                    "changed_share": b.changed_share,
                    "mean_weight": b.mean_weight,
                }
    return row


def choose_threshold(rows: list[dict]) -> tuple[float, str]:
    """The threshold from the tuning cases: 0.5 where it separates them, else the midpoint of their gap.

    0.5 is the break-even of the score's own reading: a residual with more structure than noise (S > N_removed)
    lowers the PSNR, since the output's squared error is the input's minus N_removed plus S. When the tuning
    classes overlap, the threshold with the fewest errors, said so."""
    gain = sorted(r["score"] for r in rows if r["psnr_change"] > 0)
    loss = sorted(r["score"] for r in rows if r["psnr_change"] <= 0)
    if not gain or not loss:
        return THEORY_THRESHOLD, "one class missing on the tuning set: the break-even 0.5"
    gap = f"tuning gains score <= {max(gain):.3f}, losses >= {min(loss):.3f}"
    if max(gain) < THEORY_THRESHOLD < min(loss):
        return THEORY_THRESHOLD, f"the break-even 0.5 separates: {gap}"
    if max(gain) < min(loss):
        return 0.5 * (max(gain) + min(loss)), f"midpoint of the gap: {gap}"
    cands = sorted(set(gain + loss))
    best = max(cands, key=lambda t: sum(s <= t for s in gain) + sum(s > t for s in loss))
    return best, "classes overlap on the tuning set: threshold with the fewest errors"


def regret(row: dict, key: str) -> float:
    """PSNR after the blend minus the better of input and output (0 = as good as an oracle choice)."""
    return row["blend"][key]["psnr"] - max(row["psnr_input"], row["psnr_output"])


def choose_blend(rows: list[dict]) -> str:
    """The blend parameters whose worst tuning regret (rounded to 0.01 dB) is best; ties go to the best mean."""
    keys = list(rows[0]["blend"])
    return max(keys, key=lambda k: (round(min(regret(r, k) for r in rows), 2), np.mean([regret(r, k) for r in rows])))


def write_outputs(rows: list[dict], out: Path, command: str) -> dict:
    tuning = [r for r in rows if r["set"] == "tuning"]
    threshold, why = choose_threshold(tuning)
    key = choose_blend(tuning)
    summary = {"threshold": threshold, "threshold_rule": why, "blend": key, "command": command}
    for r in rows:
        b = r["blend"][key]
        r["warned"] = bool(r["score"] > threshold)
        r["flagged"] = sum(v > threshold for v in r["per_slice"] if v == v)  # NaN: slice not scored
        r["psnr_blend"] = b["psnr"]
        r["psnr_blend_if_warned"] = b["psnr"] if r["warned"] else r["psnr_output"]
    for set_name in ("tuning", "reporting"):
        part = [r for r in rows if r["set"] == set_name]
        wins = [r for r in part if r["method"].startswith("nsn2n") and r["psnr_change"] > 0]
        if not part:
            continue
        summary[set_name] = {
            "cases": len(part),
            "warned_and_lost": sum(r["warned"] and r["psnr_change"] <= 0 for r in part),
            "warned_but_gained": sum(r["warned"] and r["psnr_change"] > 0 for r in part),
            "missed_losses": sum(not r["warned"] and r["psnr_change"] <= 0 for r in part),
            "worst_blend_minus_input_db": min(r["psnr_blend"] - r["psnr_input"] for r in part),
            "worst_blend_minus_output_where_nsn2n_wins_db": min(
                (r["psnr_blend"] - r["psnr_output"] for r in wins), default=None
            ),
            "worst_warned_blend_minus_input_db": min(r["psnr_blend_if_warned"] - r["psnr_input"] for r in part),
        }
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps({"summary": summary, "rows": rows}, indent=1))
    lines = [
        f"Command: `{command}`. Threshold {threshold:.3f} ({why}); blend window px / edge term / dead zone = {key}.",
        "",
        "| set | dataset | method | score | interslice | edge | flagged | PSNR in | out | change | blend | "
        "blend if warned | changed % |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        b = r["blend"][key]
        lines.append(
            f"| {r['set']} | {r['dataset']} | {r['method']} | {r['score']:.3f} | {r['interslice']:.3f} | "
            f"{r['edge']:.3f} | {r['flagged']}/{r['slices']} | {r['psnr_input']:.2f} | {r['psnr_output']:.2f} | "
            f"{r['psnr_change']:+.2f} | {b['psnr']:.2f} | {r['psnr_blend_if_warned']:.2f} | "
            f"{100 * b['changed_share']:.1f} |"
        )
    (out / "results.md").write_text("\n".join(lines) + "\n")
    _scatter(rows, threshold, out / "score_vs_psnr_change.png")
    return summary


def _scatter(rows: list[dict], threshold: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 5))
    markers = {"nsn2n_fast": "o", "nsn2n_default": "s", "gauss_blur": "^", "tv": "v", "tv_strong": "D"}
    for set_name, colour in (("tuning", "tab:blue"), ("reporting", "tab:orange")):
        for method, marker in markers.items():
            pts = [r for r in rows if r["set"] == set_name and r["method"] == method]
            if pts:
                ax.scatter(
                    [r["score"] for r in pts],
                    [r["psnr_change"] for r in pts],
                    c=colour,
                    marker=marker,
                    label=f"{set_name}: {method}",
                )
    for r in rows:
        if r["dataset"] == "example4d" and r["method"].startswith("nsn2n"):
            ax.annotate("example4d", (r["score"], r["psnr_change"]), fontsize=8)
    ax.axhline(0, color="grey", lw=0.8)
    ax.axvline(threshold, color="red", ls="--", lw=1, label=f"threshold {threshold:.2f}")
    ax.set_xlabel("residual structure score (no reference)")
    ax.set_ylabel("true PSNR change, output - input (dB)")
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", default=",".join(ORDER), help="comma-separated, in run order")
    parser.add_argument("--default-on", default="ct_ld_1e5,mri_rician10,example4d", help="also run NSN2N default")
    parser.add_argument("--full", action="store_true", help="whole development volumes (default: quick crops)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/residual_check"))
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    command = portable_command(shlex.join(["python", "-m", "benchmarks.residual_check", *sys.argv[1:]]))
    with_default = set(filter(None, args.default_on.split(",")))
    rows: list[dict] = []
    for name in filter(None, args.datasets.split(",")):
        ds = datasets.build(name, quick=not args.full, n_jobs=1)
        for method in _methods(name, name in with_default):
            log(f"{name} {method}")
            out, axis, info = _cached(method, ds)
            if axis < 0:  # the classical filters have no slice axis: check them along NSN2N's
                axis = next(r["slice_axis"] for r in rows if r["dataset"] == name)
            rows.append(measure_case(ds, method, out, axis, info))
            r = rows[-1]
            log(f"  score {r['score']:.3f} change {r['psnr_change']:+.2f} dB")
            write_outputs(rows, args.out, command)  # after every case, so an interrupted run keeps its rows
    summary = write_outputs(rows, args.out, command)
    log(json.dumps(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
