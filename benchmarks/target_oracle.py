"""Where NS-N2N loses against a supervised network: oracle targets built with the clean reference.

The same network, iterations and noisy volume are trained with targets and weights that differ in one respect at a
time, so that the gap between NSN2N and the supervised ceiling splits into its causes:

- ``supervised``: target x_i (clean), every pixel weighted 1: the ceiling.
- ``oracle_unbiased_all``: the 3-slice mean of the *noisy* neighbours minus the clean volume's own bias
  ((c_i-1 + c_i+1) / 2 - c_i), every pixel weighted 1, no self term: a Noise2Noise target with no anatomical bias.
- ``oracle_unbiased_maps``: the same target with NSN2N's weight maps and self term.
- ``mean``, ``cubic``, ``quintic``: NSN2N itself (the default configuration) with the 3-slice mean, cubic or
  quintic target.
- ``cubic_clean_all``: the cubic interpolation of the *clean* neighbours as the target's bias correction, every
  pixel weighted 1: what polynomial interpolation alone leaves where anatomy is not smooth along the slice axis.

Usage: ``python -m benchmarks.target_oracle ct_ld_1e5 --quick --iterations 800 [--rows a,b,...]``; prints a
Markdown table (PSNR in the head mask, as every benchmark row). Only for analysis: it needs the clean volume.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np
import torch

from . import datasets, metrics

ROWS = ("supervised", "oracle_unbiased_all", "oracle_unbiased_maps", "mean", "cubic", "quintic", "cubic_clean_all")


def run_row(row: str, ds: datasets.Dataset, iterations: int) -> tuple[float, float]:
    """Train and score one row; returns (PSNR dB, seconds)."""
    from NSN2NDenoiseLib import make_config
    from NSN2NDenoiseLib.config import INTERPOLATION_TARGETS
    from NSN2NDenoiseLib.inference import predict_slices
    from NSN2NDenoiseLib.normalization import denormalize, fit_intensity_map, normalize
    from NSN2NDenoiseLib.training import train_network
    from NSN2NDenoiseLib.weights import compute_three_slice_maps, compute_weight_maps, interpolation_offset

    target = {"mean": "three_slice", "quintic": "quintic"}.get(row, "cubic")
    cfg = make_config(
        "default", device="cpu", training={"iterations": iterations, "threads": 1}, loss={"target": target}
    )
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    imap = fit_intensity_map(ds.noisy.astype(np.float64), cfg.normalization_percentiles)
    y = torch.from_numpy(normalize(ds.noisy.astype(np.float64), imap).astype(np.float32))
    c = torch.from_numpy(normalize(ds.clean.astype(np.float64), imap).astype(np.float32))
    pairs = compute_weight_maps(y, cfg.weights).maps
    mean_y = 0.5 * (y[:-2] + y[2:])
    offset = None
    if row in ("mean", "cubic", "quintic"):
        points = INTERPOLATION_TARGETS.get(target)
        offset = interpolation_offset(y, points) if points else None
        three = compute_three_slice_maps(y, cfg.weights, offset)
        maps, keep = three.maps, three.keep
    else:
        if row == "supervised":
            offset = mean_y - c[1:-1]
        elif row.startswith("oracle_unbiased"):
            offset = 0.5 * (c[:-2] + c[2:]) - c[1:-1]
        elif row == "cubic_clean_all":
            offset = interpolation_offset(c, 4)
        if row == "oracle_unbiased_maps":
            three = compute_three_slice_maps(y, cfg.weights)
            maps, keep = three.maps, three.keep
        else:
            maps, keep = torch.ones_like(mean_y), torch.zeros_like(mean_y)
    net, _ = train_network(y, pairs, cfg, None, None, maps, keep, target_offset=offset)
    out = predict_slices(net, y, cfg.inference, False, None, None).numpy()
    psnr = metrics.psnr(ds.clean, denormalize(out, imap), ds.mask, ds.data_range)
    return psnr, time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dataset", choices=sorted(datasets.DATASETS))
    parser.add_argument("--quick", action="store_true", help="the 128x128 centre crop")
    parser.add_argument("--iterations", type=int, default=800)
    parser.add_argument("--rows", default=",".join(ROWS), help=f"comma-separated subset of {', '.join(ROWS)}")
    args = parser.parse_args(argv)
    rows = args.rows.split(",")
    unknown = [r for r in rows if r not in ROWS]
    if unknown:
        parser.error(f"unknown rows {unknown}; known: {', '.join(ROWS)}")
    ds = datasets.build(args.dataset, quick=args.quick)
    noisy = metrics.psnr(ds.clean, ds.noisy, ds.mask, ds.data_range)
    print(
        f"{args.dataset} ({'quick crop' if args.quick else 'full'}), {args.iterations} iterations; noisy {noisy:.2f} dB"
    )
    print("| row | PSNR dB | time s |\n|---|---|---|")
    for row in rows:
        psnr, seconds = run_row(row, ds, args.iterations)
        print(f"| {row} | {psnr:.2f} | {seconds:.0f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
