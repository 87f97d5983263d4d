"""The evaluation protocol (issue 11): a tuning set and a reporting set, three seeds, and every baseline twice.

Choices of method or default are made on the tuning set only; headline figures come from the reporting set. A
case is a dataset name of :mod:`benchmarks.datasets` (a volume and a noise model); each set runs its cases at
three noise seeds, and NSN2N's training seed follows the noise seed, so that the spread covers both.

Baselines appear as a user runs them (noise level estimated from the volume, or the tool's default) and at their
best swept parameter: the parameter grid of :data:`SWEEPS` is tried against the clean reference at the set's
first seed, and the best value is then applied unchanged at the other two seeds (what a patient user who tuned
once by eye would reach). Every run writes one JSON file under ``benchmarks/results/protocol/<case>/seed<N>/``,
which is committed; ``table`` rebuilds the Markdown summary from those files alone. A run is skipped when its
file exists with the same parameters (resumable), unless ``--force``.

Usage, from the repository root::

    python -m benchmarks.protocol run --set reporting --methods noisy,nlm_true,nsn2n --cases ctbrain_ld_1e5
    python -m benchmarks.protocol table
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import baselines, datasets, deep_baselines, metrics, neighbour_fusion
from .report import portable_command

RESULTS_DIR = Path(__file__).resolve().parent / "results" / "protocol"
"""Committed per-run result files and the summary tables."""
PROTOCOL_VERSION = 1
"""Bump when the scoring or a method's code changes: every stored result is then recomputed."""

TUNING_CASES = (
    "cttune_ld_1e5",
    "cttune_ld_2e4",
    "mnitune_rician5",
    "mnitune_rician10",
    "cttune_inplane30",
    "cttune_inplane30narrow",
    "cttune_gauss30",
    "cttune_inplane30mid",
    "cttunebrain_ld_1e5",
    "cttunebrain_ld_2e4",
)
REPORTING_CASES = (
    "ct_ld_2.5e5",
    "ct_ld_1e5",
    "ct_ld_2e4",
    "ctbrain_ld_2.5e5",
    "ctbrain_ld_1e5",
    "ctbrain_ld_2e4",
    "ct_gauss30",
    "ct_inplane30",
    "colin_rician5",
    "colin_rician10",
    "colin_gauss5",
    "mri_rician5",
    "mri_rician10",
)
SETS = {
    "tuning": {"cases": TUNING_CASES, "seeds": (100, 101, 102)},
    "reporting": {"cases": REPORTING_CASES, "seeds": (1, 2, 3)},
}
"""The split: tuning (choices are made here) and reporting (headline figures), each with its own noise seeds.
The CT tuning slices 0-27 lie inside the reporting slab 0-47 (only 48 CT slices may be used), at other seeds; the
brain crop (slices 28-47), Colin27 and the MNI152 reporting slab are disjoint from every tuning volume."""

DIFFUSION_USER = {"conductance": 1.0, "iterations": 5}
"""Slicer's Gradient Anisotropic Diffusion defaults (time step 0.0625)."""
SWEEPS = {
    "diffusion_swept": {"conductance": (0.25, 0.5, 1.0, 2.0, 4.0), "iterations": (2, 5, 10, 20, 40)},
    "nlm_swept": {"h_factor": (0.5, 0.65, 0.8, 1.0, 1.25)},
    "tv_swept": {"weight_factor": (0.4, 0.55, 0.7, 0.85, 1.0, 1.3, 1.7)},
    "bm4d_swept": {"sigma_factor": (1.0, 1.2, 1.45, 1.7)},
}
"""Parameter grids of the swept baselines; factors multiply the true noise standard deviation."""
ORDER = (
    "noisy",
    "diffusion_user",
    "diffusion_swept",
    "nlm_est",
    "nlm_true",
    "nlm_swept",
    "tv_est",
    "tv_swept",
    "bm4d_est",
    "bm4d_swept",
    "bm4d_spectrum",
    "nsn2n",
    "nsn2n_nowiener",
    "nsn2n_slice",
    "nsn2n_train3",
    "nsn2n_ens2",
    "nsn2n_it3000",
    "nsn2n_nbfuse",
    "nsn2n_nbfuse_all",
    "nsn2n_fusion",
    "nsn2n_best",
    "nsn2n_best_wiener",
    "nsn2n_filters",
    "nsn2n_fast",
    "nsn2n_fast_nowiener",
    "nsn2n_fast_matched",
    "supervised",
    "supervised_wiener",
    "supervised_w32",
)
LABELS = {
    "noisy": "noisy input",
    "diffusion_user": "gradient diffusion, Slicer defaults",
    "diffusion_swept": "gradient diffusion, swept",
    "nlm_est": "NLM (2D), estimated noise",
    "nlm_true": "NLM (2D), true noise",
    "nlm_swept": "NLM (2D), swept h",
    "tv_est": "TV (3D), estimated noise",
    "tv_swept": "TV (3D), swept weight",
    "bm4d_est": "BM4D, estimated noise",
    "bm4d_swept": "BM4D, swept sigma",
    "bm4d_spectrum": "BM4D given the noise's power spectrum (an oracle: the simulator's, or the simulated noise's own)",
    "nsn2n": "**NSN2N default**",
    "nsn2n_nowiener": "NSN2N default without the Wiener stage (`inference.wiener = 'off'`; the previous default)",
    "nsn2n_slice": "NSN2N default, slice axis only (`inference.axes = 'slice'`, no Wiener stage)",
    "nsn2n_train3": "NSN2N default trained on neighbour pairs along K, J and I in turn (ablation, not adopted)",
    "nsn2n_ens2": "NSN2N default, two networks (training seeds s and s + 1000) averaged (ablation)",
    "nsn2n_it3000": "NSN2N default with 3000 iterations (the same training time as two networks; ablation)",
    "nsn2n_nbfuse": "NSN2N previous default blended with a network that predicts each slice from its four neighbours "
    "(the ablation behind `inference.neighbour_fusion`)",
    "nsn2n_nbfuse_all": "the same blend without its gate (also on anisotropic CT; ablation)",
    "nsn2n_fusion": "NSN2N default with the engine's neighbour network (`inference.neighbour_fusion = 'auto'`)",
    "nsn2n_best": "NSN2N `best` (before the Wiener stage)",
    "nsn2n_fast": "NSN2N `fast`",
    "nsn2n_fast_nowiener": "NSN2N `fast` without the Wiener stage (the same training)",
    "nsn2n_fast_matched": "NSN2N `fast` with block matching instead of its DCT filter (the same training)",
    "nsn2n_best_wiener": "NSN2N `best` with the Wiener stage (its network alone: `nsn2n_best`)",
    "nsn2n_filters": "NSN2N default with the sliding-window DCT filter (`inference.wiener = 'filters'`, no block "
    "matching; the same training)",
    "nsn2n_twofilters": "NSN2N default with two DCT filters (8- and 4-voxel blocks; won on the tuning set, lost on the "
    "reporting set's MRI; a stored ablation, not a row the runner computes)",
    "supervised": "supervised ceiling (default network, clean target)",
    "supervised_wiener": "supervised ceiling with the default's Wiener stage (its network: `supervised`)",
    "supervised_w32": "supervised ceiling, width 32 (`best`'s network), default's iterations",
}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def true_sigma(ds: datasets.Dataset) -> float:
    """The true noise standard deviation in volume units: the simulator's sigma where the noise is white or
    Rician, else the standard deviation of noisy - clean inside the head mask (low-dose CT)."""
    if ds.noise_sigma is not None:
        return float(ds.noise_sigma)
    return float(ds.meta["noise_std_in_mask"])


