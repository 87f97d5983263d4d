"""Real-size runs: time per phase and peak memory of ``nsn2n`` on 512x512xN CT volumes (the scale family).

``python -m benchmarks.scale --sizes 100,300,600 --presets default,fast`` builds 512x512xN volumes from the
development CT (Cranium slices 0-47, the only slices the benchmark may read) by cubic interpolation in-plane
(256 -> 512) and linear interpolation along K (48 -> N), stores them as int16 HU like a scanner's series, and adds
independent in-plane correlated Gaussian noise of 30 HU per slice (cheap at this size; the projection-domain
low-dose model is kept for the quality tables). Each run is a fresh ``python -m NSN2NDenoiseLib.worker`` process
reading the NRRD file and writing the result, as a user's run would: the wall time, the time per phase from the
run report, and the process's resident memory sampled every 0.2 s (its peak, and the peak per phase) are
recorded. Results go to ``--out`` as JSON and a Markdown table, with the cost model fitted to them.

``python -m benchmarks.scale --family mri --out benchmarks/results/scale_mri`` runs the same on one 256x256x200
1 mm isotropic MRI with white Rician noise (:func:`build_mri_volume`), where the default denoises along three axes.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

from . import data, noise
from .report import portable_command

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / "benchmarks" / ".cache" / "scale"
NOISE_HU = 30.0
INPLANE_PX = 1.5


def build_volume(n_slices: int, seed: int = 0) -> Path:
    """The noisy 512x512x``n_slices`` int16 NRRD of the scale family (cached); returns its path."""
    import SimpleITK as sitk
    from scipy import ndimage

    path = CACHE / f"ct512_{n_slices}_seed{seed}.nrrd"
    if path.exists():
        return path
    CACHE.mkdir(parents=True, exist_ok=True)
    vol = data.load_cranium(0, 47)
    k_src = vol.data.shape[0]
    out = np.empty((n_slices, 512, 512), dtype=np.int16)
    up = np.stack([ndimage.zoom(s, 2.0, order=3) for s in vol.data])  # (48, 512, 512)
    positions = np.linspace(0, k_src - 1, n_slices)
    for k, z in enumerate(positions):
        lo = int(np.floor(z))
        hi = min(lo + 1, k_src - 1)
        t = z - lo
        clean = (1 - t) * up[lo] + t * up[hi]
        nz = noise.correlated_noise((1, 512, 512), NOISE_HU, INPLANE_PX, 0.0, seed * 100003 + k)[0]
        out[k] = np.clip(np.round(clean + nz), -32768, 32767)
    image = sitk.GetImageFromArray(out)
    sk = vol.spacing[0] * (k_src - 1) / max(1, n_slices - 1)
    image.SetSpacing((vol.spacing[2] / 2, vol.spacing[1] / 2, sk))
    tmp = path.with_suffix(".tmp.nrrd")
    sitk.WriteImage(image, str(tmp), useCompression=False)
    os.replace(tmp, path)
    return path


MRI_SHAPE = (200, 256, 256)
"""K,J,I shape of the MRI family's volume: a real-size 1 mm isotropic head MRI."""
MRI_NOISE = 0.05
"""Rician sigma of the MRI family as a share of the brightest tissue (as ``benchmarks.datasets``' rician5)."""


