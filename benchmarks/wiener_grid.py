"""How the Wiener stage's two constants were chosen (issue 11, item 5): its noise factor and its share.

The Wiener stage (``NSN2NDenoiseLib/wiener.py``) filters the input with the network's output as the pilot; the
noise variance of each DCT coefficient is the removed residual's spectrum times a factor, and the result is
blended with the network's output. This script trains the network once per tuning case and seed (the engine with
``inference.wiener = 'off'``, i.e. the default before the stage existed), then scores every factor x share of
the grid, and the engine's own choice (``wiener.FACTORS`` of the run's noise class, ``wiener.SHARE``). Tuning
set only.

    python -m benchmarks.wiener_grid --cases cttune_ld_1e5,cttune_ld_2e4,mnitune_rician5,mnitune_rician10
    python -m benchmarks.wiener_grid --cases mnitune_rician5,cttune_ld_1e5 --bm4d   # + BM4D's Wiener step

The network's output is cached under ``benchmarks/.cache/wiener/`` (git-ignored; it is the deterministic output
of ``protocol.nsn2n_config('nsn2n_nowiener', seed)``). Writes ``benchmarks/results/protocol/wiener_grid.json``
(committed), one entry per case and seed.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from . import metrics, protocol

CACHE = Path(__file__).resolve().parent / ".cache" / "wiener"
OUT = protocol.RESULTS_DIR / "wiener_grid.json"
GRIDS = {
    "white": {"factor": (0.5, 1.0, 1.5, 2.0, 3.0), "share": (0.3, 0.5, 0.7, 1.0)},
    "correlated": {"factor": (1.0, 2.0, 4.0, 6.0), "share": (0.3, 0.5, 0.7, 1.0)},
}
"""Factor x share tried for each noise class (the tuning set's MRI is white, its CT correlated in-plane)."""


def cache_path(case: str, seed: int, row: str = "nsn2n") -> Path:
    """Where the network's output (before the Wiener stage) of the protocol's ``row`` on ``case`` at ``seed`` is
    cached, its info beside it (``.json``); the default's output has no row in its name."""
    return CACHE / (f"{case}_seed{seed}.npy" if row == "nsn2n" else f"{case}_seed{seed}_{row}.npy")


def network_output(case: str, seed: int, ds) -> tuple[np.ndarray, dict]:
    """The engine's output with the Wiener stage off, and its info (cached)."""
    CACHE.mkdir(parents=True, exist_ok=True)
    path = cache_path(case, seed)
    meta = path.with_suffix(".json")
    if path.is_file() and meta.is_file():
        return np.load(path), json.loads(meta.read_text())
    out, info = protocol._nsn2n(ds, seed, "nsn2n_nowiener")
    info.pop("_extra", None)
    np.save(path, out)
    meta.write_text(json.dumps(info, default=float))
    return out, info


def bm4d_with_pilot(ds, pilot: np.ndarray) -> float:
    """PSNR gain (dB) of BM4D's Wiener step with the network's output as its pilot and the true noise level (an
    oracle the engine does not have, and a library the engine may not ship): what block matching would add."""
    out = protocol._bm4d(ds.noisy, protocol.true_sigma(ds), pilot)
    return metrics.psnr(ds.clean, out, ds.mask, ds.data_range) - metrics.psnr(ds.clean, pilot, ds.mask, ds.data_range)


def run(cases: list[str], seeds: tuple[int, ...], with_bm4d: bool = False) -> dict:
    from NSN2NDenoiseLib import wiener

    stored = json.loads(OUT.read_text()) if OUT.is_file() else {}
    for case in cases:
        for seed in seeds:
            ds = protocol._build(case, seed)
            pilot, info = network_output(case, seed, ds)
            lag1 = tuple(info["inplane_noise_lag1"])
            cls = wiener.noise_class(lag1)
            axis = info["slice_axis"]

            def score(v, ds=ds):
                return metrics.psnr(ds.clean, v, ds.mask, ds.data_range)

            base = score(pilot)
            noisy = np.moveaxis(ds.noisy, axis, 0)
            spectrum = wiener.residual_spectrum(noisy, np.moveaxis(pilot, axis, 0))
            grid = {}
            for factor in GRIDS[cls]["factor"]:
                full = pilot.copy()
                wiener.wiener_into(noisy, np.moveaxis(full, axis, 0), factor * spectrum)
                for share in GRIDS[cls]["share"]:
                    grid[f"{factor:g}|{share:g}"] = score(pilot + np.float32(share) * (full - pilot)) - base
            engine = pilot.copy()
            t0 = time.perf_counter()
            chosen = wiener.apply_wiener(noisy, np.moveaxis(engine, axis, 0), lag1)
            seconds = time.perf_counter() - t0
            previous = stored.get(f"{case}/seed{seed}", {})
            extra = {"bm4d_pilot_true_sigma_gain_db": bm4d_with_pilot(ds, pilot)} if with_bm4d else {}
            if "bm4d_pilot_true_sigma_gain_db" in previous and not with_bm4d:
                extra["bm4d_pilot_true_sigma_gain_db"] = previous["bm4d_pilot_true_sigma_gain_db"]
            stored[f"{case}/seed{seed}"] = {
                **extra,
                "case": case,
                "seed": seed,
                "noise_class": cls,
                "inplane_noise_lag1": list(lag1),
                "network_psnr": base,
                "gain_db": grid,
                "engine": {**chosen, "gain_db": score(engine) - base, "seconds": seconds},
                "command": protocol._command(),
                "when": time.strftime("%Y-%m-%d %H:%M"),
                "machine": metrics.machine(),
            }
            protocol.log(
                f"{case} seed {seed}: network {base:.2f} dB, engine's Wiener stage {score(engine) - base:+.3f}"
            )
            OUT.write_text(json.dumps(stored, indent=1, default=float))
    return stored


def table(root: Path = protocol.RESULTS_DIR) -> str:
    """Mean ± sd over seeds of the gain (dB) of every grid point, by tuning case; the engine's choice in bold."""
    path = root / "wiener_grid.json"
    if not path.is_file():
        return ""
    from NSN2NDenoiseLib import wiener

    stored = json.loads(path.read_text())
    by_case: dict[str, list[dict]] = {}
    for entry in stored.values():
        by_case.setdefault(entry["case"], []).append(entry)
    lines = [
        "| case (tuning) | noise class | seeds | network alone | factor x share: gain in dB (mean ± sd) "
        "| engine's choice | BM4D's Wiener step, same pilot, true noise (oracle) |",
        "|---|---|---|---|---|---|---|",
    ]
    for case, entries in sorted(by_case.items()):
        entries.sort(key=lambda e: e["seed"])
        cls = entries[0]["noise_class"]
        cells = []
        for key in entries[0]["gain_db"]:
            s = protocol.summarise([e["gain_db"][key] for e in entries])
            factor, share = (float(v) for v in key.split("|"))
            text = f"{factor:g} x {share:g}: {s.mean:+.2f} ± {s.sd:.2f}"
            chosen = factor == wiener.FACTORS[cls] and share == wiener.SHARE
            cells.append(f"**{text}**" if chosen else text)
        engine = protocol.summarise([e["engine"]["gain_db"] for e in entries])
        base = protocol.summarise([e["network_psnr"] for e in entries])
        seeds = ", ".join(str(e["seed"]) for e in entries)
        oracle = [e["bm4d_pilot_true_sigma_gain_db"] for e in entries if "bm4d_pilot_true_sigma_gain_db" in e]
        b = protocol.summarise(oracle)
        bm4d = "not run" if not oracle else f"{b.mean:+.2f} ± {b.sd:.2f}" + ("" if b.n == len(entries) else f" ({b.n})")
        lines.append(
            f"| `{case}` | {cls} | {seeds} | {base.text()} | {'; '.join(cells)} "
            f"| **{engine.mean:+.2f} ± {engine.sd:.2f}** | {bm4d} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", default=",".join(protocol.TUNING_CASES))
    parser.add_argument("--seeds", default=",".join(map(str, protocol.SETS["tuning"]["seeds"])))
    parser.add_argument("--bm4d", action="store_true", help="also score BM4D's Wiener step with the same pilot")
    args = parser.parse_args(argv)
    run(args.cases.split(","), tuple(int(s) for s in args.seeds.split(",")), args.bm4d)
    print(table())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
