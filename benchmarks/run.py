"""The benchmark's one command: ``python -m benchmarks.run --quick`` or ``--full``.

Builds each dataset, runs each method on it (NSN2N first, because the deep baselines get its time budget),
scores the result, caches every result on disk (``benchmarks/.cache/results``, keyed by dataset, method and
parameters) so that a rerun only computes what is new, and writes Markdown tables, JSON and PNG figures under
``--out``. Progress goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from pathlib import Path

import numpy as np

from . import baselines, datasets, deep_baselines, metrics, noise
from .report import portable_command, write_outputs

RESULTS_VERSION = 1
"""Bump to invalidate every cached result (a change in scoring or in a method's code)."""
QUICK_DATASETS = ("ct_ld_1e5", "mri_rician10")
FULL_DATASETS = ("ct_ld_2.5e5", "ct_ld_1e5", "ct_ld_2e4", "mri_rician5", "mri_rician10")
CLASSICAL_ORDER = ("noisy", "diffusion_gradient", "diffusion_curvature", "nlm", "tv", "bm4d_est", "bm4d_oracle")
DEEP_ORDER = ("ns_n2n_plain", "n2v", "ne2ne", "zsn2n", "supervised")
QUICK_METHODS = (
    "noisy",
    "diffusion_gradient",
    "diffusion_curvature",
    "nlm",
    "tv",
    "bm4d_est",
    "nsn2n",
    "ns_n2n_plain",
    "supervised",
)
FULL_METHODS = CLASSICAL_ORDER + ("nsn2n",) + DEEP_ORDER
QUICK_NSN2N = {"training": {"iterations": 300}}
"""The quick run's NSN2N default: 300 iterations, so that the whole quick run takes minutes on 2 cores."""


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def parse_variant(text: str) -> tuple[str, dict]:
    """``name=JSON`` -> (name, overrides); ``overrides`` may hold ``"preset"`` plus make_config's overrides."""
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"--nsn2n-variant {text!r}: expected name=JSON, e.g. wide={{...}}")
    name, js = text.split("=", 1)
    try:
        overrides = json.loads(js)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"--nsn2n-variant {name}: invalid JSON ({exc})") from exc
    if not isinstance(overrides, dict):
        raise argparse.ArgumentTypeError(f"--nsn2n-variant {name}: the JSON must be an object")
    return name, overrides


def _nsn2n_config(overrides: dict, threads: int):
    from NSN2NDenoiseLib import make_config

    o = json.loads(json.dumps(overrides))
    preset = o.pop("preset", "default")
    training = o.setdefault("training", {})
    training.setdefault("threads", threads)
    o.setdefault("device", "cpu")
    return make_config(preset, **o)


def _nsn2n_method(overrides: dict, threads: int):
    def run(noisy: np.ndarray, ctx: baselines.Context):
        from NSN2NDenoiseLib import denoise

        cfg = _nsn2n_config(overrides, threads)
        out, report = denoise(noisy, spacing=ctx.spacing, config=cfg)
        r = report.to_dict()
        info = {
            k: r[k]
            for k in (
                "phase_seconds",
                "total_seconds",
                "device",
                "matched_fraction",
                "iterations",
                "noise_sigma",
                "interslice_noise_correlation",
                "warnings",
            )
            if k in r
        }
        info["loss_curve"] = r.get("loss_curve")
        info["config"] = r.get("config")
        return out, info

    return run


def _nsn2n_params(overrides: dict, threads: int) -> dict:
    """Cache parameters of an NSN2N row: the full resolved configuration, so that a change of the engine's
    defaults makes a new cache entry instead of reusing a result of the old defaults."""
    return {"config": _nsn2n_config(overrides, threads).to_dict(), "threads": threads}


class ResultCache:
    """One JSON and one middle-slice .npy per (dataset key, method key) under ``root``."""

    def __init__(self, root: Path, enabled: bool = True, only: bool = False) -> None:
        self.root = root
        self.enabled = enabled
        self.only = only
        """Report cached results only; a method without one is listed as not run."""

    def _path(self, dkey: str, mkey: str) -> Path:
        return self.root / dkey / mkey

    def get(self, dkey: str, mkey: str):
        p = self._path(dkey, mkey)
        if not (self.enabled and p.with_suffix(".json").is_file() and p.with_suffix(".npy").is_file()):
            return None
        return json.loads(p.with_suffix(".json").read_text()), np.load(p.with_suffix(".npy"))

    def put(self, dkey: str, mkey: str, result: dict, mid: np.ndarray) -> None:
        p = self._path(dkey, mkey)
        p.parent.mkdir(parents=True, exist_ok=True)
        p.with_suffix(".json").write_text(json.dumps(result, indent=1, default=float))
        np.save(p.with_suffix(".npy"), mid)


