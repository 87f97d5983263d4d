"""The network-free estimate made more like BM4D: its filters, and its weight in the white stage's average.

The engine's white stage ends by averaging its block-matched passes with an estimate that uses no network
(``block_matching.network_free``: a hard threshold at 2.7 noise standard deviations on groups of 4-voxel blocks
matched on the input, then one Wiener pass of the same 4-voxel filter, ``block_matching.MATCHED``, with it as the
pilot), weight ``block_matching.NETWORK_FREE_SHARE['white']`` = 0.3. With white Gaussian noise the default's SSIM
stays just below BM4D's as users run it (RESULTS.md), and the engine's estimate alone is below BM4D's SSIM too:
BM4D's Wiener step uses 5-voxel blocks, groups of 32 and a Kaiser window (``bm4d.BM4DProfile``). This measures,
for each case and seed, on the default's cached network output (the same for every variant):

- ``passes``: the engine's passes (``block_matching.PASSES``), before the estimate is averaged in;
- for each filter variant of :func:`variants` (the hard-threshold pass's filter, then the Wiener pass's), the
  estimate alone and the engine's passes averaged with it at each weight of :data:`MIXES`.

The noise level is the engine's (``noise_estimates.body_sigma``). PSNR and 3D SSIM in the head, and SSIM and mean
squared error in the flattest quarter (``ht_pilot.flat_region``).

    python -m benchmarks.network_free_grid --set tuning                 # the white tuning cases, 3 seeds
    python -m benchmarks.network_free_grid --set reporting --variants w5-g32

Writes ``benchmarks/results/protocol/wiener_network_free.json`` (committed; ``--out`` names another file of the
same stem, for processes that run side by side), one entry per case and seed, with the network alone's PSNR and
the stored ``nsn2n_nowiener`` row's (a training on another machine differs by a few hundredths of a dB; every
variant is paired on one network output). Arrays are (K, J, I) with the slice axis first, in the volume's units.
"""

from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from . import ht_pilot, protocol, white_stage, wiener_grid

OUT = protocol.RESULTS_DIR / "wiener_network_free.json"
TUNING_CASES = ("cttune_gauss30", "mnitune_rician5", "mnitune_rician10")
"""The tuning set's cases with white noise."""
REPORTING_CASES = white_stage.REPORTING_CASES
MIXES = (0.3, 0.5)
"""Weights of the estimate in the average with the engine's passes."""
FIRST = "first"
"""The engine's first network-free estimate: its 4-voxel filter (``block_matching.MATCHED``: groups of 16, no window,
search 3 voxels along K and 5 along J and I) in both passes."""

ADOPTED = "ht-window+w5-search7"
"""The variant the engine now runs (``block_matching.NETWORK_FREE``; RESULTS.md)."""


def variants() -> dict[str, tuple]:
    """Name -> (the hard-threshold pass's filter, the Wiener pass's filter), the engine's first. ``w5``: the Wiener pass
    with 5-voxel blocks and BM4D's Kaiser window (parameter 2); ``g32``: with groups of 32 (BM4D's Wiener step);
    ``ht-window``: the window in the hard-threshold pass too; ``search7``: both passes search 7 voxels along every axis
    (BM4D's profile names a search window of 7 per axis) instead of 3 along K and 5 along J and I (``search7`` alone:
    with the engine's 4-voxel filter in both passes); ``search3x7``: 3 voxels along K and 7 along J and I."""
    from NSN2NDenoiseLib import block_matching as bm

    four = bm.MATCHED
    wiener5 = replace(four, block=5, window=2.0)
    return {
        FIRST: (four, four),
        "w5": (four, wiener5),
        "w5-g32": (four, replace(wiener5, group=32)),
        "ht-window+w5-g32": (replace(four, window=2.0), replace(wiener5, group=32)),
        "w5-g32-search7": (replace(four, search=(7, 7)), replace(wiener5, group=32, search=(7, 7))),
        "ht-window+w5": (replace(four, window=2.0), wiener5),
        "search7": (replace(four, search=(7, 7)), replace(four, search=(7, 7))),
        "ht-window+w5-search7": (replace(four, window=2.0, search=(7, 7)), replace(wiener5, search=(7, 7))),
        "ht-window+w5-search3x7": (replace(four, window=2.0, search=(3, 7)), replace(wiener5, search=(3, 7))),
    }


def estimate(noisy: np.ndarray, sigma: float, filters: tuple) -> np.ndarray:
    """The network-free estimate of ``noisy`` (K, J, I) with noise level ``sigma`` (its units) and ``filters`` =
    (hard-threshold filter, Wiener filter), as ``block_matching.network_free`` runs it with its own; float32."""
    from NSN2NDenoiseLib import block_matching as bm

    return bm.network_free(noisy, sigma, filters=filters)