# ---------------------------------------------------------------------------------------------------------------
# Methods: fn(ds, seed, params) -> (volume, info). ``params`` holds a swept method's chosen values.


def _diffusion(noisy: np.ndarray, spacing, conductance: float, iterations: int) -> np.ndarray:
    import SimpleITK as sitk

    image = baselines._to_sitk(noisy, spacing)
    f = sitk.GradientAnisotropicDiffusionImageFilter()
    f.SetTimeStep(baselines.DIFFUSION_TIME_STEP)
    f.SetConductanceParameter(float(conductance))
    f.SetNumberOfIterations(int(iterations))
    return sitk.GetArrayFromImage(f.Execute(image)).astype(np.float32)


def _nlm(noisy: np.ndarray, sigma: float, h_factor: float) -> np.ndarray:
    return baselines._nlm(noisy, sigma, False, h_factor)


def _tv(noisy: np.ndarray, weight: float) -> np.ndarray:
    from skimage.restoration import denoise_tv_chambolle

    return denoise_tv_chambolle(noisy.astype(np.float64), weight=weight).astype(np.float32)


def _bm4d(noisy: np.ndarray, sigma: float | np.ndarray, pilot: np.ndarray | None = None) -> np.ndarray:
    """BM4D with noise std ``sigma`` (or the noise's power spectrum, shaped as ``noisy``, in bm4d's convention): both
    stages, or with ``pilot`` its Wiener stage alone with that pilot."""
    bm4d = baselines._import_bm4d()
    stage = {} if pilot is None else {"stage_arg": pilot.astype(np.float64)}
    return np.asarray(bm4d.bm4d(noisy.astype(np.float64), sigma, **stage), dtype=np.float32)


def _run_method(name: str, ds: datasets.Dataset, seed: int, params: dict) -> tuple[np.ndarray, dict]:
    """Run one method with explicit parameters (a swept method's chosen values in ``params``)."""
    sig = true_sigma(ds)
    if name == "noisy":
        return ds.noisy.copy(), {}
    if name in ("diffusion_user", "diffusion_swept"):
        p = DIFFUSION_USER if name == "diffusion_user" else params
        return _diffusion(ds.noisy, ds.spacing, p["conductance"], p["iterations"]), dict(p)
    if name == "nlm_est":
        est = baselines.estimated_sigma(ds.noisy)
        return _nlm(ds.noisy, est, baselines.NLM_H_FACTOR), {"sigma": est, "h_factor": baselines.NLM_H_FACTOR}
    if name == "nlm_true":
        return _nlm(ds.noisy, sig, baselines.NLM_H_FACTOR), {"sigma": sig, "h_factor": baselines.NLM_H_FACTOR}
    if name == "nlm_swept":
        return _nlm(ds.noisy, sig, params["h_factor"]), {"sigma": sig, **params}
    if name == "tv_est":
        est = baselines.estimated_sigma(ds.noisy)
        return _tv(ds.noisy, baselines.TV_WEIGHT_FACTOR * est), {"sigma": est, "weight_factor": 1.0}
    if name == "tv_swept":
        return _tv(ds.noisy, params["weight_factor"] * sig), {"sigma": sig, **params}
    if name == "bm4d_est":
        est = baselines.estimated_sigma(ds.noisy)
        return _bm4d(ds.noisy, est), {"sigma": est, "sigma_source": "estimate_sigma"}
    if name == "bm4d_swept":
        return _bm4d(ds.noisy, params["sigma_factor"] * sig), {"true_sigma": sig, **params}
    if name == "bm4d_spectrum":
        if ds.noise_psd is None:
            raise ValueError(f"{ds.name}: bm4d_spectrum needs a noise of known spectrum (simulated CT noise)")
        out = _bm4d(ds.noisy, ds.noise_psd.astype(np.float64))  # bm4d takes a spectrum where it takes a sigma
        return out, {"true_sigma": sig, "sigma_source": "the noise's true spectrum"}
    if name == "nsn2n_train3":
        return _nsn2n_train3(ds, seed)
    if name == "nsn2n_ens2":
        return _nsn2n_ens2(ds, seed)
    if name in ("nsn2n_nbfuse", "nsn2n_nbfuse_all"):
        return neighbour_fusion.run(
            ds,
            seed,
            lambda d, s: _nsn2n(d, s, "nsn2n_nofusion"),
            lambda s: nsn2n_config(name, s),
            lambda v: metrics.psnr(ds.clean, v, ds.mask, ds.data_range),
            gate=name == "nsn2n_nbfuse",
        )
    if name in NSN2N_ROWS:
        return _nsn2n(ds, seed, name)
    if name in ("supervised", "supervised_w32"):
        return _supervised(ds, seed, width=32 if name == "supervised_w32" else None)
    if name == "supervised_wiener":
        return _supervised_wiener(ds, seed)
    raise KeyError(f"unknown method {name!r}; known: {', '.join(ORDER)}")


NO_WIENER = {"wiener": "off"}
NSN2N_ROWS = {
    "nsn2n": ("default", {}),
    "nsn2n_nowiener": ("default", {"inference": NO_WIENER}),
    "nsn2n_slice": ("default", {"inference": {"axes": "slice", **NO_WIENER}}),
    "nsn2n_train3": ("default", {"inference": NO_WIENER}),
    "nsn2n_ens2": ("default", {"inference": NO_WIENER}),
    "nsn2n_it3000": ("default", {"training": {"iterations": 3000}, "inference": NO_WIENER}),
    "nsn2n_nbfuse": ("default", {"inference": {"neighbour_fusion": "off", **NO_WIENER}}),
    "nsn2n_nbfuse_all": ("default", {"inference": {"neighbour_fusion": "off", **NO_WIENER}}),
    "nsn2n_nofusion": ("default", {"inference": {"neighbour_fusion": "off", **NO_WIENER}}),
    "nsn2n_fusion": ("default", {"inference": {"neighbour_fusion": "auto", **NO_WIENER}}),
    "nsn2n_best": ("best", {"inference": NO_WIENER}),
    "nsn2n_fast": ("fast", {}),
    "nsn2n_fast_nowiener": ("fast", {"inference": NO_WIENER}),
    "nsn2n_best_wiener": ("best", {}),
    "nsn2n_filters": ("default", {"inference": {"wiener": "filters"}}),
    "nsn2n_fast_matched": ("fast", {"inference": {"wiener": "matched"}}),
}
"""NSN2N rows: (preset, configuration overrides). The rows measured before the Wiener stage existed say
``wiener = 'off'``, which is what they ran."""
NETWORK_ALONE = {
    "nsn2n": "nsn2n_nowiener",
    "nsn2n_fast": "nsn2n_fast_nowiener",
    "nsn2n_best_wiener": "nsn2n_best",
    "nsn2n_filters": "nsn2n_nowiener",
    "nsn2n_fast_matched": "nsn2n_fast_nowiener",
}
"""For each row with the Wiener stage, the row its network's output alone is stored as (the same training)."""
NETWORK_OF = {"nsn2n_filters": "nsn2n", "nsn2n_fast_matched": "nsn2n_fast"}
"""Rows whose network is another row's (the same preset and training): ``--reuse-network`` reads that row's cached
network output."""
REUSE_ROOT: Path | None = None
"""Set by ``run --reuse-network``: rows with the Wiener stage reuse the cached network output of their training
where it is the stored network-alone result's (checked against the result file under this root) instead of
training again."""


