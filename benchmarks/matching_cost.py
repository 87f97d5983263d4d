"""Block matching's cost before and after its distances went into one preallocated table, in one process.

The Wiener stage's per-voxel constants of :mod:`NSN2NDenoiseLib.costmodel` ('matched', 'matched_white') were
fitted while block matching still built its candidate distances as a list of rows (``_match_as_rows`` below, the
code before the change, kept here only to be timed). Timings taken on different days on this shared machine differ
by up to 2x, so the two are timed here back to back on the same input, alternating (``--repeats`` times each,
the fastest kept), and the constants are rescaled by the ratio.

On the scale family's 256x256x200 MRI (:func:`benchmarks.scale.build_mri_volume`, Rician 5 %, K,J,I = 200, 256,
256) with a pilot standing in for the network's output (the input smoothed by a Gaussian of 1 voxel): the stage's
two passes on white noise without the network-free estimate (``MATCHED`` is their filter and the CT's one pass), and
the stage as the engine runs it (the passes and the network-free estimate, whose search of 7 along every axis is
where the list of rows cost most).

    python -m benchmarks.matching_cost --threads 1 --repeats 1 --out benchmarks/results/matching_cost

Writes ``matching.json`` under ``--out``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from . import metrics
from .report import portable_command
from .scale import ROOT
from .stage_cost import measure, mri_case


def _match_as_rows(ps, kr, k_last, b, plane, f, ref_plane):
    """``block_matching._match`` as it was before the preallocated table (same arguments, same result)."""
    from NSN2NDenoiseLib.block_matching import group_size

    bk, bj, bi = b
    hp, wp = plane
    sk, s = f.search
    h, w = ps.shape[1], ps.shape[2]
    ref = ps[kr : kr + bk, s : s + hp, s : s + wp]
    shifts, dists = [], []
    for dk in range(-sk, sk + 1):
        if not 0 <= kr + dk <= k_last:
            continue
        other = ps[kr + dk : kr + dk + bk]
        for dj in range(-s, s + 1):
            for di in range(-s, s + 1):
                d2 = ((ref - other[:, s + dj : s + dj + hp, s + di : s + di + wp]) ** 2).sum(0)
                dists.append(F.avg_pool2d(d2[None, None], (bj, bi), stride=f.step)[0, 0].reshape(-1))
                shifts.append((kr + dk) * h * w + dj * w + di)
    dist = torch.stack(dists)
    dist[shifts.index(kr * h * w)] = -1.0
    m = group_size(len(shifts), f.group)
    order = torch.topk(dist, m, dim=0, largest=False, sorted=True).indices
    return (torch.tensor(shifts)[order] + ref_plane[None, :]).T.contiguous()


def timed(noisy: np.ndarray, pilot: np.ndarray, share: float, rows: bool) -> dict:
    """:func:`benchmarks.stage_cost.measure` with the current matching, or with the list of rows when ``rows``."""
    from NSN2NDenoiseLib import block_matching

    current = block_matching._match
    block_matching._match = _match_as_rows if rows else current
    try:
        return measure(noisy, pilot, share)
    finally:
        block_matching._match = current


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "matching_cost"))
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    noisy, pilot = mri_case()
    from NSN2NDenoiseLib import block_matching

    share = block_matching.NETWORK_FREE_SHARE["white"]
    rows: dict[str, dict] = {}
    for stage, stage_share in (("two passes", 0.0), ("engine (passes + network-free estimate)", share)):
        runs = {"list of rows (before)": [], "preallocated table (now)": []}
        for _ in range(args.repeats):
            for name in runs:
                runs[name].append(timed(noisy, pilot, stage_share, rows=name.startswith("list")))
        for name, done in runs.items():
            best = min(done, key=lambda r: r["seconds"])
            rows[f"{stage}, {name}"] = {
                "seconds": best["seconds"],
                "all_seconds": [r["seconds"] for r in done],
                "entry": best["entry"],
            }
    ratio = {
        stage: rows[f"{stage}, preallocated table (now)"]["seconds"]
        / rows[f"{stage}, list of rows (before)"]["seconds"]
        for stage in ("two passes", "engine (passes + network-free estimate)")
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    record = {
        "command": portable_command(
            f"python -m benchmarks.matching_cost --threads {args.threads} --repeats {args.repeats} --out {args.out}"
        ),
        "shape_kji": list(noisy.shape),
        "threads": args.threads,
        "machine": metrics.machine(),
        "when": time.strftime("%Y-%m-%d %H:%M"),
        "rows": rows,
        "now_over_before": ratio,
    }
    (out / "matching.json").write_text(json.dumps(record, indent=1, default=float))
    for name, r in rows.items():
        print(f"{name}: {r['seconds']:.1f} s")
    print("now / before:", {k: round(v, 3) for k, v in ratio.items()})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
