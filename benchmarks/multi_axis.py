"""Ablation (issue 11, item 5): predict along all three axes of a near-isotropic volume with white noise.

NSN2N trains on neighbour-slice pairs along one axis (K here). Where the voxel is near-isotropic and the noise
is independent along every axis, the same network can also denoise the J slices and the I slices of the volume;
the mean of the three predictions has less residual error than one if their errors are not fully correlated.
This script trains the default once per case and seed, predicts along K (the default output), J and I with the
same test-time augmentation, and scores K alone, the mean of the three, and each axis. Tuning set only: a change
of the default is adopted only when it wins here by more than twice the seed spread.

    python -m benchmarks.multi_axis --cases mnitune_rician5,mnitune_rician10

Writes ``benchmarks/results/protocol/<case>/seed<N>/multi_axis.json`` (committed).
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from . import datasets, metrics, protocol


def predict_along(state: dict, cfg, volume: np.ndarray, axis: int) -> np.ndarray:
    """The trained network of ``state`` applied to every slice of ``volume`` (K,J,I) along ``axis``."""
    import torch

    from NSN2NDenoiseLib.inference import predict_into
    from NSN2NDenoiseLib.normalization import NormalizedSlices, fit_intensity_map
    from NSN2NDenoiseLib.training import build_network

    net = build_network(cfg)
    net.load_state_dict(state)
    net.eval()
    imap = fit_intensity_map(volume)
    out = np.empty(volume.shape, dtype=np.float32)
    predict_into(
        net, NormalizedSlices(volume, axis, imap), np.moveaxis(out, axis, 0), cfg.inference, torch.device("cpu")
    )
    return out


def run(case: str, seed: int) -> dict:
    from NSN2NDenoiseLib import denoise

    ds = datasets.build(case, quick=False, seed=seed)
    cfg = protocol.nsn2n_config("nsn2n_slice", seed)
    t0 = time.perf_counter()
    out_k, report, state = denoise(ds.noisy, spacing=ds.spacing, config=cfg, return_model=True)
    train_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    out_j = predict_along(state, cfg, ds.noisy, 1)
    out_i = predict_along(state, cfg, ds.noisy, 2)
    extra_s = time.perf_counter() - t0
    score = lambda v: metrics.psnr(ds.clean, v, ds.mask, ds.data_range)  # noqa: E731
    mean3 = (out_k + out_j + out_i) / 3.0
    record = {
        "case": case,
        "seed": seed,
        "method": "multi_axis",
        "psnr": {
            "k_only (default)": score(out_k),
            "j_only": score(out_j),
            "i_only": score(out_i),
            "mean_kji": score(mean3),
        },
        "ssim": {
            "k_only (default)": metrics.ssim(ds.clean, out_k, ds.mask, ds.data_range)[0],
            "mean_kji": metrics.ssim(ds.clean, mean3, ds.mask, ds.data_range)[0],
        },
        "seconds": {"default_run": train_s, "extra_inference": extra_s},
        "spacing_kji": list(ds.spacing),
        "interslice_noise_correlation": report.to_dict().get("interslice_noise_correlation"),
        "config": cfg.to_dict(),
        "command": protocol._command().replace("benchmarks.protocol", "benchmarks.multi_axis"),
        "when": time.strftime("%Y-%m-%d %H:%M"),
    }
    path = protocol.result_path(case, seed, "multi_axis")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=1, default=float))
    return record


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.multi_axis", description=__doc__.split("\n\n")[0])
    p.add_argument("--cases", default="mnitune_rician5,mnitune_rician10")
    p.add_argument("--seeds", default=",".join(map(str, protocol.SETS["tuning"]["seeds"])))
    args = p.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    for case in args.cases.split(","):
        for seed in (int(s) for s in args.seeds.split(",")):
            if protocol.result_path(case, seed, "multi_axis").is_file():
                continue
            r = run(case, seed)
            protocol.log(f"{case} seed {seed}: " + ", ".join(f"{k} {v:.2f}" for k, v in r["psnr"].items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