def build_mri_volume(seed: int = 0) -> Path:
    """A 256x256x200 (K,J,I = 200, 256, 256) 1 mm isotropic int16 NRRD (cached): the whole MNI152 2009a T1 template
    (189x233x197, K,J,I) centred in a zero background, with Rician noise of 5 % of the brightest tissue. Isotropic
    voxels and white noise: the default denoises it along three axes (the path this family measures)."""
    import SimpleITK as sitk

    from . import metrics

    path = CACHE / f"mri256_{MRI_SHAPE[0]}_seed{seed}.nrrd"
    if path.exists():
        return path
    CACHE.mkdir(parents=True, exist_ok=True)
    vol = data.load_mni152(n_slices=189, center=94)
    clean = np.zeros(MRI_SHAPE, dtype=np.float32)
    offsets = [(t - s) // 2 for t, s in zip(MRI_SHAPE, vol.data.shape, strict=True)]
    k0, j0, i0 = offsets
    kk, jj, ii = vol.data.shape
    clean[k0 : k0 + kk, j0 : j0 + jj, i0 : i0 + ii] = vol.data
    sigma = MRI_NOISE * metrics.mri_data_range(vol.data, metrics.head_mask(vol.data, "mri"))
    noisy = noise.rician(clean, sigma, seed)
    image = sitk.GetImageFromArray(np.clip(np.round(noisy), -32768, 32767).astype(np.int16))
    image.SetSpacing(tuple(float(s) for s in vol.spacing[::-1]))
    tmp = path.with_suffix(".tmp.nrrd")
    sitk.WriteImage(image, str(tmp), useCompression=False)
    os.replace(tmp, path)
    return path


def _rss_mb(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def run_one(path: Path, preset: str, threads: int, out_dir: Path, extra: list[str]) -> dict:
    """One worker process on ``path``; returns times, memory and the report's figures."""
    out = out_dir / f"{path.stem}_{preset}.nrrd"
    report = out_dir / f"{path.stem}_{preset}.report.json"
    env = dict(os.environ, PYTHONPATH=str(ROOT / "NSN2NDenoise"))
    cmd = [
        sys.executable,
        "-m",
        "NSN2NDenoiseLib.worker",
        str(path),
        str(out),
        "--report",
        str(report),
        "--preset",
        preset,
        "--device",
        "cpu",
        "--threads",
        str(threads),
        *extra,
    ]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    phase = {"name": "reading"}
    samples: list[tuple[float, float, str]] = []
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            samples.append((time.perf_counter() - t0, _rss_mb(proc.pid), phase["name"]))
            done.wait(0.2)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    for line in proc.stdout:
        if line.startswith("nsn2n-progress "):
            phase["name"] = json.loads(line.split(" ", 1)[1])["phase"]
        elif line.startswith("<filter-end>"):
            phase["name"] = "writing"
    err = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    done.set()
    sampler.join()
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"worker failed ({proc.returncode}): {err.strip()}")
    rep = json.loads(report.read_text())
    per_phase: dict[str, float] = {}
    for _, mb, name in samples:
        per_phase[name] = max(per_phase.get(name, 0.0), mb)
    out.unlink()
    shape = rep["shape"]
    return {
        "file": path.name,
        "shape_kji": shape,
        "voxels": int(np.prod(shape)),
        "preset": preset,
        "threads": threads,
        "wall_s": round(wall, 2),
        "phase_seconds": rep["phase_seconds"],
        "engine_seconds": rep["total_seconds"],
        "peak_rss_mb": round(usage.ru_maxrss / 1024, 1),
        "peak_rss_mb_per_phase": {k: round(v, 1) for k, v in per_phase.items()},
        "float32_volume_mb": round(np.prod(shape) * 4 / 2**20, 1),
        "iterations": rep["iterations"],
        "tta": rep["config"]["inference"]["tta"],
        "matched_fraction": rep["matched_fraction"],
        "prediction_axes": rep.get("prediction_axes"),
        "loadavg_after": os.getloadavg(),
    }


def fit_cost_model(rows: list[dict]) -> dict:
    """Least-squares seconds per unit of work of each phase (through the origin), over every run."""

    def slope(xs, ys):
        xs, ys = np.asarray(xs, float), np.asarray(ys, float)
        return float((xs * ys).sum() / (xs * xs).sum())

    return {
        "weights_s_per_voxel": slope([r["voxels"] for r in rows], [r["phase_seconds"]["weights"] for r in rows]),
        "training_s_per_iteration": slope(
            [r["iterations"] for r in rows], [r["phase_seconds"]["training"] for r in rows]
        ),
        "inference_s_per_voxel_per_transform": slope(
            [r["voxels"] * r["tta"] * len(r.get("prediction_axes") or [0]) for r in rows],
            [r["phase_seconds"]["inference"] for r in rows],
        ),
    }


def markdown(rows: list[dict], model: dict) -> str:
    lines = [
        "| volume (K,J,I) | preset | TTA | axes | weights s | training s | inference s | Wiener stage s | engine s "
        "| wall s | peak RSS MB | limit MB (2x float32 + 1.5 GB) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        ps = r["phase_seconds"]
        limit = 2 * r["float32_volume_mb"] + 1536
        wiener = f"{ps['wiener']:.1f}" if "wiener" in ps else "off"
        lines.append(
            f"| {'x'.join(map(str, r['shape_kji']))} | {r['preset']} | {r['tta']} "
            f"| {''.join(r.get('prediction_axes') or 'K')} | {ps['weights']:.1f} | "
            f"{ps['training']:.1f} | {ps['inference']:.1f} | {wiener} | {r['engine_seconds']:.1f} "
            f"| {r['wall_s']:.1f} | {r['peak_rss_mb']:.0f} | {limit:.0f} |"
        )
    lines.append("")
    fitted = ", ".join(f"{k} = {v:.3g}" for k, v in model.items())
    lines.append("Cost model (2 threads; inference per voxel, transform and axis): " + fitted)
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="100,300,600", help="slice counts N of the 512x512xN volumes")
    p.add_argument(
        "--family",
        choices=("ct", "mri"),
        default="ct",
        help="ct: the 512x512xN CT volumes of --sizes; mri: one 256x256x200 isotropic MRI (--sizes ignored)",
    )
    p.add_argument("--presets", default="default,fast")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "scale"))
    p.add_argument("--extra", default="", help="extra worker flags, e.g. '--tta 1'")
    args = p.parse_args(argv)
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    paths = [build_mri_volume()] if args.family == "mri" else [build_volume(int(n)) for n in args.sizes.split(",")]
    for path in paths:
        for preset in args.presets.split(","):
            row = run_one(path, preset, args.threads, out_dir, args.extra.split())
            print(json.dumps(row), file=sys.stderr, flush=True)
            rows.append(row)
            (out_dir / "scale.json").write_text(
                json.dumps(
                    {
                        "command": portable_command(" ".join(["python -m benchmarks.scale", *sys.argv[1:]])),
                        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
                        "rows": rows,
                        "cost_model": fit_cost_model(rows),
                    },
                    indent=2,
                )
            )
    (out_dir / "scale.md").write_text(markdown(rows, fit_cost_model(rows)))
    print((out_dir / "scale.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
