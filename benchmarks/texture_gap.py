"""The white-noise SSIM gap: where it lies, and the default averaged with an estimate of BM4D's kind (a lead).

With the wavelet or the engine's own noise level the average hangs on that level; with the level read inside the
body (``--sigma body``) mix 0.5 wins on every white tuning case, and the engine's white stage now ends with it
(``block_matching.NETWORK_FREE_SHARE``; RESULTS.md). ``engine`` here is the stage's passes without it.

With white Gaussian noise the default is ahead of BM4D as users run it in PSNR and behind it in SSIM, and the gap
lies in flat soft tissue (``ht_pilot``). For each case and seed, on the default's cached network output f (its PSNR
stored beside the stored network-alone row's: a training on another machine differs from it by a few hundredths of
a dB, and every variant is paired with the engine on the same f), this measures:

- ``engine``: the engine's block-matched passes (``block_matching.PASSES`` for the case's noise class), as
  ``wiener.apply_wiener`` runs them before the network-free estimate is averaged in;
- ``bm-like``: an estimate that uses no network, of BM4D's kind (the engine's first ``block_matching.network_free``,
  which ``network_free_grid`` then made more like BM4D's): the hard-thresholded estimate (2.7 noise standard
  deviations) on groups matched on the *input* itself, then one block-matched Wiener pass (``block_matching.MATCHED``)
  with it as the pilot; the noise variance of every DCT
  coefficient is the same, the square of a noise level: ``--sigma wavelet`` (the default), the one BM4D as users
  run it gets (scikit-image's wavelet estimate on the input); ``--sigma pairs``, the engine's own, from neighbouring
  slices (the run report's ``noise_sigma``); ``--sigma body``, the finest 3D Haar detail of the input in the
  flattest half of the body (:func:`body_sigma`, the engine's); ``--sigma true``, the simulated noise's own level
  (an oracle, the reference the others are read against);
- ``mix a``: (1 - a) x engine + a x bm-like, for a in :data:`MIXES`;
- with ``--bm4d``: BM4D itself with that noise level, and the engine's output averaged with it half and half;
- in the flattest quarter of the head (``ht_pilot.flat_region``), the error of the network alone, of the engine and
  of bm-like split into the share of the noise kept (the regression coefficient of the error on the noise), the
  share of the clean texture kept (its coefficient on the clean volume's high-pass, the clean volume minus its
  5-voxel box mean; -1: all of it lost, 0: all kept) and what is left.

    python -m benchmarks.texture_gap                    # the white tuning cases, 3 seeds
    python -m benchmarks.texture_gap --cases cttune_gauss30 --seeds 100 --bm4d
    python -m benchmarks.texture_gap --sigma pairs --seeds 100
    python -m benchmarks.texture_gap --sigma body       # the white tuning cases, 3 seeds (and --sigma true)

Writes ``benchmarks/results/protocol/wiener_texture.json`` (committed), one entry per case and seed. Arrays are
(K, J, I) with the slice axis first, in the volume's units.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from scipy import ndimage

from . import baselines, ht_pilot, protocol, white_stage, wiener_grid

OUT = protocol.RESULTS_DIR / "wiener_texture.json"
TUNING_CASES = ("cttune_gauss30", "mnitune_rician5", "mnitune_rician10")
"""The tuning set's cases with white noise."""
MIXES = (0.3, 0.5, 0.7)
"""Weights of the bm-like estimate in the average with the engine's output."""
SIGMA_SOURCES = ("wavelet", "pairs", "body", "true")
"""Where bm-like's noise level comes from (:func:`noise_level`)."""
TEXTURE_BOX = 5
"""Edge in voxels of the box mean whose difference from the clean volume is its texture."""


def bm_like(noisy: np.ndarray, sigma: float) -> np.ndarray:
    """The network-free estimate of BM4D's kind (module docstring) of ``noisy`` (K, J, I) with noise level ``sigma``
    (the volume's units); float32: the engine's first ``block_matching.network_free``, the 4-voxel filter in both
    passes (``network_free_grid``'s 'first'; the engine's estimate now uses BM4D's windows, ``network_free_grid``)."""
    from . import network_free_grid

    return network_free_grid.estimate(np.asarray(noisy, dtype=np.float32), sigma, network_free_grid.variants()["first"])


