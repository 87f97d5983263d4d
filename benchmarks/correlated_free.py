"""The network-free estimate on low-dose CT, where the noise is correlated in-plane (not adopted).

On white noise the engine's stage averages its block-matched passes with an estimate that uses no network
(``block_matching.network_free``, weight ``block_matching.NETWORK_FREE_SHARE['white']``); on correlated noise it
does not run (weight 0), because one noise level cannot be given to every DCT coefficient. This measures the
estimate on correlated noise with, as the noise variance of each DCT coefficient, the spectrum of the network's
residual for the filter's block (``wiener.residual_spectrum``, the spectrum the passes use) times a factor, for
each case and seed, on the default's cached network output (the same for every variant):

- ``passes``: the engine's stage on correlated noise (``block_matching.PASSES['correlated']``);
- for each variant of :func:`variants` (filters and factor), the estimate alone and the passes averaged with it at
  each weight of :data:`MIXES`.

PSNR and 3D SSIM in the head, SSIM and mean squared error in the flattest quarter (``ht_pilot.flat_region``).

    python -m benchmarks.correlated_free --set tuning                  # the low-dose tuning cases, 3 seeds
    python -m benchmarks.correlated_free --set reporting --cases ctbrain_ld_2e4 --variants "wide x3"

Writes ``benchmarks/results/protocol/wiener_correlated_free.json`` (committed; ``--out`` names another file of the
same stem, for processes that run side by side), one entry per case and seed. Arrays are (K, J, I) with the slice
axis first, in the volume's units.
"""

from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from . import datasets, ht_pilot, metrics, protocol, white_stage, wiener_grid

OUT = protocol.RESULTS_DIR / "wiener_correlated_free.json"
BRAIN = "brain"
"""A case named '<tuning slab case>/brain': the stage run on the tuning brain crop (:data:`datasets.CT_TUNE_BRAIN_BOX`)
with the crop of the network's output *on the whole tuning slab* as its pilot, the noise spectrum read on the crop:
the first proxy for the brain tried here. The ``cttunebrain_*`` cases are the same crop with a network trained on
the crop itself, as the reporting set's brain crop is."""
TUNING_CASES = (
    "cttune_ld_1e5",
    "cttune_ld_2e4",
    "cttunebrain_ld_1e5",
    "cttunebrain_ld_2e4",
    f"cttune_ld_1e5/{BRAIN}",
    f"cttune_ld_2e4/{BRAIN}",
)
"""The tuning set's cases with low-dose CT noise (correlated in-plane): the skull base of the tuning slices, their
brain crop, and the crop of the slab's network output."""
REPORTING_CASES = ("ctbrain_ld_2.5e5", "ctbrain_ld_1e5", "ctbrain_ld_2e4", "ct_ld_2.5e5", "ct_ld_1e5", "ct_ld_2e4")
MIXES = (0.3, 0.5, 0.7)
"""Weights of the estimate in the average with the engine's passes."""
FACTORS = (1.5, 2.0, 3.0, 4.0)
"""Factors on the residual's spectrum tried (the passes use 4 on correlated noise, ``block_matching.MATCHED``)."""


def filters() -> dict[str, tuple]:
    """Name -> (the hard-threshold pass's filter, the Wiener pass's filter). ``wide``: the engine's white-noise
    estimate (``block_matching.NETWORK_FREE``: BM4D's Kaiser window, 5-voxel Wiener blocks, search 7 voxels along
    every axis); ``narrow``: the same windows and blocks with the passes' search (3 along K, 5 along J and I), about
    half its time; ``narrow-step4``: that with reference blocks 4 voxels apart instead of 3, about a quarter."""
    from NSN2NDenoiseLib import block_matching as bm

    narrow = (replace(bm.MATCHED, window=2.0), replace(bm.MATCHED, block=5, window=2.0))
    return {
        "wide": bm.NETWORK_FREE,
        "narrow": narrow,
        "narrow-step4": tuple(replace(f, step=4) for f in narrow),
    }


def variants() -> dict[str, tuple[tuple, float]]:
    """Name ('<filters> x<factor>') -> (filters of :func:`filters`, factor on the residual's spectrum)."""
    return {f"{name} x{factor:g}": (pair, factor) for name, pair in filters().items() for factor in FACTORS}