def run(cases: list[str], seeds: tuple[int, ...], names: list[str], out: Path = OUT) -> dict:
    """The experiment (module docstring) on ``cases`` x ``seeds`` for the variants ``names``; a variant stored
    already for a case and seed is kept, and each entry is stored as soon as it is done."""
    from NSN2NDenoiseLib import block_matching, wiener
    from NSN2NDenoiseLib.noise_estimates import body_sigma

    stored = json.loads(out.read_text()) if out.is_file() else {}
    table = variants()
    for case in cases:
        for seed in seeds:
            key = f"{case}/seed{seed}"
            entry = stored.get(key, {"case": case, "seed": seed, "variants": {}, "seconds": {}})
            todo = [n for n in names if n not in entry["variants"]]
            if not todo:
                continue
            c = wiener_grid._case(case, seed)
            alone = protocol._load(protocol.result_path(case, seed, "nsn2n_nowiener"))
            flat = ht_pilot.flat_region(c.ds.clean, c.ds.mask)
            x = np.asarray(c.noisy, dtype=np.float32)
            sigma = body_sigma(x)
            eng = white_stage.run_passes(c.noisy, c.pilot, block_matching.PASSES[wiener.noise_class(c.lag1)])
            entry.update(
                noise_class=wiener.noise_class(c.lag1),
                sigma=sigma,
                network_alone_psnr=c.psnr(c.pilot),
                stored_network_alone_psnr=None if alone is None else alone["quality"]["psnr"],
            )
            entry["passes"] = ht_pilot._quality(c, flat, eng)
            for name in todo:
                start = time.perf_counter()
                b = estimate(x, sigma, table[name])
                entry["seconds"][name] = time.perf_counter() - start
                entry["variants"][name] = {
                    "alone": ht_pilot._quality(c, flat, b),
                    **{f"mix {a:g}": ht_pilot._quality(c, flat, (1 - a) * eng + a * b) for a in MIXES},
                }
            p = entry["passes"]
            message = f"{case} seed {seed}: passes {p['psnr']:.3f}/{p['ssim']:.4f}; " + ", ".join(
                f"{n}: " + " ".join(f"{k} {v['psnr']:.3f}/{v['ssim']:.4f}" for k, v in entry["variants"][n].items())
                for n in todo
            )
            wiener_grid._record(stored, out, key, entry, message)
    return stored


def table(root: Path = protocol.RESULTS_DIR) -> str:
    """By case and variant, from every result file of the experiment under ``root``: the estimate alone and each mix
    against the engine's passes and against the engine's estimate at the same weight (mean ± sd over seeds of the
    paired difference, dB / SSIM)."""
    by_case: dict[str, list[dict]] = {}
    for path in sorted(root.glob(f"{OUT.stem}*.json")):
        for e in json.loads(path.read_text()).values():
            by_case.setdefault(e["case"], []).append(e)
    if not by_case:
        return ""
    cols = ["alone", *(f"mix {a:g}" for a in MIXES)]
    lines = [
        "| case | variant | seeds | s per run | "
        + " | ".join(f"{k}: − engine's passes" for k in cols)
        + " | "
        + " | ".join(f"{k}: − first at {k}" for k in cols[1:])
        + " |",
        "|---" * (4 + 2 * len(cols) - 1) + "|",
    ]
    for case, entries in sorted(by_case.items()):
        entries.sort(key=lambda e: e["seed"])
        names = [n for n in variants() if any(n in e["variants"] for e in entries)]
        for n in names:
            have = [e for e in entries if n in e["variants"]]
            diff = [wiener_grid.paired_cell([(e["variants"][n][k], e["passes"]) for e in have]) for k in cols]
            ref = [
                wiener_grid.paired_cell([(e["variants"][n][k], e["variants"][FIRST][k]) for e in have])
                if all(FIRST in e["variants"] for e in have)
                else "–"
                for k in cols[1:]
            ]
            secs = np.mean([e["seconds"][n] for e in have])
            lines.append(
                f"| `{case}` | {n} | {', '.join(str(e['seed']) for e in have)} | {secs:.0f} | "
                + " | ".join(diff)
                + " | "
                + " | ".join(ref)
                + " |"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    cases = {"tuning": TUNING_CASES, "reporting": REPORTING_CASES}
    return wiener_grid.variant_grid_main(
        argv, __doc__.splitlines()[0], OUT, cases, list(variants()), run, table, "the set's white cases"
    )


if __name__ == "__main__":
    raise SystemExit(main())
