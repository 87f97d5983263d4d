"""Where NS-N2N loses against a supervised network: oracle targets built with the clean reference.

The same network, iterations and noisy volume are trained with targets and weights that differ in one respect at a
time, so that the gap between NSN2N and the supervised ceiling splits into its causes:

- ``supervised``: target x_i (clean), every pixel weighted 1: the ceiling.
- ``oracle_unbiased_all``: the 3-slice mean of the *noisy* neighbours minus the clean volume's own bias
  ((c_i-1 + c_i+1) / 2 - c_i), every pixel weighted 1, no self term: a Noise2Noise target with no anatomical bias.
- ``oracle_unbiased_maps``: the same target with NSN2N's weight and keep maps (those of its cubic target).
- ``nsn2n``: NSN2N itself (the default configuration: the cubic target after its warm-up from the 3-slice mean).
- ``mean``: NSN2N with the 3-slice mean as target throughout (its maps unchanged).
- ``cubic_clean_all``: the 3-slice mean of the noisy neighbours with the bias of the cubic interpolation of the
  *clean* neighbours ((c_i-1 + c_i+1) / 2 - cubic(c)_i), every pixel weighted 1: what polynomial interpolation
  alone leaves where anatomy is not smooth along the slice axis.

Every row but ``nsn2n`` trains through :func:`NSN2NDenoiseLib.training.train_network` with an
:class:`OracleSampler` in place of its patch sampler. Slices are along K (array axis 0).

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

ROWS = ("supervised", "oracle_unbiased_all", "oracle_unbiased_maps", "nsn2n", "mean", "cubic_clean_all")
ALL_WEIGHTED = ("supervised", "oracle_unbiased_all", "cubic_clean_all")
"""Rows trained with every pixel weighted 1 and no self term."""


def oracle_sampler_class():
    """:class:`OracleSampler`, defined on first use so that importing this module does not import the engine."""
    from NSN2NDenoiseLib.training import Batch, PatchSampler
    from NSN2NDenoiseLib.weights import interpolate

    class OracleSampler(PatchSampler):
        """NSN2N's patch sampler with the target of one oracle ``row`` (see the module's docstring).

        ``clean`` holds the clean volume's slices, normalised with the noisy volume's map; the crops, flips and
        rotations are drawn as :class:`PatchSampler` draws them.
        """

        def __init__(self, source, targets, clean, row: str, patch: int, batch: int, seed: int, device=None):
            super().__init__(source, targets, patch, batch, seed, False, device)
            self.clean = clean
            self.row = row

        def sample(self, ramp: float = 1.0) -> Batch:
            return super().sample(0.0 if self.row == "mean" else ramp)

        def _target(self, s, i, rows, y, x, ramp):
            if self.row == "mean":
                return super()._target(s, i, rows, y, x, 0.0)
            c = torch.from_numpy(self.clean.patch(rows, y, x, self.size))
            if self.row == "supervised":
                return c[2]
            mean_c = 0.5 * (c[1] + c[3])
            if self.row == "cubic_clean_all":
                reference = interpolate(mean_c, 0.5 * (c[0] + c[4]), 2 <= i <= self.n - 3)
            else:
                reference = c[2]
            return 0.5 * (s[1] + s[3]) - (mean_c - reference)

    return OracleSampler


def run_row(row: str, ds: datasets.Dataset, iterations: int) -> tuple[float, float]:
    """Train and score one row; returns (PSNR dB, seconds)."""
    from NSN2NDenoiseLib import make_config
    from NSN2NDenoiseLib.inference import predict_into, use_bf16
    from NSN2NDenoiseLib.normalization import NormalizedSlices, fit_intensity_map
    from NSN2NDenoiseLib.training import train_network
    from NSN2NDenoiseLib.weights import TrainingTargets, compute_targets

    if row not in ROWS:
        raise ValueError(f"unknown row {row!r}; known: {', '.join(ROWS)}")
    cfg = make_config("default", device="cpu", training={"iterations": iterations, "threads": 1})
    device = torch.device("cpu")
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    imap = fit_intensity_map(ds.noisy)
    source = NormalizedSlices(ds.noisy, 0, imap)
    targets = compute_targets(source, cfg, device)
    if row in ALL_WEIGHTED:
        targets = TrainingTargets(
            weights=np.ones_like(targets.weights),
            keep=np.zeros_like(targets.keep),
            pair_weights=None,
            matched_fraction=1.0,
            matched_per_slice=[1.0] * (source.shape[0] - 2),
        )
    sampler = None
    if row != "nsn2n":
        t = cfg.training
        clean = NormalizedSlices(ds.clean, 0, imap)
        sampler = oracle_sampler_class()(source, targets, clean, row, t.patch_size, t.batch_size, t.seed, device)
    net, _ = train_network(source, targets, cfg, device, sampler=sampler)
    out = np.empty(ds.noisy.shape, dtype=np.float32)
    predict_into(net, source, out, cfg.inference, device, use_bf16(device, cfg.training.mixed_precision))
    psnr = metrics.psnr(ds.clean, out, ds.mask, ds.data_range)
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
