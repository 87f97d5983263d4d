"""Does a denoising run started from the Slicer module keep its speed while Slicer's main thread is busy?

Inside 3D Slicer the main thread holds Python's lock (the GIL) between GUI events. This harness reproduces that
without Slicer: the main thread runs pure-Python work for the whole run and gives up the lock only when Python
forces it to (``sys.setswitchinterval(1.0)``: a waiting thread gets the lock after up to a second), and every
100 ms it calls the job's ``poll()`` and reads ``progress``, as the module's Qt timer does. It runs the same
denoise

(a) through the Slicer module's path, ``mrml.MRMLDenoiser(scene).start(...)`` on a real slicer-core MRML scene
    (the worker process of ``jobs.py``), under that simulated main thread, timed from start to the output node;
(b) by calling ``NSN2NDenoiseLib.denoise()`` in a plain process of its own, timed around the call;
(c) optionally (``--thread-contrast``), the old design: ``denoise()`` in a thread of the busy process itself.

and reports the time ratio (a)/(b) (target <= 1.2), the longest stall of the main thread between timer
callbacks beyond the planned 100 ms, the longest callback (``poll()``, which at the end copies the result into
the scene slab by slab) and the time the start call takes on the main thread (each target < 200 ms). The volume
is ``phantom.make_phantom`` of 512x512xN plus Gaussian noise, denoised with the 'fast' preset on the CPU with
the same thread count in every run.

Run from the repository root (it uses the CPU for a few minutes; run it on an otherwise idle machine)::

    python benchmarks/gui_harness.py [--slices 48] [--threads 1] [--thread-contrast]
    python benchmarks/gui_harness.py --slices 600 --iterations 50 --skip-direct   # the stalls at 512x512x600

The result goes to ``benchmarks/results/gui_harness/<UTC time>.json`` and is printed with the command.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "NSN2NDenoise"))

RESULTS = ROOT / "benchmarks" / "results" / "gui_harness"
TICK_S = 0.1  # the Slicer module's poll timer interval while a job runs is of this order
SWITCH_INTERVAL_S = 1.0


def make_volume(slices: int, seed: int = 0) -> np.ndarray:
    """A 512x512xN HU-like phantom with 40 HU Gaussian noise, K,J,I order, float32."""
    from NSN2NDenoiseLib.phantom import make_phantom

    clean = make_phantom((slices, 512, 512), seed=seed)
    noise = np.random.default_rng(seed + 1).normal(0.0, 40.0, clean.shape)
    return (clean + noise).astype(np.float32)


RUN = {"iterations": None}


def options(threads: int) -> dict:
    opts = {"preset": "fast", "device": "cpu", "threads": threads}
    if RUN["iterations"]:
        opts["iterations"] = RUN["iterations"]
    return opts


MAIN_THREAD = {"mode": "busy"}


def busy_python(until: float) -> None:
    """Hold the GIL until ``until``, as Slicer's main thread does between events.

    'busy': pure-Python work, which also takes a whole CPU core from the run (on a 2-core machine that alone slows
    any run down). 'hold': C calls that keep the GIL without using the CPU (``ctypes.PyDLL`` does not release it),
    which isolates the effect of the lock.
    """
    if MAIN_THREAD["mode"] == "hold":
        import ctypes

        usleep = ctypes.PyDLL(None).usleep
        while (left := until - time.perf_counter()) > 0:
            usleep(int(min(left, 0.02) * 1e6))
        return
    x = 0
    while time.perf_counter() < until:
        for i in range(200):
            x += i * i


def simulated_main_thread(poll, finished) -> dict:
    """Busy Python work with a 'timer callback' ``poll()`` every TICK_S; returns the callback timing."""
    starts, durations = [], []
    while True:
        start = time.perf_counter()
        poll()
        durations.append(time.perf_counter() - start)
        starts.append(start)
        if finished():
            break
        busy_python(start + TICK_S)
    gaps = np.diff(starts) if len(starts) > 1 else np.zeros(1)
    return {
        "callbacks": len(starts),
        "longest_stall_s": float(max(0.0, (gaps - TICK_S).max())),
        "longest_callback_s": float(max(durations)),
        "median_gap_s": float(np.median(gaps)),
    }


def run_module_path(volume: np.ndarray, threads: int) -> dict:
    """(a): the Slicer module's job on a slicer-core scene, under the simulated busy main thread."""
    import slicer
    import slicer.util

    from NSN2NDenoiseLib import jobs, mrml

    scene = slicer.vtkMRMLScene()
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "noisy")
    slicer.util.updateVolumeFromArray(node, volume)
    node.SetSpacing(0.7, 0.7, 2.5)
    previous = sys.getswitchinterval()
    sys.setswitchinterval(SWITCH_INTERVAL_S)
    try:
        t0 = time.perf_counter()
        job = mrml.MRMLDenoiser(scene).start(node, **options(threads))
        start_call_s = time.perf_counter() - t0  # the main thread's wait in the Denoise button's handler
        state = {"value": jobs.RUNNING}
        fill = {"polls": 0, "longest_s": 0.0}

        def poll():
            t = time.perf_counter()
            filling = job.filling
            state["value"] = job.poll()
            if filling or job.filling:
                fill["polls"] += 1
                fill["longest_s"] = max(fill["longest_s"], time.perf_counter() - t)
            _ = job.progress  # what the module's timer shows

        timing = simulated_main_thread(poll, lambda: state["value"] in jobs.FINISHED_STATES)
        seconds = time.perf_counter() - t0
    finally:
        sys.setswitchinterval(previous)
    if state["value"] != jobs.DONE:
        raise SystemExit(f"the module path failed: {job.error}")
    report = job.report
    return {
        "seconds": seconds,
        "engine_seconds": report.get("total_seconds"),
        "start_call_s": start_call_s,
        "fill_polls": fill["polls"],
        "longest_fill_poll_s": fill["longest_s"],
        **timing,
    }


