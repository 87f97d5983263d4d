"""What the network-free estimate adds to the white-noise Wiener stage at a real MRI size: time and memory.

On the scale family's 256x256x200 MRI (:func:`benchmarks.scale.build_mri_volume`, Rician 5 %, K,J,I = 200, 256,
256), the stage ``wiener.apply_wiener(..., 'matched')`` runs three times in one process on the same pilot: with
the network-free estimate left out (``block_matching.NETWORK_FREE_SHARE['white'] = 0``: the two passes, the stage
before it), with the first estimate (the 4-voxel filter ``block_matching.MATCHED`` in both of its passes), and as
the engine runs it (the passes, then ``block_matching.NETWORK_FREE``'s estimate averaged in). The pilot stands in
for the network's output: the input smoothed by a Gaussian of 1 voxel (the stage's cost does not depend on what the
pilot holds). Each run's seconds and the peak of the memory it allocated beyond the input and the pilot
(``tracemalloc``, which sees numpy's arrays; torch's slabs are not counted) are recorded with the thread count,
so that the two can be compared on one machine at one time, whatever else runs beside them.

    python -m benchmarks.stage_cost --threads 1 --out benchmarks/results/scale_mri_mix

Writes ``stage.json`` under ``--out``.
"""

from __future__ import annotations

import argparse
import json
import time
import tracemalloc
from pathlib import Path

import numpy as np

from . import metrics
from .report import portable_command
from .scale import ROOT, build_mri_volume


def measure(noisy: np.ndarray, pilot: np.ndarray, share: float, filters: tuple | None = None) -> dict:
    """The stage on a copy of ``pilot`` (K, J, I) with the network-free estimate's white share ``share`` and its
    ``filters`` (``block_matching.NETWORK_FREE``'s form; None: the engine's): seconds, peak allocated MB, and the
    report's entry."""
    from NSN2NDenoiseLib import block_matching, wiener

    before = block_matching.NETWORK_FREE_SHARE["white"], block_matching.NETWORK_FREE
    block_matching.NETWORK_FREE_SHARE["white"] = share
    block_matching.NETWORK_FREE = filters or before[1]
    try:
        out = pilot.copy()
        tracemalloc.start()
        start = time.perf_counter()
        entry = wiener.apply_wiener(noisy, out, (0.0, 0.0), "matched")
        seconds = time.perf_counter() - start
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    finally:
        block_matching.NETWORK_FREE_SHARE["white"], block_matching.NETWORK_FREE = before
    return {"seconds": seconds, "peak_allocated_mb": peak / 2**20, "entry": entry}


def mri_case() -> tuple[np.ndarray, np.ndarray]:
    """The scale family's 256x256x200 MRI (K, J, I, float32) and the pilot standing in for the network's output
    (the input smoothed by a Gaussian of 1 voxel)."""
    import SimpleITK as sitk
    from scipy import ndimage

    noisy = sitk.GetArrayFromImage(sitk.ReadImage(str(build_mri_volume()))).astype(np.float32)
    return noisy, ndimage.gaussian_filter(noisy, 1.0)


def main(argv: list[str] | None = None) -> int:
    import torch

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "scale_mri_mix"))
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    noisy, pilot = mri_case()
    from NSN2NDenoiseLib import block_matching

    share = block_matching.NETWORK_FREE_SHARE["white"]
    first = (block_matching.MATCHED, block_matching.MATCHED)
    rows = {
        "two passes (before)": measure(noisy, pilot, 0.0),
        "two passes + the first network-free estimate (4-voxel filter)": measure(noisy, pilot, share, first),
        "two passes + network-free (engine)": measure(noisy, pilot, share),
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    record = {
        "command": portable_command(f"python -m benchmarks.stage_cost --threads {args.threads} --out {args.out}"),
        "shape_kji": list(noisy.shape),
        "threads": args.threads,
        "machine": metrics.machine(),
        "when": time.strftime("%Y-%m-%d %H:%M"),
        "rows": rows,
    }
    (out / "stage.json").write_text(json.dumps(record, indent=1, default=float))
    for name, r in rows.items():
        print(f"{name}: {r['seconds']:.1f} s, {r['peak_allocated_mb']:.0f} MB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
