"""Cohorts: what a warm start buys, and the throughput of ``nsn2n batch`` on this machine.

``python -m benchmarks.cohort warmstart`` trains the default configuration on a source volume, then denoises a
target volume (another dose or another noise draw of the development CT; another noise level of MNI152) from a
cold start and from the source's network (a warm start), for several iteration counts; PSNR against iterations
goes to ``--out`` as one JSON per case; ``python -m benchmarks.cohort tables`` writes the Markdown table and the
figure from them. "0 iterations" is the source's network applied with no training
(one step at a learning rate of 1e-6, through the front API).

``python -m benchmarks.cohort throughput`` writes a handful of 48x128x128 development CT volumes as NRRD files and
runs :func:`NSN2NDenoiseLib.cohort.run_cohort` over them with 1 and 2 workers (one CPU thread each), cold and with
``reuse``; it records the wall time, the time per volume inside the task, and Ray's start-up.

Both read only the development data (Cranium slices 0-47, MNI152; DATA.md's rules) through
:func:`benchmarks.datasets.build`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from . import datasets, metrics
from .report import portable_command

WARM_CASES = {
    # target: (source dataset, source seed, target dataset, target seed)
    "ct_other_dose": ("ct_ld_2e4", 0, "ct_ld_1e5", 0),
    "ct_other_seed": ("ct_ld_2e4", 0, "ct_ld_2e4", 1),
    "mri_other_level": ("mri_rician10", 0, "mri_rician5", 1),
}
ITERATIONS = (100, 200, 400, 800, 1500)
NO_TRAINING_LR = 1e-6


def _config(iterations: int, **training):
    from NSN2NDenoiseLib import make_config

    return make_config("default", device="cpu", training={"iterations": iterations, "threads": 1, **training})


def _psnr(ds, estimate) -> float:
    return round(metrics.psnr(ds.clean, estimate, ds.mask, ds.data_range), 3)


def warmstart(case: str, iterations: tuple[int, ...]) -> dict:
    """PSNR of cold and warm starts on the case's target, for each iteration count."""
    from NSN2NDenoiseLib import denoise

    src_name, src_seed, dst_name, dst_seed = WARM_CASES[case]
    src = datasets.build(src_name, quick=True, seed=src_seed)
    dst = datasets.build(dst_name, quick=True, seed=dst_seed)
    t0 = time.perf_counter()
    src_out, src_report, state = denoise(src.noisy, src.spacing, _config(1500), return_model=True)
    result = {
        "case": case,
        "source": f"{src_name} seed {src_seed}",
        "target": f"{dst_name} seed {dst_seed}",
        "crop": dst.crop,
        "source_psnr": _psnr(src, src_out),
        "source_seconds": round(time.perf_counter() - t0, 1),
        "noisy_psnr": _psnr(dst, dst.noisy),
        "runs": [],
    }
    frozen = _config(1, learning_rate=NO_TRAINING_LR)
    out, report = denoise(dst.noisy, dst.spacing, frozen, init_model=state)
    result["runs"].append({"start": "warm", "iterations": 0, "psnr": _psnr(dst, out), "seconds": report.total_seconds})
    for n in iterations:
        for start, init in (("cold", None), ("warm", state)):
            out, report = denoise(dst.noisy, dst.spacing, _config(n), init_model=init)
            result["runs"].append(
                {
                    "start": start,
                    "iterations": n,
                    "psnr": _psnr(dst, out),
                    "seconds": report.total_seconds,
                    "training_seconds": report.phase_seconds["training"],
                }
            )
            print(case, start, n, result["runs"][-1]["psnr"], file=sys.stderr, flush=True)
    return result


def write_warmstart(results: list[dict], out: Path) -> None:
    lines = [
        "| case | source -> target | noisy | no training | "
        + " | ".join(f"{n} cold / warm" for n in ITERATIONS)
        + " |",
        "|---|---|---|---|" + "---|" * len(ITERATIONS),
    ]
    for r in results:
        by = {(x["start"], x["iterations"]): x["psnr"] for x in r["runs"]}
        cells = [
            f"{by.get(('cold', n), float('nan')):.2f} / {by.get(('warm', n), float('nan')):.2f}" for n in ITERATIONS
        ]
        lines.append(
            f"| {r['case']} | {r['source']} -> {r['target']} | {r['noisy_psnr']:.2f} | {by[('warm', 0)]:.2f} | "
            + " | ".join(cells)
            + " |"
        )
    (out / "warmstart.md").write_text("\n".join(lines) + "\n")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(5 * len(results), 4), squeeze=False)
    for ax, r in zip(axes[0], results, strict=True):
        for start, style in (("cold", "o-"), ("warm", "s-")):
            pts = sorted((x["iterations"], x["psnr"]) for x in r["runs"] if x["start"] == start)
            ax.plot([p[0] for p in pts], [p[1] for p in pts], style, label=f"{start} start")
        ax.axhline(r["noisy_psnr"], color="grey", ls=":", label="noisy input")
        ax.set_xscale("symlog", linthresh=100)
        ax.set_xlabel("training iterations on the target")
        ax.set_ylabel("PSNR (dB)")
        ax.set_title(f"{r['case']}\n{r['source']} -> {r['target']}", fontsize=9)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "warmstart.png", dpi=100)
    plt.close(fig)


