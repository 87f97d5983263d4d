"""A pilot that keeps texture: the Wiener stage with the network's output mixed with a hard-thresholded block-matched
estimate (BM3D/BM4D's first step). Measured for issue 11's white-noise SSIM gap, not adopted.

On white noise the default is ahead of BM4D given an estimated noise level in PSNR but about 0.002 behind it in
SSIM. The Wiener weights P**2 / (P**2 + v) cannot give back texture that the pilot P (the network's output) has
erased, and BM4D's pilot is its own hard-thresholded estimate, which keeps every coefficient above the noise. For
each case and seed, on the default's cached network output f (checked to score as the stored network-alone row):

- the engine's stage when this ran (``block_matching.MATCHED``, one pass; since then the engine runs two windowed
  passes on white noise, :mod:`benchmarks.white_stage`);
- h, the hard-thresholded estimate: the engine's groups (matched on f), the input's coefficients kept where
  |X| > ``lam`` sqrt(v) (v: the residual's spectrum, the engine's noise reading before its factor), each group
  added back with the weight 1 / (coefficients kept), as BM3D's first step;
- the engine's stage with the pilot a f + (1 - a) h, for each (lam, a, factor) of :data:`GRID`;
- PSNR and 3D SSIM of each, and the SSIM and mean squared error in the flattest quarter of the head (the 7-voxel
  local standard deviation of the clean volume), where the gap lies.

With ``--bm4d`` (white noise only), references the engine may not ship: BM4D with the estimated noise level (the
row the SSIM target compares with), its first step alone, and the engine's stage with the pilot (f + that first
step) / 2.

    python -m benchmarks.ht_pilot --cases <tuning cases> [--bm4d]

Writes ``benchmarks/results/protocol/wiener_htpilot.json`` (committed), one entry per case and seed. Arrays are
(K, J, I) with the slice axis first, in the volume's units.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from . import baselines, protocol, wiener_grid

OUT = protocol.RESULTS_DIR / "wiener_htpilot.json"
GRID = {"lam": (3.0,), "a": (0.3, 0.5, 0.7), "factor": (3.0, 4.0)}
"""Thresholds (in noise standard deviations), the network's share of the pilot and the Wiener factor tried. A
first look at one seed of two white tuning cases (threshold 2.0, 2.7, 3.0, 3.5; share 0 to 0.7; factor 1 to 4)
put the best PSNR and SSIM here."""
FLAT_SHARE = 0.25
"""The flattest share of the head mask by the clean volume's local standard deviation (7-voxel windows)."""


def hard_threshold(noisy: np.ndarray, pilot: np.ndarray, noise_variance: np.ndarray, lam: float) -> np.ndarray:
    """The hard-thresholded estimate of ``noisy`` (K, J, I) on the engine's block-matched groups of ``pilot``:
    every group's 3D DCT and Haar coefficients of the input are kept where their magnitude exceeds ``lam`` times the
    square root of ``noise_variance`` (the block's shape, units squared) and set to 0 elsewhere, and the groups are
    added back with the weight 1 / (coefficients kept): the engine's ``block_matching.matched_into`` with ``hard``,
    on a float32 copy of ``pilot``."""
    from NSN2NDenoiseLib import block_matching as bm

    out = np.array(pilot, dtype=np.float32)  # matched on, and overwritten behind the block rows still to come
    bm.matched_into(noisy, out, noise_variance, hard=lam)
    return out


def flat_region(clean: np.ndarray, mask: np.ndarray, share: float = FLAT_SHARE) -> np.ndarray:
    """The ``share`` of ``mask`` where the clean volume's local standard deviation (7-voxel uniform windows, the
    SSIM's) is lowest: flat soft tissue, where the white-noise SSIM gap lies."""
    from scipy import ndimage

    c = clean.astype(np.float64)
    mean = ndimage.uniform_filter(c, 7)
    sd = np.sqrt(np.maximum(ndimage.uniform_filter(c * c, 7) - mean * mean, 0.0))
    return mask & (sd <= np.quantile(sd[mask], share))