def nsn2n_config(row: str, seed: int, threads: int = 1):
    """The configuration of an NSN2N row of :data:`NSN2N_ROWS` (or a preset name) on the CPU, training seed = noise
    seed."""
    from NSN2NDenoiseLib import make_config

    preset, overrides = NSN2N_ROWS.get(row, (row, {}))
    return make_config(preset, **overrides).replace(device="cpu", training={"seed": seed, "threads": threads})


def _slice_only(ds: datasets.Dataset, cfg, state: dict, axis: int, out: np.ndarray | None = None) -> np.ndarray:
    """The trained network of ``state`` along ``axis`` alone, with the run's own normalisation, precision and
    test-time augmentation: for the slice axis, exactly the first of the default's multi-axis passes, i.e. the
    output a run with ``inference.axes = 'slice'`` and the same seed gives when it trains on slice-axis pairs only
    (same training, same draws). With ``out``, the prediction is added to it in place."""
    import torch

    from NSN2NDenoiseLib.inference import predict_into, use_bf16
    from NSN2NDenoiseLib.normalization import NormalizedSlices, fit_intensity_map
    from NSN2NDenoiseLib.training import build_network

    net = build_network(cfg)
    net.load_state_dict(state)
    net.eval()
    accumulate = out is not None
    out = np.empty(ds.noisy.shape, dtype=np.float32) if out is None else out
    device = torch.device("cpu")
    source = NormalizedSlices(ds.noisy, axis, fit_intensity_map(ds.noisy))
    predict_into(
        net, source, np.moveaxis(out, axis, 0), cfg.inference, device, use_bf16(device, True), accumulate=accumulate
    )
    return out


def _nsn2n_train3(ds: datasets.Dataset, seed: int) -> tuple[np.ndarray, dict]:
    """Ablation: the default's configuration, but the network trained on neighbour-slice pairs along K, J and I in
    turn (``multi_axis.train_all_axes``: the same iterations and batch, the n-th axis's draws seeded seed + n), then
    denoised like the default (its axes, bf16 where the CPU has it, its TTA) and averaged."""
    import torch

    from NSN2NDenoiseLib.inference import prediction_axes
    from NSN2NDenoiseLib.noise_estimates import estimate_inplane_lag1
    from NSN2NDenoiseLib.normalization import NormalizedSlices, fit_intensity_map

    from . import multi_axis

    cfg = nsn2n_config("nsn2n_train3", seed)
    t0 = time.perf_counter()
    state = multi_axis.train_all_axes(ds, cfg)
    train_s = time.perf_counter() - t0
    source = NormalizedSlices(ds.noisy, 0, fit_intensity_map(ds.noisy))
    lag1 = estimate_inplane_lag1(source, torch.device("cpu"))
    axes, reason = prediction_axes(tuple(ds.spacing), 0, cfg.inference.axes, lag1)
    out = _slice_only(ds, cfg, state, axes[0])
    for a in axes[1:]:
        _slice_only(ds, cfg, state, a, out=out)
    out /= np.float32(len(axes))
    info = {
        "slice_axis": 0,
        "training_axes": ["K", "J", "I"],
        "prediction_axes": ["KJI"[a] for a in axes],
        "prediction_axes_reason": reason,
        "inplane_noise_lag1": [float(v) for v in lag1],
        "phase_seconds": {"weights_and_training": train_s},
        "config": cfg.to_dict(),
    }
    return out, info


ENSEMBLE_SEED_OFFSET = 1000
"""The second network of ``nsn2n_ens2`` trains with seed + this (its draws and initial weights differ)."""


def _nsn2n_ens2(ds: datasets.Dataset, seed: int) -> tuple[np.ndarray, dict]:
    """Ablation: the mean of two default networks trained on the same volume with training seeds ``seed`` and
    ``seed + ENSEMBLE_SEED_OFFSET``. The first is the ``nsn2n`` row's own run, stored with it (and its slice-only
    row where it has one), so that the pair is compared on the same training."""
    from NSN2NDenoiseLib import denoise

    first, info = _nsn2n(ds, seed, "nsn2n")
    extras = info.pop("_extra", {})
    cfg_b = nsn2n_config("nsn2n", seed).replace(training={"seed": seed + ENSEMBLE_SEED_OFFSET})
    second, report_b = denoise(ds.noisy, spacing=ds.spacing, config=cfg_b)
    out = 0.5 * (first + second)
    seconds_a = sum(v for k, v in info["phase_seconds"].items())
    note = {
        "derived_from": "the first member of this seed's nsn2n_ens2 run (training seed = seed)",
        "seconds": seconds_a,
    }
    extras["nsn2n"] = (first, {**info, **note})
    only_first = {"members": [{"training_seed": seed}], "second_phase_seconds": None}  # masks the pair's keys
    extras = {name: (volume, {**extra_note, **only_first}) for name, (volume, extra_note) in extras.items()}
    ens_info = {
        "members": [{"training_seed": seed}, {"training_seed": seed + ENSEMBLE_SEED_OFFSET}],
        "prediction_axes": info.get("prediction_axes"),
        "config": info.get("config"),
        "second_phase_seconds": report_b.phase_seconds,
        "_extra": extras,
    }
    return out, ens_info


def _nsn2n(ds: datasets.Dataset, seed: int, row: str) -> tuple[np.ndarray, dict]:
    """An NSN2N row through the engine. For the default (``inference.wiener = 'on'``) the engine runs with the
    Wiener stage off and the stage is then applied by the engine's own ``wiener.apply_wiener``, exactly as
    ``denoise`` does (Testing/test_wiener.py checks that the two agree to the bit), so that the same training
    also gives the network's output alone (stored as ``nsn2n_nowiener``) and, where three axes were used, its
    slice-axis pass (``nsn2n_slice``)."""
    from NSN2NDenoiseLib import denoise

    cfg = nsn2n_config(row, seed)
    wiener = cfg.inference.wiener != "off"
    run_cfg = cfg.replace(inference=NO_WIENER) if wiener else cfg
    reused = _reused_network(ds, seed, row) if wiener and REUSE_ROOT is not None else None
    if reused is not None:
        return _wiener_on_reused(ds, cfg, *reused)
    out, report, state = denoise(ds.noisy, spacing=ds.spacing, config=run_cfg, return_model=True)
    r = report.to_dict()
    keep = (
        "slice_axis",
        "phase_seconds",
        "device",
        "matched_fraction",
        "noise_sigma",
        "interslice_noise_correlation",
        "inplane_noise_lag1",
        "prediction_axes",
        "prediction_axes_reason",
        "training_recoveries",
        "wiener",
    )
    info = {k: r[k] for k in keep if k in r}
    info["residual_check"] = (r.get("residual_check") or {}).get("score")
    info["warnings"] = r.get("warnings", [])
    info["config"] = r.get("config")
    extras = {}
    if wiener:
        network_only = out.copy()
        _cache_network_output(ds, seed, row, network_only, {k: v for k, v in info.items() if k != "config"})
        info["wiener"], seconds, info["residual_check"] = _wiener_stage(ds, out, r, cfg.inference.wiener)
        info["phase_seconds"] = {**info["phase_seconds"], "wiener": seconds}
        info["config"] = cfg.to_dict()
        note = {
            "derived_from": "the nsn2n run of this seed (same training; the network's output before the Wiener stage)",
            "seconds": sum(v for k, v in r["phase_seconds"].items() if k != "residual_check"),
            "wiener": {"applied": False, "reason": "inference.wiener = 'off'"},
            "residual_check": (r.get("residual_check") or {}).get("score"),
            "config": run_cfg.to_dict(),
        }
        if row in NETWORK_ALONE:
            extras[NETWORK_ALONE[row]] = (network_only, note)
    if row == "nsn2n" and len(r["prediction_axes"]) > 1:
        # The slice-only row of the same training: stored as nsn2n_slice by run_case (no second training).
        t0 = time.perf_counter()
        cfg_slice = nsn2n_config("nsn2n_slice", seed)
        extra = _slice_only(ds, cfg_slice, state, r["slice_axis"])
        seconds = r["phase_seconds"]["weights"] + r["phase_seconds"]["training"] + time.perf_counter() - t0
        note = {
            "derived_from": "the nsn2n run of this seed (same training; slice-axis pass only, no Wiener stage)",
            "seconds": seconds,
            "prediction_axes": [r["prediction_axes"][0]],
            "prediction_axes_reason": "inference.axes = 'slice'",
            "config": cfg_slice.to_dict(),
        }
        extras["nsn2n_slice"] = (extra, note)
    if extras:
        info["_extra"] = extras
    return out, info


