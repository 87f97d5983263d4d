"""Print an ablation table (Markdown) from the benchmark's result cache: every NSN2N row of one dataset, with the
configuration fields in which it differs from a reference row. Computes nothing.

    python -m benchmarks.ablation_table ct_ld_1e5 --quick --reference nsn2n_default

Reading the cache rather than one run's ``results.json`` keeps every row that was ever computed on the same noisy
volume, each with the configuration it actually ran with (stored in its JSON), even after the defaults changed.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from . import datasets, noise


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        out.update(_flatten(v, key + ".") if isinstance(v, dict) else {key: v})
    return out


def _rows(cache_dir: Path) -> dict[str, dict]:
    rows = {}
    for path in sorted(cache_dir.glob("*.json")):
        r = json.loads(path.read_text())
        rows[r["method"] if not r["method"].startswith("nsn2n") else path.stem] = r
    return rows


# Configuration fields added after some rows were cached, with the value that the rows run before them had in
# effect: a row without the field is compared as if it had this value.
BEFORE_FIELD = {"loss.target_warmup": 0.0}
# Options removed from the engine (experiments that lost their ablation), with the behaviour the engine kept: a row
# cached before the removal differs from the reference in such a field only where it ran another value, and a row
# cached after it is compared as if it had this value.
REMOVED_FIELD = {
    "normalization_percentiles": [0.5, 99.5],
    "weights.lowpass": "gaussian",
    "weights.adaptive_tau": True,
    "weights.soft": False,
    "weights.energy_test": True,
    "loss.symmetric": True,
    "loss.normalization": "all",
    "loss.target": "cubic",
    "loss.three_slice_weights": "direct",
    "network.residual": True,
    "network.context_slices": 0,
    "inference.safeguard": False,
    "inference.safeguard_factor": 2.0,
}
# inference.tta was a flag (all 8 transforms or none) before it became their number.
TTA_FLAG = {True: 8, False: 1}


def _config(row: dict) -> dict:
    """The flattened configuration of a cached row, with every field of :data:`BEFORE_FIELD` and
    :data:`REMOVED_FIELD` filled in."""
    cfg = {**BEFORE_FIELD, **REMOVED_FIELD, **_flatten(row["info"]["config"])}
    if isinstance(cfg.get("inference.tta"), bool):
        cfg["inference.tta"] = TTA_FLAG[cfg["inference.tta"]]
    if isinstance(cfg.get("normalization_percentiles"), tuple):
        cfg["normalization_percentiles"] = list(cfg["normalization_percentiles"])
    return cfg


def table(cache_dir: Path, reference: str, ct: bool) -> str:
    rows = _rows(cache_dir)
    ref = next((r for k, r in rows.items() if k.startswith(reference + "_") or k == reference), None)
    ref_cfg = _config(ref) if ref else {}
    ref_psnr = ref["quality"]["psnr"] if ref else None
    skip = {"device", "preset", "training.threads"}
    tissue = " soft | bone |" if ct else ""
    head = f"| row | PSNR dB | vs reference dB | SSIM | RMSE |{tissue} time s | differs from the reference in |"
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    order = sorted(rows.items(), key=lambda kv: (not kv[0].startswith("nsn2n"), -kv[1]["quality"]["psnr"]))
    seen = set()
    for key, r in order:
        ident = (r["quality"]["psnr"], r["cost"]["seconds"])
        if ident in seen:  # the same computation cached under two names
            continue
        seen.add(ident)
        q = r["quality"]
        name = key.rsplit("_", 1)[0] if key.startswith("nsn2n") else key
        diff = ""
        if key.startswith("nsn2n") and "config" in r.get("info", {}):
            cfg = _config(r)
            diff = ", ".join(f"{k}={cfg[k]}" for k in sorted(cfg) if k not in skip and cfg[k] != ref_cfg.get(k))
            diff = diff or "(reference)"
        delta = f"{q['psnr'] - ref_psnr:+.2f}" if (ref_psnr is not None and key.startswith("nsn2n")) else ""
        cells = [name, f"{q['psnr']:.2f}", delta, f"{q['ssim']:.3f}", f"{q['rmse']:.1f}"]
        if ct:
            cells += [f"{q['rmse_soft']:.1f}", f"{q['rmse_bone']:.1f}"]
        cells += [f"{r['cost']['seconds']:.0f}", diff]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.ablation_table", description=__doc__.splitlines()[0])
    p.add_argument("dataset", choices=tuple(datasets.DATASETS), help="dataset name, as in benchmarks.run")
    p.add_argument("--quick", action="store_true", help="the quick run's crop (as benchmarks.run --quick)")
    p.add_argument("--seed", type=int, default=0, help="noise seed (default 0)")
    p.add_argument("--reference", default="nsn2n_default", help="cached row the differences refer to")
    args = p.parse_args(argv)
    ds = datasets.build(args.dataset, args.quick, seed=args.seed)
    print(table(noise.CACHE_DIR / "results" / ds.key(), args.reference, ds.modality == "ct"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