def _quality(c: wiener_grid._Case, flat: np.ndarray, v: np.ndarray) -> dict:
    """PSNR and 3D SSIM of ``v`` (slice axis first) in the head, and SSIM and mean squared error in ``flat``."""
    from skimage.metrics import structural_similarity

    ds = c.ds
    e = np.moveaxis(v, 0, c.info["slice_axis"]).astype(np.float64)
    _, smap = structural_similarity(ds.clean.astype(np.float64), e, data_range=ds.data_range, full=True)
    return {
        "psnr": c.psnr(v),
        "ssim": float(smap[ds.mask].mean()),
        "ssim_flat": float(smap[flat].mean()),
        "mse_flat": float(np.mean((e[flat] - ds.clean[flat]) ** 2)),
    }


def _stage(noisy: np.ndarray, pilot: np.ndarray, spectrum: np.ndarray, factor: float) -> np.ndarray:
    """The engine's block-matched stage with ``pilot`` and the noise variance ``factor`` x ``spectrum``."""
    from NSN2NDenoiseLib import block_matching

    out = pilot.astype(np.float32)  # a copy: the stage writes in place
    block_matching.matched_into(noisy, out, factor * spectrum)
    return out


def run(cases: list[str], seeds: tuple[int, ...], with_bm4d: bool = False) -> dict:
    """The experiment (module docstring) on ``cases`` x ``seeds``; each entry is stored as soon as it is done."""
    from NSN2NDenoiseLib import block_matching, wiener

    stored = json.loads(OUT.read_text()) if OUT.is_file() else {}
    f = block_matching.MATCHED
    for case in cases:
        for seed in seeds:
            c = wiener_grid._case(case, seed)
            c.check_stored_network(case, seed)
            flat = flat_region(c.ds.clean, c.ds.mask)
            noisy, net = c.noisy, c.pilot
            spectrum = wiener.residual_spectrum(noisy, net, f.block)
            entry = {
                "case": case,
                "seed": seed,
                "noise_class": wiener.noise_class(c.lag1),
                "network": _quality(c, flat, net),
                "engine": _quality(c, flat, _stage(noisy, net, spectrum, f.factor)),
                "hard": {},
                "mixed": {},
            }
            for lam in GRID["lam"]:
                ht = hard_threshold(noisy, net, spectrum, lam)
                entry["hard"][f"{lam:g}"] = _quality(c, flat, ht)
                for a in GRID["a"]:
                    pilot = a * net + (1 - a) * ht
                    for factor in GRID["factor"]:
                        key = f"{lam:g}/{a:g}/{factor:g}"
                        entry["mixed"][key] = _quality(c, flat, _stage(noisy, pilot, spectrum, factor))
            if with_bm4d:
                entry["bm4d"] = _bm4d_rows(c, flat, spectrum)
            best = max(entry["mixed"], key=lambda k: entry["mixed"][k]["psnr"])
            message = (
                f"{case} seed {seed}: engine {entry['engine']['psnr']:.3f} dB / {entry['engine']['ssim']:.4f}, "
                f"best mix {best} {entry['mixed'][best]['psnr']:.3f} / {entry['mixed'][best]['ssim']:.4f}"
            )
            wiener_grid._record(stored, OUT, f"{case}/seed{seed}", entry, message)
    return stored


def _bm4d_rows(c: wiener_grid._Case, flat: np.ndarray, spectrum: np.ndarray) -> dict:
    """BM4D with the estimated noise level, its first (hard-thresholding) step alone, and the engine's stage with
    the pilot (network + that first step) / 2, each scored by :func:`_quality`."""
    from NSN2NDenoiseLib import block_matching

    bm4d = baselines._import_bm4d()
    axis = c.info["slice_axis"]
    x = c.ds.noisy.astype(np.float64)
    sigma = baselines.estimated_sigma(c.ds.noisy)
    full = np.moveaxis(protocol._bm4d(c.ds.noisy, sigma), axis, 0)
    first = bm4d.bm4d(x, sigma, stage_arg=bm4d.BM4DStages.HARD_THRESHOLDING)
    first = np.moveaxis(np.asarray(first, dtype=np.float32), axis, 0)
    mixed = _stage(c.noisy, 0.5 * (c.pilot + first), spectrum, block_matching.MATCHED.factor)
    return {
        "sigma": sigma,
        "bm4d_est": _quality(c, flat, full),
        "bm4d_first_step": _quality(c, flat, first),
        "engine_with_bm4d_first_step": _quality(c, flat, mixed),
    }