def _reused_network(ds: datasets.Dataset, seed: int, row: str) -> tuple[np.ndarray, dict, dict] | None:
    """The cached network output of ``row``'s training, its info and the stored network-alone result, if that
    result exists under :data:`REUSE_ROOT` with the current parameters and the cache scores exactly as it does."""
    from . import wiener_grid

    path = wiener_grid.cache_path(ds.name, seed, NETWORK_OF.get(row, row))
    stored = _load(result_path(ds.name, seed, NETWORK_ALONE[row], REUSE_ROOT))
    if not (path.is_file() and path.with_suffix(".json").is_file() and stored):
        return None
    if stored.get("params") != run_params(NETWORK_ALONE[row], {}):
        return None
    out = np.load(path)
    if abs(_score(ds, out)["psnr"] - stored["quality"]["psnr"]) > 1e-9:
        log(f"{ds.name} seed {seed}: the cached network output of {row} is not the stored one: training again")
        return None
    return out, json.loads(path.with_suffix(".json").read_text()), stored


def _wiener_stage(ds: datasets.Dataset, out: np.ndarray, run: dict, kind: str) -> tuple[dict, float, float]:
    """The engine's Wiener stage ``kind`` on ``out`` (the network's output, changed in place) with the slice axis and
    in-plane noise correlation of ``run`` (a run's report or its cached info), as ``denoise`` runs it, then the
    method-noise check: the stage's report entry, its seconds and the check's score."""
    from NSN2NDenoiseLib.residual_check import residual_structure
    from NSN2NDenoiseLib.wiener import apply_wiener

    axis = run["slice_axis"]
    noisy, denoised = np.moveaxis(ds.noisy, axis, 0), np.moveaxis(out, axis, 0)
    t0 = time.perf_counter()
    entry = apply_wiener(noisy, denoised, tuple(run["inplane_noise_lag1"]), kind)
    seconds = time.perf_counter() - t0
    return entry, seconds, residual_structure(noisy, denoised).score


def _wiener_on_reused(ds, cfg, out: np.ndarray, cached: dict, stored: dict) -> tuple[np.ndarray, dict]:
    """A row with the Wiener stage from its training's cached network output: the stage and the method-noise check
    as in :func:`_nsn2n`; the time is the stored training's plus the stage's."""
    info = {**cached}
    info["wiener"], seconds, info["residual_check"] = _wiener_stage(ds, out, cached, cfg.inference.wiener)
    info["phase_seconds"] = {**cached["phase_seconds"], "wiener": seconds}
    info["config"] = cfg.to_dict()
    info["network_reused"] = {
        "network_alone": stored["method"],
        "network_alone_when": stored["when"],
        "network_alone_psnr": stored["quality"]["psnr"],
        "note": "the network's output of this seed's training, read from the cache and checked to score exactly as "
        "the stored network-alone result; only the Wiener stage ran",
    }
    info["_seconds"] = stored["cost"]["seconds"] + seconds
    return out, info


def _cache_network_output(ds: datasets.Dataset, seed: int, row: str, out: np.ndarray, info: dict) -> None:
    """Keep the network's output of a run of ``row`` (before the Wiener stage) in the git-ignored cache of
    :mod:`benchmarks.wiener_grid`, which can then score other Wiener settings on it without training again. Each
    row has its own file, so that another preset's run never stands in for the default's."""
    from . import wiener_grid

    wiener_grid.CACHE.mkdir(parents=True, exist_ok=True)
    path = wiener_grid.cache_path(ds.name, seed, row)
    np.save(path, out)
    path.with_suffix(".json").write_text(json.dumps(info, default=float))


def _supervised(ds: datasets.Dataset, seed: int, width: int | None = None) -> tuple[np.ndarray, dict]:
    """The supervised ceiling: the default's network (depth, width), patch, batch, learning rate and iteration
    count, trained noisy -> clean on this volume; then the default's own inference (its test-time augmentation
    and the axes ``inference.axes`` picks for this volume), so that only the training target differs."""
    import torch

    from NSN2NDenoiseLib.inference import predict_into, prediction_axes
    from NSN2NDenoiseLib.noise_estimates import estimate_inplane_lag1
    from NSN2NDenoiseLib.normalization import IntensityMap, NormalizedSlices

    cfg = nsn2n_config("nsn2n", seed)
    if width is not None:
        cfg = cfg.replace(network={"width": width})
    d = cfg.to_dict()
    tcfg = {**deep_baselines.DEFAULT_TRAINING, **{k: d["training"][k] for k in deep_baselines.DEFAULT_TRAINING}}
    ctx = baselines.Context(spacing=ds.spacing, modality=ds.modality, score=lambda est: 0.0, network=d["network"])
    torch.manual_seed(seed)
    norm, low, scale = deep_baselines._normalise(ds.noisy)
    clean = torch.from_numpy(((ds.clean - low) / scale).astype(np.float32))
    net = deep_baselines._network(ctx)
    step_loss = deep_baselines._supervised_loss(net, torch.from_numpy(norm), clean, tcfg)
    facts = deep_baselines._fit(net, step_loss, cfg.training.iterations, None, tcfg)
    imap = IntensityMap(offset=low, scale=scale)
    lag1 = estimate_inplane_lag1(NormalizedSlices(ds.noisy, 0, imap), torch.device("cpu"))
    axes, reason = prediction_axes(ds.spacing, 0, cfg.inference.axes, lag1)
    out = np.zeros(ds.noisy.shape, dtype=np.float32)
    for n, a in enumerate(axes):
        view = np.moveaxis(out, a, 0)
        predict_into(
            net, NormalizedSlices(ds.noisy, a, imap), view, cfg.inference, torch.device("cpu"), accumulate=n > 0
        )
    out /= np.float32(len(axes))
    info = {k: v for k, v in facts.items() if k != "loss_curve"}
    info.update(
        network=d["network"],
        tta=cfg.inference.tta,
        prediction_axes=["KJI"[a] for a in axes],
        axes_reason=reason,
        slice_axis=0,
        inplane_noise_lag1=list(lag1),
    )
    return out, info