def estimate(noisy: np.ndarray, pilot: np.ndarray, variant: tuple[tuple, float]) -> np.ndarray:
    """The network-free estimate of ``noisy`` (K, J, I), its noise variance per DCT coefficient the residual
    ``noisy`` - ``pilot``'s spectrum for each filter's block times the variant's factor; float32."""
    from NSN2NDenoiseLib import block_matching as bm
    from NSN2NDenoiseLib.wiener import residual_spectrum

    pair, factor = variant
    noise = {f.block: factor * residual_spectrum(noisy, pilot, f.block) for f in pair}
    return bm.network_free(noisy, noise, filters=pair)


def _case(case: str, seed: int) -> wiener_grid._Case:
    """``wiener_grid._case`` of the case, or of its region where the name says one (:data:`BRAIN`): the clean,
    noisy and network's volumes cropped to the box, the mask recomputed on the clean crop."""
    base, _, region = case.partition("/")
    c = wiener_grid._case(base, seed)
    if not region:
        return c
    if region != BRAIN or not base.startswith("cttune_") or c.info["slice_axis"] != 0:
        raise ValueError(f"{case}: only '<tuning CT case>/{BRAIN}' names a region")
    ks, js, is_, text = datasets.box_region(datasets.CT_TUNE_BRAIN_BOX, BRAIN)
    box = (ks, js, is_)
    clean = np.ascontiguousarray(c.ds.clean[box])
    ds = replace(
        c.ds,
        clean=clean,
        noisy=np.ascontiguousarray(c.ds.noisy[box]),
        mask=metrics.head_mask(clean, "ct"),
        crop=c.ds.crop + text,
    )
    return wiener_grid._Case(ds, c.info, np.ascontiguousarray(c.noisy[box]), np.ascontiguousarray(c.pilot[box]))


def run(cases: list[str], seeds: tuple[int, ...], names: list[str], out: Path = OUT) -> dict:
    """The experiment (module docstring) on ``cases`` x ``seeds`` for the variants ``names``; a variant stored
    already for a case and seed is kept, and each entry is stored as soon as it is done."""
    from NSN2NDenoiseLib import block_matching, wiener

    stored = json.loads(out.read_text()) if out.is_file() else {}
    table = variants()
    for case in cases:
        for seed in seeds:
            key = f"{case}/seed{seed}"
            entry = stored.get(key, {"case": case, "seed": seed, "variants": {}, "seconds": {}})
            todo = [n for n in names if n not in entry["variants"]]
            if not todo:
                continue
            c = _case(case, seed)
            flat = ht_pilot.flat_region(c.ds.clean, c.ds.mask)
            x = np.asarray(c.noisy, dtype=np.float32)
            cls = wiener.noise_class(c.lag1)
            if cls != "correlated":
                raise ValueError(f"{case}: its noise is {cls}, not correlated in-plane")
            eng = white_stage.run_passes(c.noisy, c.pilot, block_matching.PASSES[cls])
            entry.update(lag1=list(c.lag1), network_alone_psnr=c.psnr(c.pilot), passes=ht_pilot._quality(c, flat, eng))
            for name in todo:
                start = time.perf_counter()
                b = estimate(x, c.pilot, table[name])
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
    against the engine's passes (mean ± sd over seeds of the paired difference, dB / SSIM)."""
    by_case: dict[str, list[dict]] = {}
    for path in sorted(root.glob(f"{OUT.stem}*.json")):
        for e in json.loads(path.read_text()).values():
            by_case.setdefault(e["case"], []).append(e)
    if not by_case:
        return ""
    cols = ["alone", *(f"mix {a:g}" for a in MIXES)]
    lines = [
        "| case | variant | seeds | s per run | " + " | ".join(f"{k} − engine's passes" for k in cols) + " |",
        "|---" * (4 + len(cols)) + "|",
    ]
    for case, entries in sorted(by_case.items()):
        entries.sort(key=lambda e: e["seed"])
        for n in [n for n in variants() if any(n in e["variants"] for e in entries)]:
            have = [e for e in entries if n in e["variants"]]
            diff = [wiener_grid.paired_cell([(e["variants"][n][k], e["passes"]) for e in have]) for k in cols]
            secs = np.mean([e["seconds"][n] for e in have])
            seeds = ", ".join(str(e["seed"]) for e in have)
            lines.append(f"| `{case}` | {n} | {seeds} | {secs:.0f} | " + " | ".join(diff) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    cases = {"tuning": TUNING_CASES, "reporting": REPORTING_CASES}
    return wiener_grid.variant_grid_main(
        argv, __doc__.splitlines()[0], OUT, cases, list(variants()), run, table, "the set's low-dose CT cases"
    )


if __name__ == "__main__":
    raise SystemExit(main())