def split_error(estimate: np.ndarray, clean: np.ndarray, noisy: np.ndarray, region: np.ndarray) -> dict:
    """The error of ``estimate`` in ``region`` (all (K, J, I)): its mean square, the coefficients of the noise kept and
    of the texture kept (module docstring) and the mean square of what neither explains (units squared)."""
    hp = clean - ndimage.uniform_filter(clean, TEXTURE_BOX)
    e = (estimate - clean)[region].astype(np.float64)
    n = (noisy - clean)[region].astype(np.float64)
    t = hp[region].astype(np.float64)
    a = float((e * n).sum() / (n * n).sum())
    rest = e - a * n
    b = float((rest * t).sum() / (t * t).sum())
    return {
        "mse": float(np.mean(e * e)),
        "noise_kept": a,
        "texture_kept": b,
        "other_mse": float(np.mean((rest - b * t) ** 2)),
    }


def body_sigma(x: np.ndarray) -> float:
    """The noise level read inside the body: the engine's ``noise_estimates.body_sigma``."""
    from NSN2NDenoiseLib.noise_estimates import body_sigma as engine_body_sigma

    return engine_body_sigma(x)


def noise_level(source: str, x: np.ndarray, info: dict, true: float | None = None) -> float:
    """The noise level (the volume's units) that bm-like is given: 'wavelet', scikit-image's wavelet estimate on the
    input ``x`` (BM4D's as users run it); 'pairs', the engine's own from neighbouring slices (``info['noise_sigma']``,
    the run report's); 'body', :func:`body_sigma` of ``x``; 'true', ``true`` (the simulated noise's)."""
    if source == "wavelet":
        return baselines.estimated_sigma(x)
    if source == "pairs":
        return float(info["noise_sigma"])
    if source == "body":
        return body_sigma(x)
    if source == "true" and true is not None:
        return float(true)
    raise ValueError(f"unknown noise level source {source!r}: choose one of {', '.join(SIGMA_SOURCES)}")


def entry_key(case: str, seed: int, source: str) -> str:
    """An entry's key in the result file (the wavelet source's keys carry no suffix, as first stored)."""
    return f"{case}/seed{seed}" + ("" if source == "wavelet" else f"/{source}")


def run(cases: list[str], seeds: tuple[int, ...], with_bm4d: bool = False, source: str = "wavelet") -> dict:
    """The experiment (module docstring) on ``cases`` x ``seeds`` with the noise level of ``source``
    (:func:`noise_level`); each entry is stored as soon as it is done, and one stored already (with BM4D where
    ``with_bm4d``) is kept, not measured again."""
    from NSN2NDenoiseLib import block_matching, wiener

    stored = json.loads(OUT.read_text()) if OUT.is_file() else {}
    for case in cases:
        for seed in seeds:
            done = stored.get(entry_key(case, seed, source))
            if done is not None and (not with_bm4d or "BM4D" in done["variants"]):
                continue  # stored already (delete the entry to measure it again)
            c = wiener_grid._case(case, seed)
            alone = protocol._load(protocol.result_path(case, seed, "nsn2n_nowiener"))
            flat = ht_pilot.flat_region(c.ds.clean, c.ds.mask)
            axis = c.info["slice_axis"]
            clean = np.moveaxis(c.ds.clean, axis, 0).astype(np.float32)
            region = np.moveaxis(flat, axis, 0)
            x = np.asarray(c.noisy, dtype=np.float32)
            sigma = noise_level(source, x, c.info, protocol.true_sigma(c.ds))
            start = time.perf_counter()
            eng = white_stage.run_passes(c.noisy, c.pilot, block_matching.PASSES[wiener.noise_class(c.lag1)])
            engine_s = time.perf_counter() - start
            start = time.perf_counter()
            b = bm_like(x, sigma)
            outputs = {"engine": eng, "bm-like": b, **{f"mix {a:g}": (1 - a) * eng + a * b for a in MIXES}}
            entry = {
                "case": case,
                "seed": seed,
                "noise_class": wiener.noise_class(c.lag1),
                "sigma_source": source,
                "sigma_estimated": sigma,
                "true_sigma": protocol.true_sigma(c.ds),
                "network_alone_psnr": c.psnr(c.pilot),
                "stored_network_alone_psnr": None if alone is None else alone["quality"]["psnr"],
                "seconds": {"engine": engine_s, "bm-like": time.perf_counter() - start},
                "variants": {n: ht_pilot._quality(c, flat, v) for n, v in outputs.items()},
                "flat_error": {
                    n: split_error(v, clean, x, region)
                    for n, v in (("network alone", c.pilot), ("engine", eng), ("bm-like", b))
                },
            }
            if with_bm4d:
                bm4d = baselines._import_bm4d()
                ref = bm4d.bm4d(x.astype(np.float64), sigma).astype(np.float32)
                entry["variants"]["BM4D"] = ht_pilot._quality(c, flat, ref)
                entry["variants"]["mix 0.5 with BM4D"] = ht_pilot._quality(c, flat, 0.5 * eng + 0.5 * ref)
                entry["flat_error"]["BM4D"] = split_error(ref, clean, x, region)
            got = entry["variants"]
            message = f"{case} seed {seed}: " + ", ".join(
                f"{n} {v['psnr']:.3f}/{v['ssim']:.4f}" for n, v in got.items()
            )
            wiener_grid._record(stored, OUT, entry_key(case, seed, source), entry, message)
    return stored


