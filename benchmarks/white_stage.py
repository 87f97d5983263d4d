"""The block-matched stage on white noise: the engine's two passes (``block_matching.MATCHED_WHITE``: the one pass of
4-voxel blocks, then the same filter at factor 2 with the first estimate as its pilot) against that one pass alone
(``block_matching.MATCHED``, the stage it replaced there and still the engine's on correlated noise) and variants.

BM4D's own Wiener step, given the default's network output as its pilot, was 0.12 dB and 0.0014 SSIM ahead of the
engine's one pass on the white tuning CT (one seed, a first look). What it does differently was split into
variants: 5-voxel blocks, a Kaiser window over each block in the aggregation (``MatchedFilter.window``), and a
second pass. For each case and seed, on the default's cached network output f
(checked to score as the stored network-alone row), every variant of :func:`variants` runs its passes in order, each
pass with the previous one's estimate as its pilot and the noise variance = its factor x the spectrum of the
network's residual (x - f) for its block, exactly as ``wiener.apply_wiener`` runs them (before it averages in the
network-free estimate on white noise, which ``texture_gap`` measures); PSNR and 3D SSIM in the head,
and SSIM and mean squared error in the flattest quarter (``ht_pilot.flat_region``).

    python -m benchmarks.white_stage --set tuning        # every variant, the tuning cases with block matching
    python -m benchmarks.white_stage --set reporting     # white reporting cases: REPORTING_VARIANTS

Writes ``benchmarks/results/protocol/wiener_white.json`` (committed), one entry per case and seed. Arrays are
(K, J, I) with the slice axis first, in the volume's units.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from . import ht_pilot, protocol, wiener_grid

OUT = protocol.RESULTS_DIR / "wiener_white.json"
TUNING_CASES = ("cttune_gauss30", "mnitune_rician5", "mnitune_rician10", "cttune_ld_1e5", "cttune_ld_2e4")
"""The tuning set's cases where block matching runs (in-plane lag-1 at most ``wiener.MATCHED_MAX_LAG1``): white,
and low-dose CT (correlated), to see whether the change helps there too."""
REPORTING_CASES = ("ct_gauss30", "colin_gauss5", "colin_rician5", "colin_rician10", "mri_rician5", "mri_rician10")
"""The reporting set's cases with white noise (in-plane lag-1 at most ``inference.WHITE_LAG1``)."""


def variants() -> dict[str, tuple]:
    """Name -> the passes (``block_matching.MatchedFilter``) of each variant, the engine's last."""
    from NSN2NDenoiseLib import block_matching as bm

    one = bm.MATCHED
    five = replace(one, block=5)
    windowed = replace(five, window=2.0)
    return {
        "one pass (the previous stage)": (one,),
        "one pass, 5-voxel windowed blocks": (windowed,),
        "two passes, 5-voxel blocks, no window": (five, replace(five, factor=2.0)),
        "two passes, 5-voxel windowed blocks, factors 4 then 3": (windowed, replace(windowed, factor=3.0)),
        "two passes, 5-voxel windowed blocks, factors 4 then 2": (windowed, replace(windowed, factor=2.0)),
        "engine: two passes, 4-voxel blocks, factors 4 then 2": bm.MATCHED_WHITE,
    }


PREVIOUS, ENGINE = "one pass (the previous stage)", "engine: two passes, 4-voxel blocks, factors 4 then 2"
REPORTING_VARIANTS = (PREVIOUS, ENGINE, "two passes, 5-voxel windowed blocks, factors 4 then 2")
"""The variants checked on the reporting set: the one pass and the tuning set's two winners on white noise (the
engine's won on every white tuning case by more than twice the seed spread, the windowed one on two of three)."""


def run_passes(noisy: np.ndarray, pilot: np.ndarray, passes: tuple) -> np.ndarray:
    """The passes in order on a copy of ``pilot`` (the network's output, K, J, I), the noise of each being its
    factor x the network's residual's spectrum for its block, as the engine runs them."""
    from NSN2NDenoiseLib import block_matching

    out = pilot.astype(np.float32)  # a copy: the passes write in place
    block_matching.passes_into(noisy, out, passes)
    return out


