"""How the Wiener stage was chosen (issue 11, item 5): its filters, their noise factors, and its share.

The Wiener stage (``NSN2NDenoiseLib/wiener.py``) filters the input with the network's output as the pilot; the
noise variance of each DCT coefficient is the removed residual's spectrum times a factor, and the result is
blended with the network's output. This script trains the network once per tuning case and seed (the engine with
``inference.wiener = 'off'``), then scores Wiener settings on that one output. Tuning set only. Two experiments:

- the first version's grid (one filter of 8-voxel blocks every 3 voxels): every factor x share, with that
  version's choice (:data:`FIRST_CHOICE`) marked; and, with ``--bm4d``, BM4D's own Wiener step on the same
  pilot with the true noise level (an oracle);
- ``--filters``: the block size of one filter (8, 6 or 4 voxels) at several factors, and the mean of the network's
  output with two or three filters' estimates, with the tuning set's choice of a pair (:data:`TWO_FILTERS`)
  marked (it lost on the reporting set; ``inference.wiener = 'filters'`` kept the first version's one filter);
- ``--matched``: the block-matched filter (``block_matching.MATCHED``, the default stage's one pass; on white noise the
  engine now runs two windowed passes, :mod:`benchmarks.white_stage`) and variants of it;
- ``--gate``: block matching against the DCT filter, PSNR and SSIM, by the noise's in-plane correlation (where
  'matched' gives way to the DCT filter);
- ``--passes``: the block-matched filter run again with its own estimate as the pilot (not adopted: it won on the
  tuning set's MNI152 and lost on the reporting set's Colin27).

    python -m benchmarks.wiener_grid --cases cttune_ld_1e5,cttune_ld_2e4,mnitune_rician5,mnitune_rician10
    python -m benchmarks.wiener_grid --cases mnitune_rician5,cttune_ld_1e5 --bm4d   # + BM4D's Wiener step
    python -m benchmarks.wiener_grid --filters
    python -m benchmarks.wiener_grid --passes [--cases <reporting cases> --seeds 1,2,3]
    python -m benchmarks.wiener_grid --gate --cases <cases> --seeds <seeds>

The network's output is cached under ``benchmarks/.cache/wiener/`` (git-ignored; it is the deterministic output
of ``protocol.nsn2n_config('nsn2n_nowiener', seed)``). Writes ``benchmarks/results/protocol/wiener_grid.json``
and ``wiener_filters.json`` (committed), one entry per case and seed.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import datasets, metrics, protocol

CACHE = Path(__file__).resolve().parent / ".cache" / "wiener"
OUT = protocol.RESULTS_DIR / "wiener_grid.json"
OUT_FILTERS = protocol.RESULTS_DIR / "wiener_filters.json"
OUT_MATCHED = protocol.RESULTS_DIR / "wiener_matched.json"
OUT_PASSES = protocol.RESULTS_DIR / "wiener_passes.json"
OUT_GATE = protocol.RESULTS_DIR / "wiener_gate.json"
FIRST_CHOICE = {"white": 2.0, "correlated": 4.0}
"""The first version's factor by noise class (one filter of 8-voxel blocks every 3 voxels, share 0.5)."""
FIRST_SHARE = 0.5
FILTER_FACTORS = {"white": (1.0, 2.0, 4.0), "correlated": (2.0, 4.0, 8.0)}
"""Factors tried for each filter in the ``--filters`` experiment, by noise class."""
TWO_FILTERS = {"white": "8:4|4:2", "correlated": "8:4|4:4"}
"""The pair of filters (block:factor) chosen on the tuning set by the ``--filters`` experiment; it lost on the
reporting set's MRI against the first version's one filter, which ``inference.wiener = 'filters'`` kept."""
FILTER_BLOCKS = ((8, 3), (6, 2), (4, 2))
"""(block, step) of the filters tried."""
GRIDS = {
    "white": {"factor": (0.5, 1.0, 1.5, 2.0, 3.0), "share": (0.3, 0.5, 0.7, 1.0)},
    "correlated": {"factor": (1.0, 2.0, 4.0, 6.0), "share": (0.3, 0.5, 0.7, 1.0)},
}
"""Factor x share tried for each noise class (the tuning set's MRI is white, its CT correlated in-plane)."""