def table(root: Path = protocol.RESULTS_DIR) -> str:
    """By case: the engine's PSNR (dB) / SSIM, each other variant paired with it by seed (mean ± sd of the difference,
    dB / SSIM), and the flat quarter's error split for the engine and bm-like."""
    path = root / OUT.name
    if not path.is_file():
        return ""
    by_case: dict[str, list[dict]] = {}
    for e in json.loads(path.read_text()).values():
        by_case.setdefault(f"`{e['case']}`, {e.get('sigma_source', 'wavelet')} noise level", []).append(e)
    names = ["bm-like", *(f"mix {a:g}" for a in MIXES), "BM4D", "mix 0.5 with BM4D"]
    lines = [
        "| case | seeds | engine dB / SSIM | "
        + " | ".join(f"{n}: − engine, dB / SSIM" for n in names)
        + " | flat quarter, engine / bm-like: noise kept, texture kept, other error (HU² or units²) |",
        "|---" * (4 + len(names)) + "|",
    ]
    for case, entries in sorted(by_case.items()):
        entries.sort(key=lambda e: e["seed"])
        eng = [e["variants"]["engine"] for e in entries]
        cells = []
        for n in names:
            have = [(e["variants"][n], p) for e, p in zip(entries, eng, strict=True) if n in e["variants"]]
            if not have:
                cells.append("not run")
                continue
            seeds = "" if len(have) == len(entries) else f" ({len(have)} seed)"
            cells.append(wiener_grid.paired_cell(have) + seeds)
        split = " / ".join(
            ", ".join(
                f"{np.mean([e['flat_error'][n][k] for e in entries]):.2f}" for k in ("noise_kept", "texture_kept")
            )
            + f", {np.mean([e['flat_error'][n]['other_mse'] for e in entries]):.0f}"
            for n in ("engine", "bm-like")
        )
        p, s = protocol.summarise([v["psnr"] for v in eng]), np.mean([v["ssim"] for v in eng])
        lines.append(
            f"| {case} | {', '.join(str(e['seed']) for e in entries)} | {p.mean:.2f} ± {p.sd:.2f} / {s:.4f} "
            f"| {' | '.join(cells)} | {split} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", help="comma-separated; default: the white tuning cases")
    parser.add_argument("--seeds", help="comma-separated; default: the tuning set's")
    parser.add_argument("--bm4d", action="store_true", help="also BM4D itself (optional package, minutes per seed)")
    parser.add_argument("--sigma", choices=SIGMA_SOURCES, default="wavelet", help="bm-like's noise level")
    args = parser.parse_args(argv)
    cases = args.cases.split(",") if args.cases else list(TUNING_CASES)
    seeds = tuple(int(s) for s in args.seeds.split(",")) if args.seeds else tuple(protocol.SETS["tuning"]["seeds"])
    run(cases, seeds, args.bm4d, args.sigma)
    print(table())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