def _score_fn(ds: datasets.Dataset):
    def score(estimate: np.ndarray) -> float:
        return metrics.psnr(ds.clean, estimate, ds.mask, ds.data_range)

    return score


def run_one(method_name: str, fn, ds: datasets.Dataset, ctx: baselines.Context) -> tuple[dict, np.ndarray] | None:
    """Run and score one method; returns (result dict, middle slice) or None when it is unavailable."""
    log(f"{ds.name}: {method_name} ...")
    try:
        with metrics.measure("cpu") as cost:
            out, info = fn(ds.noisy, ctx)
    except baselines.MethodUnavailable as exc:
        log(f"{ds.name}: {method_name} skipped: {exc}")
        return {"method": method_name, "skipped": str(exc)}, None
    if out.shape != ds.noisy.shape or not np.all(np.isfinite(out)):
        raise RuntimeError(f"{method_name} returned a bad volume on {ds.name}")
    q = metrics.quality(ds.clean, out, ds.mask, ds.modality, ds.data_range)
    if method_name.startswith("nsn2n") and "device" in info:
        cost["device"] = info["device"]
    result = {"method": method_name, "quality": q, "cost": cost, "info": info}
    log(f"{ds.name}: {method_name}: PSNR {q['psnr']:.2f} dB, SSIM {q['ssim']:.3f}, {cost['seconds']:.1f} s")
    return result, out[out.shape[0] // 2].copy()


def method_key(name: str, params: dict) -> str:
    return f"{name}_{noise.params_key(v=RESULTS_VERSION, **params)}"


def run_dataset(ds: datasets.Dataset, methods: list[str], variants: dict, args, cache: ResultCache) -> dict:
    """Every requested method on one dataset, NSN2N variants first; returns {method: result} and mid slices."""
    dkey = ds.key()
    results, mids = {}, {"clean": ds.clean[ds.clean.shape[0] // 2], "noisy": ds.noisy[ds.noisy.shape[0] // 2]}
    nsn2n_default = variants.get("nsn2n", {})
    budget_cfg = _nsn2n_config(nsn2n_default, args.threads)
    ctx = baselines.Context(
        spacing=ds.spacing,
        modality=ds.modality,
        score=_score_fn(ds),
        clean=ds.clean if ds.has_clean else None,
        noise_psd=ds.noise_psd,
        noise_sigma=ds.noise_sigma,
        network=dict(budget_cfg.to_dict()["network"]),
        training={k: budget_cfg.to_dict()["training"][k] for k in deep_baselines.DEFAULT_TRAINING},
        iterations=budget_cfg.training.iterations,
    )
    ordered = [m for m in methods if m.startswith("nsn2n")] + [m for m in methods if not m.startswith("nsn2n")]
    for name in ordered:
        if name.startswith("nsn2n"):
            overrides = variants.get(name, {})
            fn = _nsn2n_method(overrides, args.threads)
            params = _nsn2n_params(overrides, args.threads)
        elif name in baselines.CLASSICAL:
            fn = baselines.CLASSICAL[name]
            params = {"threads": args.threads}
        elif name in deep_baselines.DEEP:
            fn = deep_baselines.DEEP[name]
            params = {"nsn2n": _nsn2n_params(nsn2n_default, args.threads)["config"], "threads": args.threads}
            ref = results.get("nsn2n")
            if ref is None or "info" not in ref:
                log(f"{ds.name}: {name} needs NSN2N's time budget; running NSN2N default first")
                ref = _get_or_run(
                    "nsn2n",
                    _nsn2n_method(nsn2n_default, args.threads),
                    _nsn2n_params(nsn2n_default, args.threads),
                    ds,
                    ctx,
                    cache,
                    dkey,
                    mids,
                )
                results["nsn2n"] = ref
            if "info" not in ref:  # NSN2N skipped (cached-only report): no budget to give
                results[name] = {"method": name, "skipped": ref.get("skipped", "no NSN2N time budget")}
                continue
            ph = ref["info"]["phase_seconds"]
            ctx.budget_seconds = float(ph.get("weights", 0.0) + ph.get("training", 0.0))
        else:
            raise KeyError(f"unknown method {name!r}")
        results[name] = _get_or_run(name, fn, params, ds, ctx, cache, dkey, mids)
    return {"results": results, "mids": mids}


def _get_or_run(name, fn, params, ds, ctx, cache: ResultCache, dkey: str, mids: dict) -> dict:
    mkey = method_key(name, params)
    hit = cache.get(dkey, mkey)
    if hit is not None:
        result, mid = hit
        log(f"{ds.name}: {name}: cached ({result['quality']['psnr']:.2f} dB)")
        mids[name] = mid
        return result
    if cache.only:
        return {"method": name, "skipped": "not run yet (report of cached results only)"}
    result, mid = run_one(name, fn, ds, ctx)
    if mid is not None:
        result.update(
            dataset=ds.name,
            dataset_key=dkey,
            method_key=mkey,
            crop=ds.crop,
            command=portable_command("python -m benchmarks.run " + " ".join(shlex.quote(a) for a in sys.argv[1:])),
            when=time.strftime("%Y-%m-%d %H:%M"),
            machine=metrics.machine(),
        )
        cache.put(dkey, mkey, result, mid)
        mids[name] = mid
    return result


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.run",
        description="Benchmark NSN2N against classical and deep baselines on real volumes with simulated noise.",
    )
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="128x128 crops, two datasets, fewer methods (minutes)")
    mode.add_argument("--full", action="store_true", help="CT slices 0-47 at 256x256, three doses, and MRI")
    p.add_argument("--datasets", help=f"comma-separated, from: {', '.join(datasets.DATASETS)}")
    p.add_argument(
        "--methods",
        help="comma-separated, from: "
        + ", ".join(list(baselines.CLASSICAL) + ["nsn2n"] + list(deep_baselines.DEEP))
        + " and nsn2n variant names",
    )
    p.add_argument(
        "--nsn2n-variant",
        action="append",
        default=[],
        type=parse_variant,
        metavar="NAME=JSON",
        help='an extra NSN2N row, e.g. nsn2n_wide=\'{"network": {"width": 48}}\' ("preset" allowed); '
        "the name 'nsn2n' replaces the default",
    )
    p.add_argument("--out", help="output folder (default benchmarks/results/quick or .../full)")
    p.add_argument("--threads", type=int, default=1, help="torch / SimpleITK threads (default 1)")
    p.add_argument("--jobs", type=int, default=None, help="processes for the CT noise simulation (default: CPUs)")
    p.add_argument("--seed", type=int, default=0, help="noise seed (default 0)")
    p.add_argument("--no-cache", action="store_true", help="recompute every result (noise stays cached)")
    p.add_argument("--cached-only", action="store_true", help="report cached results only; compute nothing")
    p.add_argument("--no-figures", action="store_true", help="tables and JSON only")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    quick = not args.full
    names = args.datasets.split(",") if args.datasets else list(QUICK_DATASETS if quick else FULL_DATASETS)
    variants = dict(args.nsn2n_variant)
    if quick and "nsn2n" not in variants:
        variants["nsn2n"] = QUICK_NSN2N
    methods = args.methods.split(",") if args.methods else list(QUICK_METHODS if quick else FULL_METHODS)
    methods += [v for v in variants if v not in methods and v != "nsn2n"]
    out = Path(args.out) if args.out else Path(__file__).resolve().parent / "results" / ("quick" if quick else "full")
    for n in names:
        if n not in datasets.DATASETS:
            print(f"error: unknown dataset {n!r}", file=sys.stderr)
            return 2
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    try:
        import torch

        torch.set_num_threads(args.threads)
    except ImportError:
        pass
    import SimpleITK as sitk

    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(args.threads)
    sitk.ProcessObject.SetGlobalWarningDisplay(False)  # ITK warns that 0.0625 exceeds spacing/16; Slicer too
    cache = ResultCache(noise.CACHE_DIR / "results", enabled=not args.no_cache, only=args.cached_only)
    runs = {}
    for n in names:
        log(f"building {n} ({'quick' if quick else 'full'})")
        ds = datasets.build(n, quick=quick, seed=args.seed, n_jobs=args.jobs)
        ms = [m for m in methods if not (m == "bm4d_oracle" and ds.noise_psd is None and ds.noise_sigma is None)]
        if not ds.has_clean:
            ms = [m for m in ms if m != "supervised"]
        runs[n] = (ds, run_dataset(ds, ms, variants, args, cache))
    argv_text = "python -m benchmarks.run " + " ".join(
        shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:])
    )
    write_outputs(out, runs, argv_text, quick, variants, figures=not args.no_figures)
    log(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