@dataclass(frozen=True)
class _Case:
    """One case and seed of an experiment: its dataset, the network's output and that run's info; ``noisy`` and
    ``pilot`` have the slice axis first, as the Wiener stage takes them, and are scored back in the dataset's order."""

    ds: datasets.Dataset
    info: dict
    noisy: np.ndarray
    pilot: np.ndarray

    @property
    def lag1(self) -> tuple[float, float]:
        return tuple(self.info["inplane_noise_lag1"])  # type: ignore[return-value]

    def psnr(self, v: np.ndarray) -> float:
        """PSNR (dB) of ``v`` (slice axis first) against the clean volume, in the head mask."""
        ds = self.ds
        return metrics.psnr(ds.clean, np.moveaxis(v, 0, self.info["slice_axis"]), ds.mask, ds.data_range)

    def ssim(self, v: np.ndarray) -> float:
        """3D SSIM of ``v`` (slice axis first) against the clean volume, in the head mask."""
        ds = self.ds
        return metrics.ssim(ds.clean, np.moveaxis(v, 0, self.info["slice_axis"]), ds.mask, ds.data_range)[0]

    def check_stored_network(self, case: str, seed: int) -> None:
        """Raise unless the cached network output scores as the stored ``nsn2n_nowiener`` result (where stored)."""
        alone = protocol._load(protocol.result_path(case, seed, "nsn2n_nowiener"))
        if alone is not None and abs(alone["quality"]["psnr"] - self.psnr(self.pilot)) > 1e-9:
            raise RuntimeError(f"{case} seed {seed}: the cached network output is not the stored nsn2n_nowiener")


def _case(case: str, seed: int, row: str = "nsn2n") -> _Case:
    """The dataset of ``case`` at ``seed`` and the network's output of ``row`` on it (:func:`network_output`)."""
    ds = protocol._build(case, seed)
    pilot, info = network_output(case, seed, ds, row)
    axis = info["slice_axis"]
    return _Case(ds, info, np.moveaxis(ds.noisy, axis, 0), np.moveaxis(pilot, axis, 0))


def _record(stored: dict, out: Path, key: str, entry: dict, message: str) -> None:
    """Store one experiment's ``entry`` under ``key`` with the command, time and machine, log ``message`` and rewrite
    the experiment's result file ``out`` (after every case and seed, so an interrupted run keeps what it did)."""
    stored[key] = {
        **entry,
        "command": protocol._command(),
        "when": time.strftime("%Y-%m-%d %H:%M"),
        "machine": metrics.machine(),
    }
    protocol.log(message)
    out.write_text(json.dumps(stored, indent=1, default=float))


def variant_grid_main(
    argv: list[str] | None,
    description: str,
    out: Path,
    cases: dict[str, tuple[str, ...]],
    names: list[str],
    run,
    table,
    cases_help: str,
) -> int:
    """The command line of a grid of named variants over cases and seeds (``network_free_grid``, ``correlated_free``):
    ``--set`` (its default ``cases[set]`` and the protocol's seeds), ``--cases``, ``--seeds``, ``--variants`` (of
    ``names``) and ``--out`` (a file under the protocol's results named like ``out``); runs ``run(cases, seeds, names,
    out)`` and prints ``table()``."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--set", choices=("tuning", "reporting"), default="tuning")
    parser.add_argument("--cases", help=f"comma-separated; default: {cases_help}")
    parser.add_argument("--seeds", help="comma-separated; default: the set's")
    parser.add_argument("--variants", help="comma-separated names of variants(); default: all")
    parser.add_argument("--out", help=f"result file name under {protocol.RESULTS_DIR.name}/ (default {out.name})")
    args = parser.parse_args(argv)
    chosen = args.cases.split(",") if args.cases else list(cases[args.set])
    seeds = tuple(int(s) for s in args.seeds.split(",")) if args.seeds else tuple(protocol.SETS[args.set]["seeds"])
    wanted = args.variants.split(",") if args.variants else list(names)
    unknown = [n for n in wanted if n not in names]
    if unknown:
        parser.error(f"unknown variants {unknown}: choose from {list(names)}")
    path = out if not args.out else protocol.RESULTS_DIR / args.out
    if not path.name.startswith(out.stem) or path.suffix != ".json":
        parser.error(f"--out must be named {out.stem}<anything>.json")
    run(chosen, seeds, wanted, path)
    print(table())
    return 0


def cache_path(case: str, seed: int, row: str = "nsn2n") -> Path:
    """Where the network's output (before the Wiener stage) of the protocol's ``row`` on ``case`` at ``seed`` is
    cached, its info beside it (``.json``); the default's output has no row in its name."""
    return CACHE / (f"{case}_seed{seed}.npy" if row == "nsn2n" else f"{case}_seed{seed}_{row}.npy")