DIRECT_CODE = """
import sys, time, json
import numpy as np
sys.path.insert(0, {lib!r})
from NSN2NDenoiseLib import denoise
from NSN2NDenoiseLib.options import to_config
volume = np.load({path!r})
cfg = to_config({opts!r})
t0 = time.perf_counter()
denoise(volume, (2.5, 0.7, 0.7), cfg)
print(json.dumps({{"seconds": time.perf_counter() - t0}}))
"""


def run_direct(volume: np.ndarray, threads: int, folder: Path) -> dict:
    """(b): ``denoise()`` called in a plain process of its own, timed around the call."""
    path = folder / "volume.npy"
    np.save(path, volume)
    code = DIRECT_CODE.format(lib=str(ROOT / "NSN2NDenoise"), path=str(path), opts=options(threads))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def run_in_thread(volume: np.ndarray, threads: int) -> dict:
    """(c): the old design, ``denoise()`` in a thread of this process, under the simulated busy main thread."""
    import torch

    from NSN2NDenoiseLib import denoise
    from NSN2NDenoiseLib.options import to_config

    torch.set_num_threads(max(1, threads))
    cfg = to_config(options(threads))
    done = threading.Event()
    worker = threading.Thread(target=lambda: (denoise(volume, (2.5, 0.7, 0.7), cfg), done.set()), daemon=True)
    previous = sys.getswitchinterval()
    sys.setswitchinterval(SWITCH_INTERVAL_S)
    try:
        t0 = time.perf_counter()
        worker.start()
        timing = simulated_main_thread(lambda: None, done.is_set)
        seconds = time.perf_counter() - t0
    finally:
        sys.setswitchinterval(previous)
    return {"seconds": seconds, **timing}


def git_commit() -> str | None:
    try:
        return subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=ROOT, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--slices", type=int, default=48, help="N of the 512x512xN volume (default: %(default)s)")
    p.add_argument("--threads", type=int, default=1, help="CPU threads of every run (default: %(default)s)")
    p.add_argument("--thread-contrast", action="store_true", help="also time the old in-thread design")
    p.add_argument("--iterations", type=int, default=None, help="training iterations (default: the preset's)")
    p.add_argument(
        "--skip-direct",
        action="store_true",
        help="time only the module path (the main thread's stalls), not the direct run and the ratio",
    )
    p.add_argument(
        "--main-thread",
        choices=("busy", "hold"),
        default="busy",
        help="how the simulated main thread holds the GIL: Python work using a core, or holding it idle (POSIX)",
    )
    args = p.parse_args(argv)
    MAIN_THREAD["mode"] = args.main_thread
    RUN["iterations"] = args.iterations
    command = "python benchmarks/gui_harness.py " + " ".join(argv if argv is not None else sys.argv[1:])

    import tempfile

    volume = make_volume(args.slices)
    direct = None
    if not args.skip_direct:
        with tempfile.TemporaryDirectory(prefix="nsn2n-harness-") as folder:
            direct = run_direct(volume, args.threads, Path(folder))
    module = run_module_path(volume, args.threads)
    result = {
        "command": command.strip(),
        "commit": git_commit(),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "shape_kji": list(volume.shape),
        "options": options(args.threads),
        "main_thread": args.main_thread,
        "switch_interval_s": SWITCH_INTERVAL_S,
        "tick_s": TICK_S,
        "direct": direct,
        "module_job": module,
        "ratio_module_to_direct": module["seconds"] / direct["seconds"] if direct else None,
        "targets": {"ratio_max": 1.2, "longest_stall_max_s": 0.2, "longest_callback_max_s": 0.2},
    }
    if args.thread_contrast:
        thread = run_in_thread(volume, args.threads)
        result["in_thread"] = thread
        result["ratio_in_thread_to_direct"] = thread["seconds"] / direct["seconds"] if direct else None
    ratio = result["ratio_module_to_direct"]
    result["passed"] = (
        (ratio is None or ratio <= 1.2)
        and module["longest_stall_s"] < 0.2
        and module["longest_callback_s"] < 0.2
        and module["start_call_s"] < 0.2
    )
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    path = RESULTS / f"{stamp}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    print(f"command: {result['command']}\nwritten: {path.relative_to(ROOT)}")
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