def run(cases: list[str], seeds: tuple[int, ...], names: list[str]) -> dict:
    """The experiment (module docstring) on ``cases`` x ``seeds`` for the variants ``names``; each entry is stored as
    soon as it is done."""
    from NSN2NDenoiseLib import wiener

    stored = json.loads(OUT.read_text()) if OUT.is_file() else {}
    table = variants()
    for case in cases:
        for seed in seeds:
            c = wiener_grid._case(case, seed)
            c.check_stored_network(case, seed)
            flat = ht_pilot.flat_region(c.ds.clean, c.ds.mask)
            entry = {"case": case, "seed": seed, "noise_class": wiener.noise_class(c.lag1), "variants": {}}
            for name in names:
                start = time.perf_counter()
                out = run_passes(c.noisy, c.pilot, table[name])
                entry["variants"][name] = {**ht_pilot._quality(c, flat, out), "seconds": time.perf_counter() - start}
            got = entry["variants"]
            message = f"{case} seed {seed}: " + ", ".join(f"{n[:24]} {got[n]['psnr']:.3f}" for n in names)
            wiener_grid._record(stored, OUT, f"{case}/seed{seed}", entry, message)
    return stored


def table(root: Path = protocol.RESULTS_DIR) -> str:
    """By case: the previous stage's PSNR (dB) / SSIM, then each variant that ran on it paired with it by seed (mean
    ± sd of the difference, dB / SSIM), the engine's in bold, and the engine's flat-quarter SSIM against the
    previous stage's."""
    by_case = wiener_grid._entries_by_case(root / OUT.name)
    if not by_case:
        return ""
    names = [n for n in variants() if n != PREVIOUS]
    lines = [
        "| case | noise class | seeds | one pass (previous) dB / SSIM | "
        + " | ".join(f"{n}: − previous, dB / SSIM" for n in names)
        + " | flat quarter SSIM: previous → engine |",
        "|---" * (5 + len(names)) + "|",
    ]
    for case, entries in sorted(by_case.items()):
        entries.sort(key=lambda e: e["seed"])
        prev = [e["variants"][PREVIOUS] for e in entries]
        cells = []
        for n in names:
            if not all(n in e["variants"] for e in entries):
                cells.append("not run")
                continue
            cell = wiener_grid.paired_cell([(e["variants"][n], p) for e, p in zip(entries, prev, strict=True)])
            cells.append(f"**{cell}**" if n == ENGINE else cell)
        eng = [e["variants"][ENGINE]["ssim_flat"] for e in entries]
        flat = f"{np.mean([p['ssim_flat'] for p in prev]):.4f} → {np.mean(eng):.4f}"
        p_psnr = protocol.summarise([p["psnr"] for p in prev])
        lines.append(
            f"| {case} | {entries[0]['noise_class']} | {', '.join(str(e['seed']) for e in entries)} "
            f"| {p_psnr.mean:.2f} ± {p_psnr.sd:.2f} / {np.mean([p['ssim'] for p in prev]):.4f} "
            f"| {' | '.join(cells)} | {flat} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--set", choices=("tuning", "reporting"), default="tuning")
    parser.add_argument("--cases", help="comma-separated; default: the set's (reporting: its white cases)")
    parser.add_argument("--seeds", help="comma-separated; default: the set's")
    args = parser.parse_args(argv)
    spec = protocol.SETS[args.set]
    default_cases = TUNING_CASES if args.set == "tuning" else REPORTING_CASES
    cases = args.cases.split(",") if args.cases else list(default_cases)
    seeds = tuple(int(s) for s in args.seeds.split(",")) if args.seeds else tuple(spec["seeds"])
    names = list(variants()) if args.set == "tuning" else list(REPORTING_VARIANTS)
    run(cases, seeds, names)
    print(table())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