def network_output(case: str, seed: int, ds, row: str = "nsn2n") -> tuple[np.ndarray, dict]:
    """The engine's output with the Wiener stage off, and its info (cached). The default's is computed when it is
    not cached; another row's (``nsn2n_best_wiener``, ``nsn2n_fast``) is only read from the cache that the
    protocol's run of that row left."""
    CACHE.mkdir(parents=True, exist_ok=True)
    path = cache_path(case, seed, row)
    meta = path.with_suffix(".json")
    if path.is_file() and meta.is_file():
        return np.load(path), json.loads(meta.read_text())
    if row != "nsn2n":
        raise FileNotFoundError(f"{path} is missing: run the protocol's {row} row on {case} at seed {seed} first")
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
            spectrum = wiener.residual_spectrum(noisy, np.moveaxis(pilot, axis, 0), 8)
            grid = {}
            for factor in GRIDS[cls]["factor"]:
                full = pilot.copy()
                wiener.wiener_into(noisy, np.moveaxis(full, axis, 0), [(8, 3, factor * spectrum)])
                for share in GRIDS[cls]["share"]:
                    grid[f"{factor:g}|{share:g}"] = score(pilot + np.float32(share) * (full - pilot)) - base
            previous = stored.get(f"{case}/seed{seed}", {})
            extra = {"bm4d_pilot_true_sigma_gain_db": bm4d_with_pilot(ds, pilot)} if with_bm4d else {}
            if "bm4d_pilot_true_sigma_gain_db" in previous and not with_bm4d:
                extra["bm4d_pilot_true_sigma_gain_db"] = previous["bm4d_pilot_true_sigma_gain_db"]
            entry = {
                **extra,
                "case": case,
                "seed": seed,
                "noise_class": cls,
                "inplane_noise_lag1": list(lag1),
                "network_psnr": base,
                "gain_db": grid,
            }
            first = grid[f"{FIRST_CHOICE[cls]:g}|{FIRST_SHARE:g}"]
            message = f"{case} seed {seed}: network {base:.2f} dB, the first version's stage {first:+.3f}"
            _record(stored, OUT, f"{case}/seed{seed}", entry, message)
    return stored