# -- throughput ----------------------------------------------------------------------------------------------------

THROUGHPUT_VOLUMES = (("ct_ld_2.5e5", 0), ("ct_ld_1e5", 0), ("ct_ld_2e4", 0), ("ct_gauss30", 0))


def _write_volumes(folder: Path) -> list[Path]:
    import SimpleITK as sitk

    paths = []
    for name, seed in THROUGHPUT_VOLUMES:
        ds = datasets.build(name, quick=True, seed=seed)
        image = sitk.GetImageFromArray(np.round(ds.noisy).astype(np.int16))
        image.SetSpacing(tuple(float(s) for s in reversed(ds.spacing)))
        path = folder / f"{name}_s{seed}.nrrd"
        sitk.WriteImage(image, str(path), useCompression=True)
        paths.append(path)
    return paths


def throughput(workers: tuple[int, ...], preset: str, reuse_iterations: int | None) -> list[dict]:
    """Wall time of run_cohort over the throughput volumes for each worker count, cold and with reuse."""
    import ray

    from NSN2NDenoiseLib import cohort, make_config

    cfg = make_config(preset, device="cpu")
    runs = []
    with tempfile.TemporaryDirectory(prefix="nsn2n-cohort-bench-") as tmp:
        folder = Path(tmp)
        (folder / "in").mkdir()
        _write_volumes(folder / "in")
        for w in workers:
            for mode in ("cold", "reuse"):
                out = folder / f"out_{w}_{mode}"
                out.mkdir()
                items = cohort.collect_items(folder / "in", out)
                t0 = time.perf_counter()
                cohort.start_ray(None, w, 1)
                t_ray = time.perf_counter() - t0
                t1 = time.perf_counter()
                rows = cohort.run_cohort(
                    items,
                    cfg,
                    out / "summary.csv",
                    workers=w,
                    threads=1,
                    reuse=mode == "reuse",
                    reuse_iterations=reuse_iterations,
                )
                wall = time.perf_counter() - t1
                ray.shutdown()
                secs = [float(r["seconds"]) for r in rows]
                den = [float(r.get("denoise_seconds") or 0) for r in rows]
                runs.append(
                    {
                        "workers": w,
                        "mode": mode,
                        "volumes": len(rows),
                        "done": sum(r["status"] == "done" for r in rows),
                        "ray_start_seconds": round(t_ray, 2),
                        "wall_seconds": round(wall, 2),
                        "volumes_per_minute": round(60 * len(rows) / wall, 2),
                        "task_seconds": secs,
                        "denoise_seconds": den,
                        "iterations": [int(r["iterations"]) for r in rows],
                    }
                )
                print(runs[-1], file=sys.stderr, flush=True)
    return runs


def write_throughput(runs: list[dict], out: Path, preset: str) -> None:
    lines = [
        "| workers | start | volumes | wall (s) | volumes/min | task s (mean) | denoise s (mean) | Ray start (s) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in runs:
        lines.append(
            f"| {r['workers']} | {r['mode']} | {r['done']}/{r['volumes']} | {r['wall_seconds']:.1f} | "
            f"{r['volumes_per_minute']:.2f} | {np.mean(r['task_seconds']):.1f} | {np.mean(r['denoise_seconds']):.1f} | "
            f"{r['ray_start_seconds']:.1f} |"
        )
    (out / "throughput.md").write_text(f"preset {preset}, CPU, 1 thread per task\n\n" + "\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    import torch

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=("warmstart", "tables", "throughput"))
    parser.add_argument("--out", default="benchmarks/results/cohort")
    parser.add_argument("--cases", default=",".join(WARM_CASES))
    parser.add_argument("--workers", default="1,2")
    parser.add_argument("--preset", default="fast")
    parser.add_argument("--reuse-iterations", type=int, default=None)
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)
    meta = {
        "command": portable_command(" ".join(["python -m benchmarks.cohort", *(argv or sys.argv[1:])])),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}",
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    if args.what == "warmstart":
        for case in args.cases.split(","):
            result = warmstart(case, ITERATIONS)
            (out / f"warmstart_{case}.json").write_text(json.dumps({**meta, **result}, indent=1))
    elif args.what == "tables":
        found = [out / f"warmstart_{c}.json" for c in WARM_CASES if (out / f"warmstart_{c}.json").is_file()]
        write_warmstart([json.loads(p.read_text()) for p in found], out)
    else:
        workers = tuple(int(w) for w in args.workers.split(","))
        runs = throughput(workers, args.preset, args.reuse_iterations)
        (out / "throughput.json").write_text(json.dumps({**meta, "preset": args.preset, "runs": runs}, indent=1))
        write_throughput(runs, out, args.preset)
    return 0


if __name__ == "__main__":
    sys.exit(main())