def _supervised_wiener(ds: datasets.Dataset, seed: int) -> tuple[np.ndarray, dict]:
    """The supervised ceiling (:func:`_supervised`) followed by the default's Wiener stage, its noise read from the
    removed residual as the engine reads it: what the default's whole pipeline would reach with the same network
    trained on the clean target. The network's own PSNR is kept in the info (``network_alone_psnr``)."""
    out, info = _supervised(ds, seed)
    info["network_alone_psnr"] = metrics.psnr(ds.clean, out, ds.mask, ds.data_range)
    kind = nsn2n_config("nsn2n", seed).inference.wiener
    info["wiener"], info["wiener_seconds"], info["residual_check"] = _wiener_stage(ds, out, info, kind)
    return out, info


# ---------------------------------------------------------------------------------------------------------------
# Storage


def result_path(case: str, seed: int, method: str, root: Path = RESULTS_DIR) -> Path:
    return root / case / f"seed{seed}" / f"{method}.json"


def sweep_path(case: str, method: str, root: Path = RESULTS_DIR) -> Path:
    return root / case / f"{method}.sweep.json"


def run_params(method: str, chosen: dict) -> dict:
    """What decides a stored result: the protocol version, the method's chosen parameters and, for NSN2N, the
    whole resolved configuration (so that a change of the engine's defaults reruns it)."""
    params = {"v": PROTOCOL_VERSION, **chosen}
    if method in NSN2N_ROWS or method.startswith("supervised"):
        params["config"] = nsn2n_config(method if method in NSN2N_ROWS else "default", 0).to_dict()
    wiener_rows = (*NSN2N_ROWS, "supervised_wiener")
    kind = params.get("config", {}).get("inference", {}).get("wiener", "off") if method in wiener_rows else "off"
    if kind == "filters":
        from NSN2NDenoiseLib.wiener import PASSES

        params["wiener_filters"] = [dataclasses.asdict(p) for p in PASSES]  # the stage's constants
    elif kind == "matched":
        from NSN2NDenoiseLib import block_matching
        from NSN2NDenoiseLib.wiener import MATCHED_MAX_LAG1

        # the passes of each noise class (the stage runs one class's, by the noise's in-plane correlation)
        params["wiener_filters"] = {c: [dataclasses.asdict(f) for f in fs] for c, fs in block_matching.PASSES.items()}
        params["matched_max_lag1"] = MATCHED_MAX_LAG1  # above it the DCT filter runs instead
        if any(block_matching.NETWORK_FREE_SHARE.values()):  # the network-free estimate averaged in, by class
            params["network_free"] = {
                "share": dict(block_matching.NETWORK_FREE_SHARE),
                "hard_threshold": block_matching.HARD_THRESHOLD,
            }
            if block_matching.NETWORK_FREE != (block_matching.MATCHED, block_matching.MATCHED):
                # its filters, once they were no longer the first estimate's (keyed as it was before)
                params["network_free"]["filters"] = [dataclasses.asdict(f) for f in block_matching.NETWORK_FREE]
    if method == "supervised_w32":
        params["config"]["network"]["width"] = 32
    if method in ("nsn2n_nbfuse", "nsn2n_nbfuse_all"):
        params["fusion_weight"] = neighbour_fusion.FUSION_WEIGHT
    return params


def _load(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def _score(ds: datasets.Dataset, out: np.ndarray) -> dict:
    if out.shape != ds.noisy.shape or not np.all(np.isfinite(out)):
        raise RuntimeError("the method returned a volume of the wrong shape or with non-finite values")
    return metrics.quality(ds.clean, out, ds.mask, ds.modality, ds.data_range)


def _grid(method: str) -> list[dict]:
    keys = list(SWEEPS[method])
    combos: list[dict] = [{}]
    for k in keys:
        combos = [{**c, k: v} for c in combos for v in SWEEPS[method][k]]
    return combos


def choose(case: str, method: str, ds: datasets.Dataset, seed: int, force: bool, root: Path) -> dict:
    """The swept method's parameters for ``case``: read from its sweep file, or swept now at ``seed`` (the set's
    first seed) against the clean reference and stored with every grid point's PSNR."""
    path = sweep_path(case, method, root)
    stored = _load(path)
    if stored and not force and stored.get("grid") == _grid(method) and stored.get("v") == PROTOCOL_VERSION:
        return stored["chosen"]
    rows = []
    for params in _grid(method):
        start = time.perf_counter()
        out, _ = _run_method(method, ds, seed, params)
        psnr = metrics.psnr(ds.clean, out, ds.mask, ds.data_range)
        rows.append({"params": params, "psnr": psnr, "seconds": time.perf_counter() - start})
        log(f"{case} seed {seed}: {method} {params}: {psnr:.2f} dB")
    best = max(rows, key=lambda r: r["psnr"])
    at_edge = [k for k, v in best["params"].items() if v in (SWEEPS[method][k][0], SWEEPS[method][k][-1])]
    record = {
        "v": PROTOCOL_VERSION,
        "case": case,
        "method": method,
        "seed": seed,
        "grid": _grid(method),
        "rows": rows,
        "chosen": best["params"],
        "chosen_at_grid_edge": at_edge,
        "command": _command(),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=1))
    return best["params"]


def _command() -> str:
    """The command line that is running, as ``python -m benchmarks.<module> <arguments>``: the module is the script
    that ``python -m`` ran where it is one of the benchmarks (an experiment that stores its entries through
    ``wiener_grid._record``), else this one."""
    script = Path(sys.argv[0])
    module = script.stem if script.parent.name == "benchmarks" and script.suffix == ".py" else "protocol"
    return portable_command(f"python -m benchmarks.{module} " + " ".join(shlex.quote(a) for a in sys.argv[1:]))


def _build(case: str, seed: int) -> datasets.Dataset:
    log(f"building {case} seed {seed}")
    return datasets.build(case, quick=False, seed=seed)


def run_case(
    case: str,
    seeds: tuple[int, ...],
    methods: list[str],
    force: bool = False,
    first_seed: int | None = None,
    root: Path = RESULTS_DIR,
) -> None:
    """Run ``methods`` on ``case`` at every seed, skipping stored results with the same parameters.

    Swept methods are swept at ``first_seed`` (the set's first seed; default ``seeds[0]``) before anything runs.
    """
    first = seeds[0] if first_seed is None else first_seed
    chosen_by_method = {}
    swept = [m for m in methods if m in SWEEPS]
    if swept:
        ds_first = _build(case, first)
        for method in swept:
            chosen_by_method[method] = choose(case, method, ds_first, first, force, root)
        del ds_first
    for seed in seeds:
        ds = None
        for method in methods:
            chosen = chosen_by_method.get(method, {})
            params = run_params(method, chosen)
            stored = _load(result_path(case, seed, method, root))
            if stored and not force and stored.get("params") == params:
                log(f"{case} seed {seed}: {method}: stored ({stored['quality']['psnr']:.2f} dB)")
                continue
            if ds is None:
                ds = _build(case, seed)
            with metrics.measure("cpu") as cost:
                out, info = _run_method(method, ds, seed, chosen)
            extras = info.pop("_extra", {})
            if "_seconds" in info:  # a reused training: its stored time plus what ran now
                cost = {**cost, "seconds": info.pop("_seconds")}
            _store(case, seed, method, params, ds, out, info, cost, root)
            for name, (volume, note) in extras.items():
                extra_cost = {**cost, "seconds": note["seconds"]}
                _store(case, seed, name, run_params(name, {}), ds, volume, {**info, **note}, extra_cost, root)


