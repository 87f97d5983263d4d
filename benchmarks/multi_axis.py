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


class RoundRobin:
    """Batches from several samplers in turn (one sampler, one axis, per batch: patch sizes may differ by axis)."""

    def __init__(self, samplers: list) -> None:
        self.samplers = samplers
        self.step = 0

    def sample(self, ramp: float = 1.0):
        sampler = self.samplers[self.step % len(self.samplers)]
        self.step += 1
        return sampler.sample(ramp)


def train_all_axes(ds: datasets.Dataset, cfg) -> dict:
    """NS-N2N trained on neighbour-slice pairs along K, J and I in turn (same iterations and batch), returned as a
    state dict; a benchmark-only variant."""
    import torch

    from NSN2NDenoiseLib.normalization import NormalizedSlices, fit_intensity_map
    from NSN2NDenoiseLib.training import PatchSampler, train_network
    from NSN2NDenoiseLib.weights import compute_targets

    torch.set_num_threads(1)
    device = torch.device("cpu")
    imap = fit_intensity_map(ds.noisy)
    t = cfg.training
    samplers, first = [], None
    for axis in range(3):
        source = NormalizedSlices(ds.noisy, axis, imap)
        targets = compute_targets(source, cfg, device)
        samplers.append(PatchSampler(source, targets, t.patch_size, t.batch_size, t.seed + axis, device=device))
        first = first or (source, targets)
    net, _ = train_network(first[0], first[1], cfg, device, sampler=RoundRobin(samplers))
    return {k: v.detach().cpu() for k, v in net.state_dict().items()}


def _store(record: dict) -> dict:
    """Stamp ``record`` with its command and time and write it as ``<case>/seed<N>/<method>.json``."""
    record.update(
        command=protocol._command().replace("benchmarks.protocol", "benchmarks.multi_axis"),
        when=time.strftime("%Y-%m-%d %H:%M"),
    )
    path = protocol.result_path(record["case"], record["seed"], record["method"])
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=1, default=float))
    return record


def run_train_all(case: str, seed: int) -> dict:
    ds = datasets.build(case, quick=False, seed=seed)
    cfg = protocol.nsn2n_config("nsn2n_slice", seed)
    t0 = time.perf_counter()
    state = train_all_axes(ds, cfg)
    train_s = time.perf_counter() - t0
    outs = [predict_along(state, cfg, ds.noisy, a) for a in range(3)]
    score = lambda v: metrics.psnr(ds.clean, v, ds.mask, ds.data_range)  # noqa: E731
    record = {
        "case": case,
        "seed": seed,
        "method": "multi_axis_training",
        "psnr": {
            "k_only": score(outs[0]),
            "j_only": score(outs[1]),
            "i_only": score(outs[2]),
            "mean_kji": score(sum(outs) / 3.0),
        },
        "seconds": {"weights_and_training": train_s},
        "config": cfg.to_dict(),
        "note": "training batches drawn from K, J and I neighbour pairs in turn; same iterations and batch size",
    }
    return _store(record)


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
    }
    return _store(record)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.multi_axis", description=__doc__.split("\n\n")[0])
    p.add_argument("--cases", default="mnitune_rician5,mnitune_rician10")
    p.add_argument("--seeds", default=",".join(map(str, protocol.SETS["tuning"]["seeds"])))
    p.add_argument("--train-all-axes", action="store_true", help="also train on pairs along K, J and I in turn")
    args = p.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    for case in args.cases.split(","):
        for seed in (int(s) for s in args.seeds.split(",")):
            name = "multi_axis_training" if args.train_all_axes else "multi_axis"
            if protocol.result_path(case, seed, name).is_file():
                continue
            r = run_train_all(case, seed) if args.train_all_axes else run(case, seed)
            protocol.log(f"{case} seed {seed} {name}: " + ", ".join(f"{k} {v:.2f}" for k, v in r["psnr"].items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
