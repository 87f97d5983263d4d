"""Print an ablation table (Markdown) from a ``benchmarks.run`` output: every NSN2N variant against a reference row.

    python -m benchmarks.ablation_table benchmarks/results/ablation_ct_ld_1e5 --reference nsn2n_default

Reads ``results.json`` (written by ``benchmarks.run``); computes nothing. Columns: PSNR and its difference to the
reference, SSIM, RMSE (and soft tissue / bone for CT), wall time, and the variant's overrides.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def table(results_json: Path, reference: str) -> str:
    data = json.loads(results_json.read_text())
    variants = data.get("variants", {})
    lines = []
    for name, ds in data["datasets"].items():
        rows = ds["results"]
        ref = rows.get(reference, {}).get("quality", {}).get("psnr")
        ct = name.startswith("ct_")
        tissue = " soft | bone |" if ct else ""
        head = f"| row | PSNR dB | vs reference dB | SSIM | RMSE |{tissue} time s | change |"
        lines += [f"### `{name}` ({ds['crop']})", "", head, "|" + "---|" * (head.count("|") - 1)]
        for method, r in rows.items():
            q = r.get("quality")
            if not q:
                continue
            delta = "" if ref is None or not method.startswith("nsn2n") else f"{q['psnr'] - ref:+.2f}"
            cells = [method, f"{q['psnr']:.2f}", delta, f"{q['ssim']:.3f}", f"{q['rmse']:.1f}"]
            if ct:
                cells += [f"{q['rmse_soft']:.1f}", f"{q['rmse_bone']:.1f}"]
            seconds = r.get("cost", {}).get("seconds")
            cells += ["-" if seconds is None else f"{seconds:.0f}", f"`{json.dumps(variants.get(method, {}))}`"]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.ablation_table", description=__doc__.splitlines()[0])
    p.add_argument("outdir", type=Path, help="an --out folder of benchmarks.run")
    p.add_argument("--reference", default="nsn2n_default", help="row the differences refer to")
    args = p.parse_args(argv)
    print(table(args.outdir / "results.json", args.reference))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