def _store(case, seed, method, params, ds, out, info, cost, root) -> None:
    """Score ``out`` and write its result file."""
    quality = _score(ds, out)
    record = {
        "case": case,
        "seed": seed,
        "method": method,
        "params": params,
        "quality": quality,
        "cost": {**cost, "device": info.get("device", "cpu")},
        "info": info,
        "crop": ds.crop,
        "shape_kji": list(ds.noisy.shape),
        "true_sigma": true_sigma(ds),
        "command": _command(),
        "when": time.strftime("%Y-%m-%d %H:%M"),
        "machine": metrics.machine(),
    }
    path = result_path(case, seed, method, root)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=1, default=float))
    log(f"{case} seed {seed}: {method}: {quality['psnr']:.2f} dB, {cost['seconds']:.0f} s")


# ---------------------------------------------------------------------------------------------------------------
# Tables


@dataclass(frozen=True)
class Summary:
    """Mean and sample standard deviation of one figure over the stored seeds (n of them)."""

    mean: float
    sd: float
    n: int

    def text(self, digits: int = 2) -> str:
        if self.n == 0:
            return "–"
        if self.n == 1:
            return f"{self.mean:.{digits}f} (1 seed)"
        text = f"{self.mean:.{digits}f} ± {self.sd:.{digits}f}"
        return text if self.n >= 3 else f"{text} ({self.n} seeds)"


def summarise(values: list[float]) -> Summary:
    """Mean ± sample sd (ddof 1) of ``values``; sd 0 for a single value."""
    if not values:
        return Summary(float("nan"), float("nan"), 0)
    arr = np.asarray(values, dtype=float)
    return Summary(float(arr.mean()), float(arr.std(ddof=1)) if arr.size > 1 else 0.0, int(arr.size))


def collect(case: str, seeds: tuple[int, ...], root: Path = RESULTS_DIR) -> dict[str, list[dict]]:
    """Stored results of ``case`` at ``seeds``, by method."""
    found: dict[str, list[dict]] = {}
    for seed in seeds:
        folder = root / case / f"seed{seed}"
        for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
            record = json.loads(path.read_text())
            found.setdefault(record["method"], []).append(record)
    return found


def _figure(records: list[dict], key: str) -> Summary:
    return summarise([r["quality"][key] for r in records if r["quality"].get(key) is not None])


def case_table(case: str, seeds: tuple[int, ...], root: Path = RESULTS_DIR) -> str:
    """One Markdown table: every stored method of ``case`` with PSNR, SSIM (and CT bone / soft RMSE) over seeds."""
    found = collect(case, seeds, root)
    ct = case.startswith("ct")
    head = "| method | PSNR dB | SSIM |" + (" bone RMSE HU | soft RMSE HU |" if ct else "") + " s per run | chosen |"
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for method in ORDER:
        records = found.get(method)
        if not records:
            continue
        chosen = ""
        sweep = _load(sweep_path(case, method, root))
        if sweep:
            chosen = ", ".join(f"{k} {v}" for k, v in sweep["chosen"].items())
            if sweep["chosen_at_grid_edge"]:
                chosen += " (grid edge)"
        row = f"| {LABELS[method]} | {_figure(records, 'psnr').text()} | {_figure(records, 'ssim').text(3)} |"
        if ct:
            row += f" {_figure(records, 'rmse_bone').text(1)} | {_figure(records, 'rmse_soft').text(1)} |"
        seconds = summarise([r["cost"]["seconds"] for r in records])
        row += f" {seconds.mean:.0f} | {chosen} |"
        lines.append(row)
    return "\n".join(lines)


def targets(case: str, seeds: tuple[int, ...], root: Path = RESULTS_DIR) -> dict | None:
    """Issue 11's targets on one case from the stored means, or None while a needed method is missing."""
    found = collect(case, seeds, root)
    need = ("nsn2n", "nlm_true", "bm4d_swept", "noisy")
    if any(m not in found for m in need):
        return None
    mean = {m: _figure(found[m], "psnr").mean for m in found}
    out = {
        "default_minus_nlm_true": mean["nsn2n"] - mean["nlm_true"],
        "default_minus_bm4d_swept": mean["nsn2n"] - mean["bm4d_swept"],
        "default_spread": _figure(found["nsn2n"], "psnr").sd,
        "seeds": _figure(found["nsn2n"], "psnr").n,
    }
    if "nsn2n_best_wiener" in found:  # the `best` preset as it runs (its Wiener stage included)
        out["best_minus_bm4d_swept"] = mean["nsn2n_best_wiener"] - mean["bm4d_swept"]
    if "supervised" in found:
        out["ceiling_minus_bm4d_swept"] = mean["supervised"] - mean["bm4d_swept"]
    if "supervised_wiener" in found:
        out["ceiling_wiener_minus_bm4d_swept"] = mean["supervised_wiener"] - mean["bm4d_swept"]
    if "bm4d_spectrum" in found:
        out["default_minus_bm4d_spectrum"] = mean["nsn2n"] - mean["bm4d_spectrum"]
    if "bm4d_est" in found:
        out["ssim_default_minus_bm4d_est"] = (
            _figure(found["nsn2n"], "ssim").mean - _figure(found["bm4d_est"], "ssim").mean
        )
    if case.startswith("ct"):
        out["bone_below_noisy"] = _figure(found["nsn2n"], "rmse_bone").mean < _figure(found["noisy"], "rmse_bone").mean
        out["soft_below_noisy"] = _figure(found["nsn2n"], "rmse_soft").mean < _figure(found["noisy"], "rmse_soft").mean
    return out


USER_RUN = ("diffusion_user", "nlm_est", "tv_est", "bm4d_est")
"""The baselines as a user runs them (estimated noise or the tool's defaults)."""


def headline_table(set_name: str = "reporting", root: Path = RESULTS_DIR) -> str:
    """One row per case of the set: PSNR (dB, mean ± sd over seeds) of the noisy input, the best baseline as users
    run it, NLM given the true noise, BM4D swept, NSN2N's default and the supervised ceiling."""
    spec = SETS[set_name]
    head = (
        "| case | noisy | best as users run it | NLM, true noise | BM4D, swept | **NSN2N default** "
        "| default − BM4D swept | BM4D given the noise's spectrum (oracle) "
        "| 'filters' (one DCT filter, no block matching) | network alone (no Wiener stage) "
        "| slice axis only, no Wiener stage | supervised ceiling | supervised ceiling + Wiener stage |"
    )
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for case in spec["cases"]:
        found = collect(case, spec["seeds"], root)
        if not found:
            continue
        cell = {m: _figure(r, "psnr") for m, r in found.items()}

        def text(m: str, cell: dict = cell) -> str:
            return cell[m].text() if m in cell else "not run"

        users = [m for m in USER_RUN if m in cell]
        best_user = max(users, key=lambda m: cell[m].mean) if users else None
        user_text = f"{cell[best_user].text()} ({LABELS[best_user].split(',')[0]})" if best_user else "not run"
        gap = (
            f"{cell['nsn2n'].mean - cell['bm4d_swept'].mean:+.2f}" if "nsn2n" in cell and "bm4d_swept" in cell else "–"
        )
        single_axis = "nsn2n" in found and all(
            len(r.get("info", {}).get("prediction_axes", [])) == 1 for r in found["nsn2n"]
        )
        slice_text = (
            "= network alone (one axis here)" if single_axis and "nsn2n_slice" not in cell else text("nsn2n_slice")
        )
        lines.append(
            f"| `{case}` | {text('noisy')} | {user_text} | {text('nlm_true')} | {text('bm4d_swept')} "
            f"| **{text('nsn2n')}** | {gap} | {text('bm4d_spectrum')} | {text('nsn2n_filters')} "
            f"| {text('nsn2n_nowiener')} | {slice_text} "
            f"| {text('supervised')} | {text('supervised_wiener')} |"
        )
    return "\n".join(lines)