def table(root: Path = protocol.RESULTS_DIR) -> str:
    """By case: mean ± sd over seeds of PSNR (dB) and SSIM of the network alone, the engine's stage, the
    hard-thresholded estimate and each mixed pilot (gain over the engine, paired by seed), with the flat quarter's
    SSIM; BM4D's rows where they ran."""
    by_case = wiener_grid._entries_by_case(root / OUT.name)
    if not by_case:
        return ""
    keys = [f"{lam:g}/{a:g}/{f:g}" for lam in GRID["lam"] for a in GRID["a"] for f in GRID["factor"]]
    lines = [
        "| case | noise class | seeds | network alone dB / SSIM | engine dB / SSIM (flat quarter) "
        "| hard-thresholded estimate dB / SSIM | "
        + " | ".join(f"pilot {k.split('/')[1]} f + rest h, factor {k.split('/')[2]}: − engine, dB / SSIM" for k in keys)
        + " | BM4D, estimated noise: dB / SSIM (flat quarter) | engine with (f + BM4D's first step) / 2 |",
        "|---" * (7 + len(keys) + 1) + "|",
    ]
    for case, entries in sorted(by_case.items()):
        entries.sort(key=lambda e: e["seed"])

        def mean(rows: list[dict], k: str) -> float:
            return protocol.summarise([r[k] for r in rows]).mean

        net = [e["network"] for e in entries]
        eng = [e["engine"] for e in entries]
        hard = [e["hard"][f"{GRID['lam'][0]:g}"] for e in entries]
        cells = []
        for k in keys:
            d = protocol.summarise([e["mixed"][k]["psnr"] - e["engine"]["psnr"] for e in entries])
            q = protocol.summarise([e["mixed"][k]["ssim"] - e["engine"]["ssim"] for e in entries])
            cells.append(f"{d.mean:+.2f} ± {d.sd:.2f} / {q.mean:+.4f} ± {q.sd:.4f}")
        with_bm4d = [e["bm4d"] for e in entries if "bm4d" in e]
        if with_bm4d:
            b = [r["bm4d_est"] for r in with_bm4d]
            m = [r["engine_with_bm4d_first_step"] for r in with_bm4d]
            ran = ", ".join(str(e["seed"]) for e in entries if "bm4d" in e)
            bm4d_cells = (
                f"{mean(b, 'psnr'):.2f} / {mean(b, 'ssim'):.4f} ({mean(b, 'ssim_flat'):.4f}; seeds {ran}) "
                f"| {mean(m, 'psnr'):.2f} / {mean(m, 'ssim'):.4f} ({mean(m, 'ssim_flat'):.4f})"
            )
        else:
            bm4d_cells = "not run | not run"
        lines.append(
            f"| {case} | {entries[0]['noise_class']} | {', '.join(str(e['seed']) for e in entries)} "
            f"| {mean(net, 'psnr'):.2f} / {mean(net, 'ssim'):.4f} "
            f"| {mean(eng, 'psnr'):.2f} / {mean(eng, 'ssim'):.4f} ({mean(eng, 'ssim_flat'):.4f}) "
            f"| {mean(hard, 'psnr'):.2f} / {mean(hard, 'ssim'):.4f} | {' | '.join(cells)} | {bm4d_cells} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", default=",".join(protocol.TUNING_CASES))
    parser.add_argument("--seeds", default=",".join(map(str, protocol.SETS["tuning"]["seeds"])))
    parser.add_argument("--bm4d", action="store_true", help="also BM4D with the estimated noise and its first step")
    args = parser.parse_args(argv)
    run(args.cases.split(","), tuple(int(s) for s in args.seeds.split(",")), args.bm4d)
    print(table())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
