"""What a single volume says about its own noise level: why example4d's harm cannot be seen without a reference.

Issue 15 asks for a safe default where NSN2N makes a scan worse. On example4d (the real EPI pair) it does, and
the residual check does not see it (RESULTS.md, "Method-noise check"). Any reference-free safeguard needs to tell
noise from anatomy that changes between slices; this script records, for every quick case of the residual-check
study, the readings a single volume offers against the true noise level, none of which needs the clean volume:

- ``k_cubic``: the robust spread (1.4826 x MAD, over the body) of x_k minus the cubic interpolation of its four K
  neighbours (NSN2N's own training target), divided by sqrt(35/18): the noise sigma if the anatomy were
  continuous across slices and the noise independent between them.
- ``j_cubic``, ``i_cubic``: the same along J and along I, in the slice plane.
- ``energy_p10_p50``: the median over slices of p10 / p50 of the 5x5 (and 15x15) box mean of (x_k - target)^2
  over the body, NSN2N's energy test (how uneven the mismatch is; pure white noise: about 0.6).

and ``true_sigma``: the simulator's sigma (Gaussian, Rician), the std of noisy - clean in the head (low-dose CT),
or for example4d the std of (repetition 1 - repetition 2) / sqrt 2 in the head. Slice axis K everywhere (the one
NSN2N chose), quick crops as in ``benchmarks.residual_check``.

    python -m benchmarks.noise_readings --out benchmarks/results/noise_readings
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np
from scipy import ndimage

from . import datasets
from .report import portable_command
from .residual_check import ORDER

CUBIC_VARIANCE = 35.0 / 18.0
"""Variance of x_k - cubic(x_k-2 .. x_k+2) for unit white noise: 1 + 2 (2/3)^2 + 2 (1/6)^2."""


def _mad_sigma(values: np.ndarray) -> float:
    return float(1.4826 * np.median(np.abs(values - np.median(values))))


def cubic_mismatch(x: np.ndarray, axis: int) -> np.ndarray:
    """x minus the cubic interpolation of its neighbours at +-1 and +-2 along ``axis``, on the inner voxels
    (2 trimmed on every side of every axis, so that the three axes' arrays align)."""
    inner = tuple(slice(2, n - 2) for n in x.shape)

    def shifted(offset: int) -> np.ndarray:
        return x[tuple(slice(2 + offset, n - 2 + offset) if a == axis else inner[a] for a, n in enumerate(x.shape))]

    m1 = 0.5 * (shifted(-1) + shifted(1))
    m2 = 0.5 * (shifted(-2) + shifted(2))
    return x[inner] - (4.0 / 3.0 * m1 - 1.0 / 3.0 * m2)


def body_mask(x: np.ndarray) -> np.ndarray:
    """Low-passed (2 px in-plane) volume above p1 + 10 % of (p99 - p1), as the residual check defines the body."""
    lo, hi = np.percentile(x, [1, 99])
    return ndimage.gaussian_filter(x, (0, 2, 2)) > lo + 0.1 * (hi - lo)


def readings(ds: datasets.Dataset) -> dict:
    """Every reading of one case (see the module docstring), in the volume's units."""
    x = ds.noisy.astype(np.float32)
    body = body_mask(x)[2:-2, 2:-2, 2:-2]
    out = {}
    for axis, name in enumerate("kji"):
        d = cubic_mismatch(x, axis)
        out[f"{name}_cubic"] = _mad_sigma(d[body]) / math.sqrt(CUBIC_VARIANCE)
    d2 = cubic_mismatch(x, 0) ** 2
    for window in (5, 15):
        energy = ndimage.uniform_filter(d2, size=(1, window, window))
        ratios = []
        for k in range(energy.shape[0]):
            v = energy[k][body[k]]
            if v.size >= 256:
                p10, p50 = np.percentile(v, [10, 50])
                ratios.append(p10 / p50)
        out[f"energy_p10_p50_w{window}"] = float(np.median(ratios))
    if ds.name == "example4d":
        diff = (ds.noisy - ds.clean)[ds.mask] / math.sqrt(2.0)
        out["true_sigma"] = float(diff.std())
    elif ds.noise_sigma is not None:
        out["true_sigma"] = float(ds.noise_sigma)
    else:
        out["true_sigma"] = float(ds.meta["noise_std_in_mask"])
    out["k_cubic_over_true"] = out["k_cubic"] / out["true_sigma"]
    out["k_over_inplane"] = out["k_cubic"] / math.sqrt(out["j_cubic"] * out["i_cubic"])
    return out


def markdown(rows: list[dict], command: str) -> str:
    lines = [
        "| case | true sigma | K cubic reading | K reading / true | J reading | I reading | K / in-plane "
        "| energy p10/p50 (5 px) | (15 px) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| `{r['case']}` | {r['true_sigma']:.1f} | {r['k_cubic']:.1f} | {r['k_cubic_over_true']:.2f} "
            f"| {r['j_cubic']:.1f} | {r['i_cubic']:.1f} | {r['k_over_inplane']:.2f} "
            f"| {r['energy_p10_p50_w5']:.2f} | {r['energy_p10_p50_w15']:.2f} |"
        )
    return "\n".join(lines) + f"\n\nCommand: `{command}`\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.noise_readings", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="benchmarks/results/noise_readings")
    p.add_argument("--cases", default=",".join(ORDER))
    args = p.parse_args(argv)
    rows = []
    for case in args.cases.split(","):
        ds = datasets.build(case, quick=True)
        rows.append({"case": case, "shape_kji": list(ds.noisy.shape), "crop": ds.crop, **readings(ds)})
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    command = portable_command("python -m benchmarks.noise_readings " + " ".join(argv or sys.argv[1:]))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps({"command": command, "rows": rows}, indent=1))
    (out / "results.md").write_text(markdown(rows, command))
    print((out / "results.md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