def multi_axis_table(root: Path = RESULTS_DIR) -> str:
    """The multi-axis ablations (``benchmarks.multi_axis``): PSNR of the network along the slice axis alone, along
    each other axis, and the mean of the three, per case and training variant, over the stored seeds."""
    head = "| case | training pairs | seeds | K only | J only | I only | mean of K, J, I | mean − K only |"
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    variants = {"multi_axis": "along K (the default)", "multi_axis_training": "along K, J and I in turn"}
    for name, label in variants.items():
        by_case: dict[str, list[dict]] = {}
        for path in sorted(root.glob(f"*/seed*/{name}.json")):
            record = json.loads(path.read_text())
            by_case.setdefault(record["case"], []).append(record)
        for case, records in by_case.items():
            k_key = "k_only (default)" if "k_only (default)" in records[0]["psnr"] else "k_only"
            p = {k: summarise([r["psnr"][k] for r in records]) for k in records[0]["psnr"]}
            gain = summarise([r["psnr"]["mean_kji"] - r["psnr"][k_key] for r in records])
            seeds = ", ".join(str(r["seed"]) for r in records)
            lines.append(
                f"| `{case}` | {label} | {seeds} | {p[k_key].text()} | {p['j_only'].text()} | {p['i_only'].text()} "
                f"| {p['mean_kji'].text()} | {gain.text()} |"
            )
    return "\n".join(lines)


def training_axes_table(set_name: str = "reporting", root: Path = RESULTS_DIR) -> str:
    """Per case of the set where the training-along-three-axes ablation (``nsn2n_train3``) ran: PSNR (dB) of the
    slice axis alone, of the default (slice-axis pairs, denoised along K, J and I), of ``nsn2n_train3``, and its
    difference from the default, paired by seed."""
    head = (
        "| case | slice axis only | **default: K pairs, denoised along K, J, I** | K, J and I pairs, same axes "
        "| K, J, I pairs − default |"
    )
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    spec = SETS[set_name]
    for case in spec["cases"]:
        found = collect(case, spec["seeds"], root)
        if "nsn2n_train3" not in found or "nsn2n" not in found:
            continue
        by_seed = {m: {r["seed"]: r["quality"]["psnr"] for r in found[m]} for m in ("nsn2n", "nsn2n_train3")}
        seeds = sorted(set(by_seed["nsn2n"]) & set(by_seed["nsn2n_train3"]))
        diff = summarise([by_seed["nsn2n_train3"][s] - by_seed["nsn2n"][s] for s in seeds])

        def text(m: str, found: dict = found) -> str:
            return _figure(found[m], "psnr").text() if m in found else "not run"

        lines.append(
            f"| `{case}` | {text('nsn2n_slice')} | **{text('nsn2n')}** | {text('nsn2n_train3')} "
            f"| {diff.mean:+.2f} ± {diff.sd:.2f} ({diff.n} seeds) |"
        )
    return "\n".join(lines)


def _paired(found: dict, a: str, b: str) -> Summary | None:
    """Mean ± sd over the shared seeds of PSNR(a) - PSNR(b), or None when either is missing."""
    if a not in found or b not in found:
        return None
    by_seed = {m: {r["seed"]: r["quality"]["psnr"] for r in found[m]} for m in (a, b)}
    seeds = sorted(set(by_seed[a]) & set(by_seed[b]))
    return summarise([by_seed[a][s] - by_seed[b][s] for s in seeds]) if seeds else None


def wiener_table(set_name: str = "reporting", root: Path = RESULTS_DIR) -> str:
    """The Wiener stage on a set: PSNR (dB) of the network alone (``nsn2n_nowiener``), with the one DCT filter
    (``nsn2n_filters``), with the two filters of the tuning set's choice (``nsn2n_twofilters``, stored) and with
    the default's block matching (``nsn2n``), all from the same training, and the default's differences paired by
    seed."""
    spec = SETS[set_name]
    head = (
        "| case | seeds | network alone | 'filters': one DCT filter | two DCT filters (not kept) "
        "| **default: block matching** | default − network alone | default − 'filters' | two filters − 'filters' |"
    )
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for case in spec["cases"]:
        found = collect(case, spec["seeds"], root)
        diff = _paired(found, "nsn2n", "nsn2n_nowiener")
        if diff is None:
            continue
        seeds = sorted({r["seed"] for r in found["nsn2n_nowiener"]} & {r["seed"] for r in found["nsn2n"]})
        cells = []
        for m in ("nsn2n_nowiener", "nsn2n_filters", "nsn2n_twofilters", "nsn2n"):
            vals = [r["quality"]["psnr"] for r in found.get(m, []) if r["seed"] in seeds]
            cells.append(summarise(vals).text() if vals else "not run")
        pairs = []
        for a, b in (("nsn2n", "nsn2n_nowiener"), ("nsn2n", "nsn2n_filters"), ("nsn2n_twofilters", "nsn2n_filters")):
            d = _paired(found, a, b)
            pairs.append("–" if d is None else f"{d.mean:+.2f} ± {d.sd:.2f}")
        lines.append(
            f"| `{case}` | {', '.join(map(str, seeds))} | {cells[0]} | {cells[1]} | {cells[2]} | **{cells[3]}** "
            f"| {' | '.join(pairs)} |"
        )
    return "\n".join(lines)


BLEND_WEIGHTS = ("blend_0.2", "blend_0.3", "blend_0.4", "blend_0.5")


