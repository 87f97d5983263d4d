"""Markdown tables, JSON and PNG figures of a benchmark run (see :mod:`benchmarks.run`)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from . import metrics

LABELS = {
    "noisy": "noisy input",
    "diffusion_gradient": "gradient anisotropic diffusion (Slicer)",
    "diffusion_curvature": "curvature anisotropic diffusion (Slicer)",
    "nlm": "NLM 2D slice-wise, estimated sigma",
    "nlm_3d": "NLM 3D, estimated sigma",
    "tv": "TV 3D (Chambolle), weight = estimated sigma",
    "bm4d_est": "BM4D, estimated sigma",
    "bm4d_oracle": "BM4D, oracle noise spectrum",
    "bm3d_slices": "BM3D slice-wise, estimated sigma",
    "nsn2n": "**NSN2N default**",
    "ns_n2n_plain": "plain neighbour-slice N2N",
    "n2v": "Noise2Void",
    "ne2ne": "Neighbor2Neighbor",
    "zsn2n": "ZS-N2N",
    "supervised": "supervised ceiling (same U-Net)",
}
NOT_USER_METHODS = {"noisy", "bm4d_oracle", "supervised"}
"""Excluded from 'the two best baselines' of a figure: the input and the methods that need the truth."""


def portable_command(command: str) -> str:
    """The command with absolute paths made relative to the working directory when inside it, else replaced by
    ``<outside>``, so that recorded commands name no machine-specific folder."""
    import shlex
    from pathlib import Path

    cwd = Path.cwd().resolve()
    words = shlex.split(command)
    if words and words[0].endswith("benchmarks/run.py"):  # recorded from sys.argv: the module's file path
        words = ["python", "-m", "benchmarks.run", *words[1:]]
    out = []
    for word in words:
        if word.startswith("/"):
            p = Path(word).resolve()
            word = str(p.relative_to(cwd)) if p.is_relative_to(cwd) else "<outside>"
        out.append(shlex.quote(word))
    return " ".join(out)


def _fmt(v, digits=2):
    if v is None or (isinstance(v, float) and not np.isfinite(v)):
        return "-"
    return f"{v:.{digits}f}"


def _note(name: str, r: dict) -> str:
    info = r.get("info", {})
    if name.startswith("diffusion"):
        return f"{info.get('iterations')} it. (best of 1-5; {info.get('seconds_of_chosen', float('nan')):.1f} s alone)"
    if name in ("nlm", "nlm_3d", "tv", "bm4d_est", "bm3d_slices"):
        return f"sigma^ {info.get('sigma', float('nan')):.1f}"
    if name == "bm4d_oracle":
        return "true PSD" if "psd" in info else f"true sigma {info.get('sigma', float('nan')):.1f}"
    if name.startswith("nsn2n"):
        ph = info.get("phase_seconds", {})
        return (
            f"{info.get('iterations')} it., matched {100 * info.get('matched_fraction', 0):.0f} %, "
            f"w/t/i {ph.get('weights', 0):.1f}/{ph.get('training', 0):.1f}/{ph.get('inference', 0):.1f} s"
        )
    if name in ("n2v", "ne2ne", "zsn2n", "ns_n2n_plain"):
        return f"{info.get('iterations')} it. in {info.get('budget_seconds', 0):.0f} s budget"
    if name == "supervised":
        return f"{info.get('iterations')} it."
    return ""


def _portable_result(r: dict) -> dict:
    out = {k: v for k, v in r.items() if k != "machine"}
    if "command" in out:
        out["command"] = portable_command(out["command"])
    return out


def table(ds, results: dict) -> str:
    """Markdown table of one dataset's results (one row per method, in run order)."""
    ct = ds.modality == "ct"
    ref = "clean" if ds.has_clean else "repetition 2"
    head = ["method", f"PSNR dB (vs {ref})", "SSIM 3D", "SSIM 2D", "RMSE"]
    if ct:
        head += ["RMSE soft", "RMSE bone>300", "RMSE bone>200"]
    head += ["time s", "peak RSS MiB", "device", "notes"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    order = ["noisy"] + [m for m in results if m != "noisy"]
    for name in order:
        r = results.get(name)
        if r is None:
            continue
        label = LABELS.get(name, f"NSN2N variant `{name}`" if name.startswith("nsn2n") else name)
        if "skipped" in r:
            lines.append(f"| {label} | " + " | ".join(["-"] * (len(head) - 2)) + f" | skipped: {r['skipped']} |")
            continue
        q, c = r["quality"], r["cost"]
        row = [label, _fmt(q["psnr"]), _fmt(q["ssim"], 3), _fmt(q["ssim_2d"], 3), _fmt(q["rmse"], 1)]
        if ct:
            row += [_fmt(q.get("rmse_soft"), 1), _fmt(q.get("rmse_bone"), 1), _fmt(q.get("rmse_bone200"), 1)]
        row += [
            "-" if name == "noisy" else _fmt(c["seconds"], 1),
            "-" if name == "noisy" else f"{c['peak_rss_mb']:.0f}",
            c.get("device", "cpu"),
            _note(name, r),
        ]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def dataset_header(ds) -> str:
    units = "HU" if ds.modality == "ct" else "template units"
    s = [
        f"### `{ds.name}`: {ds.description}",
        "",
        (
            f"- shape (K, J, I) {list(ds.noisy.shape)}, spacing {tuple(round(x, 4) for x in ds.spacing)} mm; crop: "
            f"{ds.crop}"
        ),
        (
            f"- mask: {metrics.MASK_RULE[ds.modality]} ({100 * ds.mask.mean():.0f} % of the crop); data range "
            f"{ds.data_range:g} {units}"
        ),
    ]
    if ds.modality == "ct":
        s.append(
            f"- RMSE in HU; soft tissue = clean in [{metrics.SOFT_HU[0]:g}, {metrics.SOFT_HU[1]:g}] HU, bone = "
            f"clean > {metrics.BONE_HU:g} HU (and > {metrics.BONE_LOOSE_HU:g}), inside the mask"
        )
    if ds.meta:
        s.append("- " + ", ".join(f"{k} {v:.4g}" for k, v in ds.meta.items()))
    return "\n".join(s)


def write_outputs(out: Path, runs: dict, command: str, quick: bool, variants: dict, figures: bool = True) -> None:
    """Write ``results.md``, ``results.json`` and the figures of every dataset under ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    mach = metrics.machine()
    md = [
        f"## Benchmark ({'quick' if quick else 'full'}), {time.strftime('%Y-%m-%d')}",
        "",
        f"Command: `{portable_command(command)}`",
        "",
        (
            f"Machine: {mach['cpu_count']} CPUs ({mach['cpu_model']}), torch {mach.get('torch')}, "
            f"{mach.get('gpu', 'no GPU')}; times are wall seconds on a shared machine (+-2x). Peak RSS is the whole "
            "process's resident peak while the method ran (includes the loaded volumes)."
        ),
        "",
    ]
    if variants:
        md += [
            "NSN2N configurations (overrides of make_config): "
            + ", ".join(f"`{k}` = `{json.dumps(v)}`" for k, v in variants.items()),
            "",
        ]
    if any(ds.modality == "ct" and "nsn2n" in res["results"] for ds, res in runs.values()):
        md += ["### Issue 6 targets (CT)", "", issue6_summary(runs), ""]
    js = {"command": portable_command(command), "machine": mach, "quick": quick, "variants": variants, "datasets": {}}
    for name, (ds, res) in runs.items():
        md += [dataset_header(ds), "", table(ds, res["results"]), ""]
        if figures and ds.has_clean:
            from .figures import comparison_figure, psnr_time_figure

            f1 = comparison_figure(out / f"fig_{name}.png", ds, res)
            f2 = psnr_time_figure(out / f"psnr_time_{name}.png", ds, res["results"])
            md += [f"![{name}]({f1.name})", "", f"![{name} PSNR vs time]({f2.name})", ""]
        js["datasets"][name] = {
            "description": ds.description,
            "crop": ds.crop,
            "shape": list(ds.noisy.shape),
            "spacing": list(ds.spacing),
            "data_range": ds.data_range,
            "mask_rule": metrics.MASK_RULE[ds.modality],
            "meta": ds.meta,
            "results": {m: _portable_result(r) for m, r in res["results"].items()},
        }
    (out / "results.md").write_text("\n".join(md))
    (out / "results.json").write_text(json.dumps(js, indent=1, default=float))


ISSUE6_BARS = ("diffusion_gradient", "diffusion_curvature", "nlm", "bm4d_est")
"""The baselines issue 6 asks NSN2N to beat in PSNR (the best of them is the bar)."""


def issue6_summary(runs: dict, method: str = "nsn2n") -> str:
    """One row per CT dataset: ``method`` against the bars of issue 6 (PSNR margin over the best bar, SSIM above
    every baseline, bone and soft-tissue RMSE below the noisy input, time against BM4D, distance to the
    supervised ceiling). Rows whose inputs were not run show '-'."""
    head = [
        "dataset",
        f"{method} PSNR",
        "best bar (PSNR)",
        "margin dB",
        "SSIM > all baselines",
        "bone / noisy HU",
        "soft / noisy HU",
        "time s / BM4D est. s",
        "gap to supervised dB",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, (ds, res) in runs.items():
        r = res["results"]
        if ds.modality != "ct" or "quality" not in r.get(method, {}):
            continue
        q = r[method]["quality"]
        bars = [(r[b]["quality"]["psnr"], b) for b in ISSUE6_BARS if "quality" in r.get(b, {})]
        best = max(bars) if bars else None
        others = [
            v["quality"]["ssim"]
            for k, v in r.items()
            if "quality" in v and k != method and not k.startswith("nsn2n") and k not in NOT_USER_METHODS
        ]
        noisy = r.get("noisy", {}).get("quality", {})
        bm4d = r.get("bm4d_est", {}).get("cost", {}).get("seconds")
        sup = r.get("supervised", {}).get("quality", {}).get("psnr")
        row = [
            name,
            _fmt(q["psnr"]),
            f"{LABELS.get(best[1], best[1])} ({best[0]:.2f})" if best else "-",
            f"{q['psnr'] - best[0]:+.2f}" if best else "-",
            ("yes" if q["ssim"] > max(others) else f"no ({max(others):.3f})") if others else "-",
            f"{q['rmse_bone']:.1f} / {_fmt(noisy.get('rmse_bone'), 1)}",
            f"{q['rmse_soft']:.1f} / {_fmt(noisy.get('rmse_soft'), 1)}",
            f"{r[method]['cost']['seconds']:.0f} / {_fmt(bm4d, 0)}",
            f"{q['psnr'] - sup:+.2f}" if sup is not None else "-",
        ]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)