def table(root: Path = protocol.RESULTS_DIR) -> str:
    """Mean ± sd over seeds of the gain (dB) of every grid point of the first version's grid, by tuning case; that
    version's choice (:data:`FIRST_CHOICE`) in bold."""
    path = root / "wiener_grid.json"
    if not path.is_file():
        return ""
    stored = json.loads(path.read_text())
    by_case: dict[str, list[dict]] = {}
    for entry in stored.values():
        by_case.setdefault(entry["case"], []).append(entry)
    lines = [
        "| case (tuning) | noise class | seeds | network alone | factor x share: gain in dB (mean ± sd) "
        "| the first version's choice | BM4D's Wiener step, same pilot, true noise (oracle) |",
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
            chosen = factor == FIRST_CHOICE[cls] and share == FIRST_SHARE
            cells.append(f"**{text}**" if chosen else text)
        engine = protocol.summarise([e["gain_db"][f"{FIRST_CHOICE[cls]:g}|{FIRST_SHARE:g}"] for e in entries])
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


def _estimate(noisy: np.ndarray, pilot: np.ndarray, block: int, step: int, variance: np.ndarray) -> np.ndarray:
    """One filter's Wiener estimate of ``noisy`` (slice axis first) with ``pilot`` as the signal estimate."""
    from NSN2NDenoiseLib import wiener

    out = pilot.copy()
    wiener.wiener_into(noisy, out, [(block, step, variance)])
    return out


def run_filters(cases: list[str], seeds: tuple[int, ...], row: str = "nsn2n") -> dict:
    """The ``--filters`` experiment: for each case and seed, the gain (dB over the network alone) of one filter of
    each of :data:`FILTER_BLOCKS` at each of :data:`FILTER_FACTORS` (share 0.5), of the mean of the network's output
    with an 8-voxel and a 4-voxel estimate at every pair of factors, of that mean with the network's output weighted
    0.2, 0.25 and 0.4 instead of a third, of the mean with a 6-voxel estimate added, and of the engine's own stage.
    ``row``: whose network's output is the pilot (the default's, or another protocol row's cached output)."""
    from NSN2NDenoiseLib import wiener

    stored = json.loads(OUT_FILTERS.read_text()) if OUT_FILTERS.is_file() else {}
    for case in cases:
        for seed in seeds:
            c = _case(case, seed, row)
            lag1, noisy, f, score = c.lag1, c.noisy, c.pilot, c.psnr
            cls = wiener.noise_class(lag1)
            base = score(f)
            est: dict[tuple[int, float], np.ndarray] = {}
            single = {}
            for block, step in FILTER_BLOCKS:
                spectrum = wiener.residual_spectrum(noisy, f, block)
                for k in FILTER_FACTORS[cls]:
                    est[block, k] = _estimate(noisy, f, block, step, k * spectrum)
                    single[f"{block}:{k:g}"] = score(0.5 * (f + est[block, k])) - base
            pairs = {
                f"8:{k8:g}|4:{k4:g}": score((f + est[8, k8] + est[4, k4]) / 3) - base
                for k8 in FILTER_FACTORS[cls]
                for k4 in FILTER_FACTORS[cls]
            }
            chosen = dict(pair.split(":") for pair in TWO_FILTERS[cls].split("|"))
            w8, w4 = est[8, float(chosen["8"])], est[4, float(chosen["4"])]
            weights = {f"{a:g}": score(a * f + (1 - a) / 2 * (w8 + w4)) - base for a in (0.2, 0.25, 0.4)}
            with_6 = {f"6:{k:g}": score((f + w8 + w4 + est[6, k]) / 4) - base for k in FILTER_FACTORS[cls]}
            engine = f.copy()
            t0 = time.perf_counter()
            wiener.wiener_into(
                noisy,
                engine,
                [
                    (b, 3 if b == 8 else 2, float(k) * wiener.residual_spectrum(noisy, f, b))
                    for b, k in ((8, chosen["8"]), (4, chosen["4"]))
                ],
                share=2 / 3,
            )
            report = {"filters": TWO_FILTERS[cls], "share": 2 / 3}
            seconds = time.perf_counter() - t0
            key = f"{case}/seed{seed}" + ("" if row == "nsn2n" else f"/{row}")
            entry = {
                "case": case,
                "seed": seed,
                "row": row,
                "noise_class": cls,
                "inplane_noise_lag1": list(lag1),
                "network_psnr": base,
                "single_share_0.5": single,
                "pair_thirds": pairs,
                "pair_network_weight": weights,
                "pair_plus_6_quarters": with_6,
                "engine": {**report, "gain_db": score(engine) - base, "seconds": seconds},
            }
            message = f"{case} seed {seed}: network {base:.2f} dB, the two filters {score(engine) - base:+.3f}"
            _record(stored, OUT_FILTERS, key, entry, message)
    return stored


def paired_cell(pairs: list[tuple[dict, dict]]) -> str:
    """Mean ± sd over seeds of a variant's PSNR (dB) and SSIM minus its baseline's, from (variant, baseline) result
    pairs of the same seed: '+d ± sd / +q ± sd'."""
    d, q = (protocol.summarise([v[k] - b[k] for v, b in pairs]) for k in ("psnr", "ssim"))
    return f"{d.mean:+.2f} ± {d.sd:.2f} / {q.mean:+.4f} ± {q.sd:.4f}"


def _entries_by_case(path: Path) -> dict[str, list[dict]]:
    """The entries of an experiment's result file grouped by their table label: the case, and the row whose network
    was the pilot where it is not the default's ({} when the file is missing)."""
    if not path.is_file():
        return {}
    by_case: dict[str, list[dict]] = {}
    for entry in json.loads(path.read_text()).values():
        row = entry.get("row", "nsn2n")
        label = f"`{entry['case']}`" + ("" if row == "nsn2n" else f", `{row}`'s network")
        by_case.setdefault(label, []).append(entry)
    return by_case


def filters_table(root: Path = protocol.RESULTS_DIR) -> str:
    """The ``--filters`` experiment by tuning case: mean ± sd over seeds of each setting's gain (dB), the engine's
    choice in bold, and the engine's gain paired against the first version's one-filter stage (on the same network
    output)."""
    by_case = _entries_by_case(root / "wiener_filters.json")
    if not by_case:
        return ""
    lines = [
        "| case | noise class | seeds | network alone | one filter, share 0.5 (block:factor) "
        "| mean of the network and an 8- and a 4-voxel estimate (8:factor, 4:factor) | network's weight instead "
        "of a third | a 6-voxel estimate added (quarters) | **the two filters** | two filters − first version |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for case, entries in sorted(by_case.items()):
        entries.sort(key=lambda e: e["seed"])
        cls = entries[0]["noise_class"]
        chosen = TWO_FILTERS[cls]

        def cells(group: str, label=lambda k: k, entries=entries, chosen=chosen) -> str:
            out = []
            for key in entries[0][group]:
                s = protocol.summarise([e[group][key] for e in entries])
                text = f"{label(key)}: {s.mean:+.2f} ± {s.sd:.2f}"
                out.append(f"**{text}**" if key == chosen else text)
            return "; ".join(out)

        engine = protocol.summarise([e["engine"]["gain_db"] for e in entries])
        first = f"8:{FIRST_CHOICE[cls]:g}"  # one 8-voxel filter, share 0.5: the first version
        paired = [e["engine"]["gain_db"] - e["single_share_0.5"][first] for e in entries]
        p = protocol.summarise(paired)
        lines.append(
            f"| {case} | {cls} | {', '.join(str(e['seed']) for e in entries)} "
            f"| {protocol.summarise([e['network_psnr'] for e in entries]).text()} "
            f"| {cells('single_share_0.5')} | {cells('pair_thirds', lambda k: k.replace('|', ' & '))} "
            f"| {cells('pair_network_weight', lambda k: 'w ' + k)} "
            f"| {cells('pair_plus_6_quarters')} | **{engine.mean:+.2f} ± {engine.sd:.2f}** "
            f"| {'–' if not paired else f'{p.mean:+.2f} ± {p.sd:.2f}'} |"
        )
    return "\n".join(lines)


MATCHED_VARIANTS = {
    "engine": {},
    "group 8, search 2 x 4": {"group": 8, "search": (2, 4)},
    "references every 4": {"step": 4},
}
"""The block-matched filter tried in the ``--matched`` experiment: the engine's constants and cheaper or larger
variants of them."""
MATCHED_FACTORS = (2.0, 4.0, 6.0)


def run_matched(cases: list[str], seeds: tuple[int, ...], row: str = "nsn2n") -> dict:
    """The ``--matched`` experiment: for each case and seed, the gain (dB over the network alone) of the
    block-matched filter (each of :data:`MATCHED_VARIANTS`, at each of :data:`MATCHED_FACTORS`, its estimate alone
    and half and half with the network's output) with its time, and of the engine's two stages ('matched' and
    'filters')."""
    import dataclasses

    from NSN2NDenoiseLib import block_matching, wiener

    stored = json.loads(OUT_MATCHED.read_text()) if OUT_MATCHED.is_file() else {}
    for case in cases:
        for seed in seeds:
            c = _case(case, seed, row)
            lag1, noisy, f, score = c.lag1, c.noisy, c.pilot, c.psnr
            base = score(f)
            variants = {}
            for name, change in MATCHED_VARIANTS.items():
                filt = dataclasses.replace(block_matching.MATCHED, **change)
                spectrum = wiener.residual_spectrum(noisy, f, filt.block)
                gains, seconds = {}, []
                for k in MATCHED_FACTORS:
                    est = f.copy()
                    t0 = time.perf_counter()
                    block_matching.matched_into(noisy, est, k * spectrum, f=filt)
                    seconds.append(time.perf_counter() - t0)
                    gains[f"{k:g}|1"] = score(est) - base
                    gains[f"{k:g}|0.5"] = score(0.5 * (f + est)) - base
                variants[name] = {"filter": dataclasses.asdict(filt), "gain_db": gains, "seconds": min(seconds)}
            engine = {}
            for kind in ("matched", "filters"):
                out = f.copy()
                t0 = time.perf_counter()
                report = wiener.apply_wiener(noisy, out, lag1, kind)
                engine[kind] = {**report, "gain_db": score(out) - base, "seconds": time.perf_counter() - t0}
            key = f"{case}/seed{seed}" + ("" if row == "nsn2n" else f"/{row}")
            entry = {
                "case": case,
                "seed": seed,
                "row": row,
                "noise_class": wiener.noise_class(lag1),
                "network_psnr": base,
                "variants": variants,
                "engine": engine,
            }
            message = (
                f"{case} seed {seed}: network {base:.2f} dB, matched {engine['matched']['gain_db']:+.3f}, "
                f"filters {engine['filters']['gain_db']:+.3f}"
            )
            _record(stored, OUT_MATCHED, key, entry, message)
    return stored


def matched_table(root: Path = protocol.RESULTS_DIR) -> str:
    """The ``--matched`` experiment by case: mean ± sd over seeds of each variant's gain (dB) at each factor, alone
    (share 1) and half and half, with its time; the engine's two stages and their paired difference."""
    by_case = _entries_by_case(root / "wiener_matched.json")
    if not by_case:
        return ""
    names = list(MATCHED_VARIANTS)
    lines = [
        "| case | noise class | seeds | network alone | "
        + " | ".join(f"{n} (factor share: gain; seconds)" for n in names)
        + " | **engine, 'matched'** | engine, 'filters' | matched − filters |",
        "|---" * (7 + len(names)) + "|",
    ]
    for case, entries in sorted(by_case.items()):
        entries.sort(key=lambda e: e["seed"])
        cells = []
        for n in names:
            have = [e for e in entries if n in e["variants"]]
            if not have:
                cells.append("not run")
                continue
            parts = []
            for key in have[0]["variants"][n]["gain_db"]:
                s = protocol.summarise([e["variants"][n]["gain_db"][key] for e in have])
                k, share = key.split("|")
                text = f"{k} {share}: {s.mean:+.2f} ± {s.sd:.2f}"
                parts.append(f"**{text}**" if n == "engine" and key == "4|1" else text)
            secs = protocol.summarise([e["variants"][n]["seconds"] for e in have])
            cells.append("; ".join(parts) + f"; {secs.mean:.1f} s")
        m = protocol.summarise([e["engine"]["matched"]["gain_db"] for e in entries])
        fl = protocol.summarise([e["engine"]["filters"]["gain_db"] for e in entries])
        d = protocol.summarise([e["engine"]["matched"]["gain_db"] - e["engine"]["filters"]["gain_db"] for e in entries])
        lines.append(
            f"| {case} | {entries[0]['noise_class']} | {', '.join(str(e['seed']) for e in entries)} "
            f"| {protocol.summarise([e['network_psnr'] for e in entries]).text()} | {' | '.join(cells)} "
            f"| **{m.mean:+.2f} ± {m.sd:.2f}** | {fl.mean:+.2f} ± {fl.sd:.2f} | {d.mean:+.2f} ± {d.sd:.2f} |"
        )
    return "\n".join(lines)


PASS_SEQUENCES = ((4.0,), (4.0, 3.0), (4.0, 3.0, 3.0), (4.0, 3.0, 3.0, 3.0))
"""The ``--passes`` experiment: block matching run again with its own estimate as the pilot, the factor of each pass
in order (the first is the engine's)."""


def run_passes(cases: list[str], seeds: tuple[int, ...]) -> dict:
    """The ``--passes`` experiment: for each case and seed, PSNR gain (dB over the network alone) and 3D SSIM of the
    engine's block-matched filter repeated as in :data:`PASS_SEQUENCES`, each pass with the previous estimate as its
    pilot and the residual of the input against that estimate for its noise spectrum. Runs on the tuning set and,
    to check a tuning choice, on the reporting set (the default's cached network output, checked to score as the
    stored ``nsn2n_nowiener`` result does)."""
    from NSN2NDenoiseLib import block_matching, wiener

    stored = json.loads(OUT_PASSES.read_text()) if OUT_PASSES.is_file() else {}
    f = block_matching.MATCHED
    for case in cases:
        for seed in seeds:
            c = _case(case, seed)
            c.check_stored_network(case, seed)
            noisy = c.noisy
            base, base_ssim = c.psnr(c.pilot), c.ssim(c.pilot)
            estimates: dict[tuple[float, ...], np.ndarray] = {(): c.pilot}
            sequences = {}
            for sequence in PASS_SEQUENCES:
                for n in range(1, len(sequence) + 1):
                    key = sequence[:n]
                    if key in estimates:
                        continue
                    previous = estimates[key[:-1]]
                    est = previous.copy()
                    spectrum = wiener.residual_spectrum(noisy, previous, f.block)
                    block_matching.matched_into(noisy, est, key[-1] * spectrum)
                    estimates[key] = est
                    sequences[">".join(f"{k:g}" for k in key)] = {"gain_db": c.psnr(est) - base, "ssim": c.ssim(est)}
            entry = {
                "case": case,
                "seed": seed,
                "noise_class": wiener.noise_class(c.lag1),
                "network_psnr": base,
                "network_ssim": base_ssim,
                "sequences": sequences,
            }
            message = f"{case} seed {seed}: " + ", ".join(f"{k} {v['gain_db']:+.3f}" for k, v in sequences.items())
            _record(stored, OUT_PASSES, f"{case}/seed{seed}", entry, message)
    return stored


def passes_table(root: Path = protocol.RESULTS_DIR) -> str:
    """The ``--passes`` experiment by case: mean ± sd over seeds of each sequence's gain (dB) and SSIM, and of the
    difference of each sequence from the one before it (paired by seed)."""
    by_case = _entries_by_case(root / OUT_PASSES.name)
    if not by_case:
        return ""
    names = [">".join(f"{k:g}" for k in seq) for seq in PASS_SEQUENCES]
    lines = [
        "| case | noise class | seeds | network alone (dB / SSIM) | "
        + " | ".join(f"passes {n}: gain dB / SSIM" for n in names)
        + " | "
        + " | ".join(f"{b} − {a} (paired)" for a, b in zip(names, names[1:], strict=False))
        + " |",
        "|---" * (4 + 2 * len(names) - 1) + "|",
    ]
    for case, entries in sorted(by_case.items()):
        entries.sort(key=lambda e: e["seed"])
        cells = []
        for n in names:
            g = protocol.summarise([e["sequences"][n]["gain_db"] for e in entries])
            q = protocol.summarise([e["sequences"][n]["ssim"] for e in entries])
            cells.append(f"{g.mean:+.2f} ± {g.sd:.2f} / {q.mean:.4f}")
        for a, b in zip(names, names[1:], strict=False):
            d = protocol.summarise([e["sequences"][b]["gain_db"] - e["sequences"][a]["gain_db"] for e in entries])
            cells.append(f"{d.mean:+.2f} ± {d.sd:.2f}")
        net = protocol.summarise([e["network_psnr"] for e in entries])
        ssim = protocol.summarise([e["network_ssim"] for e in entries])
        lines.append(
            f"| {case} | {entries[0]['noise_class']} | {', '.join(str(e['seed']) for e in entries)} "
            f"| {net.text()} / {ssim.mean:.4f} | {' | '.join(cells)} |"
        )
    return "\n".join(lines)


def run_gate(cases: list[str], seeds: tuple[int, ...]) -> dict:
    """The ``--gate`` experiment: for each case and seed, the measured in-plane lag-1 correlation of the noise and
    the PSNR and 3D SSIM of the network alone, of block matching (``block_matching.MATCHED`` whatever the noise,
    as 'matched' ran before its gate) and of the DCT filter ('filters'), on the default's cached network output
    (checked to score as the stored ``nsn2n_nowiener`` result does). Where block matching gives way to the DCT
    filter (``wiener.MATCHED_MAX_LAG1``) was chosen from it."""
    from NSN2NDenoiseLib import block_matching, wiener

    stored = json.loads(OUT_GATE.read_text()) if OUT_GATE.is_file() else {}
    for case in cases:
        for seed in seeds:
            c = _case(case, seed)
            c.check_stored_network(case, seed)
            lag1, noisy, f = c.lag1, c.noisy, c.pilot

            def quality(v, c=c):
                return {"psnr": c.psnr(v), "ssim": c.ssim(v)}

            network = quality(f)
            matched = f.copy()
            spectrum = wiener.residual_spectrum(noisy, f, block_matching.MATCHED.block)
            block_matching.matched_into(noisy, matched, block_matching.MATCHED.factor * spectrum)
            filtered = f.copy()
            wiener.apply_wiener(noisy, filtered, lag1, "filters")
            entry = {
                "case": case,
                "seed": seed,
                "inplane_noise_lag1": list(lag1),
                "network": network,
                "matched": quality(matched),
                "filters": quality(filtered),
                "engine_runs": wiener.stage_kind("matched", lag1),
            }
            m, fl = entry["matched"], entry["filters"]
            message = (
                f"{case} seed {seed}: lag1 {max(abs(v) for v in lag1):.2f}, matched - filters "
                f"{m['psnr'] - fl['psnr']:+.3f} dB, SSIM {m['ssim'] - fl['ssim']:+.4f}"
            )
            _record(stored, OUT_GATE, f"{case}/seed{seed}", entry, message)
    return stored


def gate_table(root: Path = protocol.RESULTS_DIR) -> str:
    """The ``--gate`` experiment by case, ordered by the noise's lag-1 correlation: mean ± sd over seeds of block
    matching's and the DCT filter's PSNR and SSIM, their paired differences, and the stage the engine runs."""
    by_case = _entries_by_case(root / OUT_GATE.name)
    if not by_case:
        return ""
    lines = [
        "| case | seeds | in-plane lag-1 | network alone dB / SSIM | block matching dB / SSIM | DCT filter dB / SSIM "
        "| matched − filter, dB (paired) | matched − filter, SSIM (paired) | the engine runs |",
        "|---" * 9 + "|",
    ]

    def lag(entries):
        return float(np.mean([max(abs(v) for v in e["inplane_noise_lag1"]) for e in entries]))

    for case, entries in sorted(by_case.items(), key=lambda item: lag(item[1])):
        entries.sort(key=lambda e: e["seed"])
        cells = []
        for kind in ("network", "matched", "filters"):
            p = protocol.summarise([e[kind]["psnr"] for e in entries])
            q = protocol.summarise([e[kind]["ssim"] for e in entries])
            cells.append(f"{p.text()} / {q.mean:.4f}")
        for key, digits in (("psnr", 2), ("ssim", 4)):
            d = protocol.summarise([e["matched"][key] - e["filters"][key] for e in entries])
            cells.append(f"{d.mean:+.{digits}f} ± {d.sd:.{digits}f}")
        runs = sorted({e["engine_runs"] for e in entries})
        lines.append(
            f"| {case} | {', '.join(str(e['seed']) for e in entries)} | {lag(entries):.2f} | {' | '.join(cells)} "
            f"| {', '.join(runs)} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", default=",".join(protocol.TUNING_CASES))
    parser.add_argument("--seeds", default=",".join(map(str, protocol.SETS["tuning"]["seeds"])))
    parser.add_argument("--bm4d", action="store_true", help="also score BM4D's Wiener step with the same pilot")
    parser.add_argument("--filters", action="store_true", help="the filters experiment instead of the first grid")
    parser.add_argument("--matched", action="store_true", help="the block-matched filter's experiment")
    parser.add_argument("--passes", action="store_true", help="block matching repeated with its own estimate as pilot")
    parser.add_argument(
        "--gate", action="store_true", help="block matching against the DCT filter by noise correlation"
    )
    parser.add_argument("--row", default="nsn2n", help="--filters/--matched on this row's cached network output")
    args = parser.parse_args(argv)
    seeds = tuple(int(s) for s in args.seeds.split(","))
    if args.gate:
        run_gate(args.cases.split(","), seeds)
        print(gate_table())
        return 0
    if args.passes:
        run_passes(args.cases.split(","), seeds)
        print(passes_table())
        return 0
    if args.matched:
        run_matched(args.cases.split(","), seeds, args.row)
        print(matched_table())
        return 0
    if args.filters:
        run_filters(args.cases.split(","), seeds, args.row)
        print(filters_table())
        return 0
    run(args.cases.split(","), seeds, args.bm4d)
    print(table())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