def neighbour_fusion_table(root: Path = RESULTS_DIR) -> str:
    """Per case where the neighbour-network ablation ran: the benchmark's row (``nsn2n_nbfuse``: g alone and each
    recorded blend weight against the default it was blended with, paired by seed) and, on the reporting set, the
    engine with the neighbour network (``nsn2n_fusion``, ``inference.neighbour_fusion = 'auto'``) against the
    default (``nsn2n``, which does not use it)."""
    head = (
        "| case | seeds | default without it | g alone − default | w 0.2 | **w 0.3** | w 0.4 | w 0.5 "
        "| engine, `neighbour_fusion = 'auto'` | engine − default |"
    )
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for set_name, spec in SETS.items():
        for case in spec["cases"]:
            found = collect(case, spec["seeds"], root)
            rows = [r for r in found.get("nsn2n_nbfuse", []) if r["info"]["neighbour_fusion"].get("psnr")]
            engine = _paired(found, "nsn2n_fusion", "nsn2n") if set_name == "reporting" else None
            if not rows and engine is None:
                continue
            cells = []
            for key in ("neighbour_network_alone", *BLEND_WEIGHTS):
                if rows:
                    d = summarise(
                        [
                            r["info"]["neighbour_fusion"]["psnr"][key]
                            - r["info"]["neighbour_fusion"]["psnr"]["default"]
                            for r in rows
                        ]
                    )
                    cells.append(f"{d.mean:+.2f} ± {d.sd:.2f}" if d.n > 1 else f"{d.mean:+.2f}")
                else:
                    cells.append("–")
            base = (
                summarise([r["info"]["neighbour_fusion"]["psnr"]["default"] for r in rows]).text()
                if rows
                else _figure(found["nsn2n"], "psnr").text()
            )
            seeds = ", ".join(str(r["seed"]) for r in rows) if rows else "–"
            new = _figure(found["nsn2n_fusion"], "psnr").text() if engine is not None else "–"
            diff = f"{engine.mean:+.2f} ± {engine.sd:.2f} ({engine.n} seeds)" if engine is not None else "–"
            lines.append(f"| `{case}` | {seeds} | {base} | " + " | ".join(cells) + f" | {new} | {diff} |")
    return "\n".join(lines)


def write_tables(root: Path = RESULTS_DIR) -> Path:
    """Rebuild ``<root>/SUMMARY.md`` from the stored result files alone."""
    from . import correlated_free, ht_pilot, network_free_grid, texture_gap, white_stage, wiener_grid

    parts = [
        "# Protocol results (issue 11)",
        "",
        "Made by `python -m benchmarks.protocol table` from the JSON files beside it; each figure is the mean ± "
        "sample sd over the seeds stored (3 unless a cell says otherwise). Swept baselines: the grid was tried at "
        "the set's first seed against the clean reference, the best value (column 'chosen') used at every seed.",
        "",
        "## Headline: reporting set, PSNR dB",
        "",
        headline_table("reporting", root),
        "",
        "## The Wiener stage: its choice on the tuning set (`python -m benchmarks.wiener_grid`)",
        "",
        wiener_grid.table(root),
        "",
        "## The Wiener stage's kinds on the tuning set (`python -m benchmarks.wiener_grid --filters` and `--matched`)",
        "",
        wiener_grid.filters_table(root),
        "",
        wiener_grid.matched_table(root),
        "",
        "## Block matching against the DCT filter by the noise's in-plane correlation (`python -m "
        "benchmarks.wiener_grid --gate`; where 'matched' gives way)",
        "",
        wiener_grid.gate_table(root),
        "",
        "## Block matching repeated with its own estimate as the pilot, tuning and reporting sets (`python -m "
        "benchmarks.wiener_grid --passes`; not adopted)",
        "",
        wiener_grid.passes_table(root),
        "",
        "## A pilot that keeps texture: the network's output mixed with a hard-thresholded block-matched estimate "
        "(`python -m benchmarks.ht_pilot`; not adopted)",
        "",
        ht_pilot.table(root),
        "",
        "## Two passes of block matching on white noise (`python -m benchmarks.white_stage`; adopted for white "
        "noise, the one pass kept on correlated noise)",
        "",
        white_stage.table(root),
        "",
        "## The white-noise SSIM gap: the two passes' output averaged with a network-free estimate of BM4D's kind "
        "(`python -m benchmarks.texture_gap`; with the body noise level, mix 0.3 adopted on white noise, then the "
        "estimate and its weight superseded by the grid below)",
        "",
        texture_gap.table(root),
        "",
        "## The network-free estimate made more like BM4D's: its filters and its weight (`python -m "
        "benchmarks.network_free_grid`; BM4D's windows adopted, `ht-window+w5-search7`)",
        "",
        network_free_grid.table(root),
        "",
        "## The network-free estimate on low-dose CT (correlated noise), its noise the network's residual's spectrum "
        "x a factor (`python -m benchmarks.correlated_free`; not adopted: the tuning set's choice lost on the "
        "reporting set's brain crop)",
        "",
        correlated_free.table(root),
        "",
        "## The Wiener stage on the reporting set (`nsn2n`, `nsn2n_filters` against `nsn2n_nowiener`, the same "
        "training)",
        "",
        wiener_table("reporting", root),
        "",
        "## Multi-axis inference (ablation, `python -m benchmarks.multi_axis`)",
        "",
        multi_axis_table(root),
        "",
        "## Training along three axes (ablation on the reporting set, `nsn2n_train3`; not adopted)",
        "",
        training_axes_table("reporting", root),
        "",
        "## The neighbour network (`nsn2n_nbfuse` ablation rows; the engine's option `nsn2n_fusion` against the "
        "default `nsn2n`; measured, offered as an option, not the default)",
        "",
        neighbour_fusion_table(root),
        "",
    ]
    for set_name, spec in SETS.items():
        parts += [f"## {set_name.capitalize()} set (seeds {', '.join(map(str, spec['seeds']))})", ""]
        for case in spec["cases"]:
            if not (root / case).is_dir():
                parts += [f"### `{case}`: not run yet", ""]
                continue
            parts += [f"### `{case}`: {datasets.DATASETS[case]}", "", case_table(case, spec["seeds"], root), ""]
            t = targets(case, spec["seeds"], root)
            if t:
                parts += ["Targets: " + ", ".join(f"{k} {_fmt(v)}" for k, v in t.items()), ""]
    path = root / "SUMMARY.md"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(parts))
    return path


def _fmt(v) -> str:
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, int):
        return str(v)
    return f"{v:+.2f}"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.protocol", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="run methods on a set's cases at its seeds (resumable)")
    r.add_argument("--set", choices=tuple(SETS), required=True)
    r.add_argument("--cases", help="comma-separated subset of the set's cases (default: all)")
    r.add_argument("--methods", default=",".join(ORDER), help=f"comma-separated, from: {', '.join(ORDER)}")
    r.add_argument("--seeds", help="comma-separated subset of the set's seeds (default: all three)")
    r.add_argument("--force", action="store_true", help="recompute stored results and sweeps")
    r.add_argument(
        "--reuse-network",
        action="store_true",
        help="rows with the Wiener stage: apply it to their training's cached network output where that is the "
        "stored network-alone result, instead of training again",
    )
    sub.add_parser("table", help="rebuild results/protocol/SUMMARY.md from the stored files")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "table":
        log(f"wrote {write_tables()}")
        return 0
    spec = SETS[args.set]
    cases = args.cases.split(",") if args.cases else list(spec["cases"])
    bad = [c for c in cases if c not in spec["cases"]]
    methods = args.methods.split(",")
    bad += [m for m in methods if m not in ORDER]
    if bad:
        print(f"error: not in the {args.set} set or not a method: {', '.join(bad)}", file=sys.stderr)
        return 2
    seeds = tuple(int(s) for s in args.seeds.split(",")) if args.seeds else spec["seeds"]
    threads = 1
    os.environ.setdefault("OMP_NUM_THREADS", str(threads))
    import torch

    torch.set_num_threads(threads)
    import SimpleITK as sitk

    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(threads)
    sitk.ProcessObject.SetGlobalWarningDisplay(False)
    global REUSE_ROOT
    REUSE_ROOT = RESULTS_DIR if args.reuse_network else None
    for case in cases:
        run_case(case, seeds, methods, args.force, first_seed=spec["seeds"][0])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
