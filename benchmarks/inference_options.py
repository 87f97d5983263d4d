"""CPU inference throughput of NSN2N's U-Net under each option of issue 10 (item 2), on whole 512x512 slices.

``python -m benchmarks.inference_options --threads 2`` times one forward pass per slice (seconds per slice, best
of a few repeats after a warm-up) for: float32 as before (``no_grad``), ``inference_mode``, channels-last memory
format, bf16 autocast (with and without channels-last), larger batches, 1 and 2 threads, ``torch.compile``, and
ONNX Runtime on an exported model (when the package is installed; it is not a dependency). The network is the
default preset's (depth 2, width 16) with random weights: time does not depend on the values. Output: JSON and a
Markdown table under ``--out``; also the largest difference of each variant's output from float32, in the
normalised units of the input.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

from .report import portable_command

ROOT = Path(__file__).resolve().parent.parent


def _time(fn, x, repeats: int) -> float:
    fn(x)
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn(x)
        best = min(best, time.perf_counter() - t)
    return best / x.shape[0]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "inference_options"))
    args = p.parse_args(argv)
    sys.path.insert(0, str(ROOT / "NSN2NDenoise"))
    from NSN2NDenoiseLib.inference import cpu_has_bf16
    from NSN2NDenoiseLib.network import UNet2D

    torch.manual_seed(0)
    net = UNet2D(1, 1, depth=2, width=16).eval()
    for param in net.parameters():
        param.data.normal_(0, 0.05)
    x4 = torch.rand(4, 1, 512, 512)
    rows = []

    def add(name, fn, x, threads):
        torch.set_num_threads(threads)
        with torch.no_grad():
            ref = net(x[:1]).float()
            diff = float((fn(x[:1]).float() - ref).abs().max())
        rows.append(
            {
                "variant": name,
                "threads": threads,
                "batch": x.shape[0],
                "s_per_slice": round(_time(fn, x, args.repeats), 4),
                "max_abs_diff": diff,
            }
        )
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)

    def no_grad(x):
        with torch.no_grad():
            return net(x)

    def inference_mode(x):
        with torch.inference_mode():
            return net(x)

    net_cl = UNet2D(1, 1, depth=2, width=16).eval()
    net_cl.load_state_dict(net.state_dict())
    net_cl = net_cl.to(memory_format=torch.channels_last)

    def channels_last(x):
        with torch.inference_mode():
            return net_cl(x.contiguous(memory_format=torch.channels_last))

    def bf16(x):
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
            return net(x).float()

    def bf16_cl(x):
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
            return net_cl(x.contiguous(memory_format=torch.channels_last)).float()

    t = args.threads
    add("float32, no_grad (before)", no_grad, x4[:1], t)
    add("float32, inference_mode", inference_mode, x4[:1], t)
    add("float32, inference_mode, batch 4", inference_mode, x4, t)
    add("float32, channels_last", channels_last, x4[:1], t)
    add("float32, channels_last, batch 4", channels_last, x4, t)
    add("bf16 autocast", bf16, x4[:1], t)
    add("bf16 autocast, channels_last (engine)", bf16_cl, x4[:1], t)
    add("bf16 autocast, channels_last, batch 4", bf16_cl, x4, t)
    if t != 1:
        add("float32, channels_last, 1 thread", channels_last, x4[:1], 1)
        add("bf16 autocast, channels_last, 1 thread", bf16_cl, x4[:1], 1)
    try:
        compiled = torch.compile(net_cl)

        def compiled_fn(x):
            with torch.inference_mode():
                return compiled(x.contiguous(memory_format=torch.channels_last))

        add("float32, channels_last, torch.compile", compiled_fn, x4[:1], t)
    except Exception as exc:  # noqa: BLE001 - a missing compiler is a result too
        rows.append({"variant": "torch.compile", "error": f"{type(exc).__name__}: {exc}"[:300]})
    try:
        import onnxruntime as ort

        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "unet.onnx")
            torch.onnx.export(
                net,
                (x4[:1],),
                path,
                input_names=["x"],
                output_names=["y"],
                dynamic_axes={"x": {0: "b", 2: "h", 3: "w"}},
                dynamo=False,
            )
            opts = ort.SessionOptions()
            opts.intra_op_num_threads = t
            session = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])

            def onnx_fn(x):
                return torch.from_numpy(session.run(None, {"x": x.numpy()})[0])

            add(f"ONNX Runtime {ort.__version__}, float32", onnx_fn, x4[:1], t)
    except ImportError:
        rows.append({"variant": "ONNX Runtime", "error": "onnxruntime not installed"})
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result = {
        "command": portable_command(" ".join(["python -m benchmarks.inference_options", *(argv or sys.argv[1:])])),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, native bf16: {cpu_has_bf16()}",
        "torch": torch.__version__,
        "loadavg": os.getloadavg(),
        "rows": rows,
    }
    (out / "inference_options.json").write_text(json.dumps(result, indent=2))
    base = rows[0]["s_per_slice"]
    lines = [
        "| variant | threads | batch | s per 512x512 slice | speed-up | max abs diff |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['variant']} | | | {r['error']} | | |")
        else:
            lines.append(
                f"| {r['variant']} | {r['threads']} | {r['batch']} | {r['s_per_slice']:.4f} | "
                f"{base / r['s_per_slice']:.2f}x | {r['max_abs_diff']:.1e} |"
            )
    (out / "inference_options.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
