"""A denoising run in its own process, speaking the progress protocol of Slicer's CLI modules.

``python -m NSN2NDenoiseLib.worker INPUT OUTPUT [--report R.json] [--save-model M.safetensors]
[--init-from M.safetensors] [option flags of options.OPTIONS]`` reads a volume file, denoises it, writes OUTPUT
atomically (nothing is written on failure or cancel) and exits with :func:`errors.exit_code`. ``--save-model``
and ``--init-from`` behave as in ``nsn2n denoise`` (:mod:`.model_io`): the paths are checked and the start model
is read before anything else, the start model's network settings are used, and the trained model is written
atomically after a successful run. On stdout it prints, flushed line by line, what Slicer's CLI infrastructure reads:
``<filter-start>``, ``<filter-progress>F</filter-progress>`` with F the fraction of the whole run (phases weighed
by :mod:`costmodel`), ``<filter-comment>`` with the phase, step and loss, and ``<filter-end>``; and one JSON
record per progress call after :data:`PROGRESS_PREFIX`, which the Slicer module's job parses. Errors are one
line on stderr.

It is the Slicer CLI module's script (NSN2NDenoiseCLI) and the process the Slicer module's Denoise button starts:
in its own process, training runs at full speed whatever Slicer's main thread does with Python's lock, a cancel
ends the process, and GPU memory is freed when it exits.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from pathlib import Path
from typing import TextIO

from .errors import InputError, exit_code, explain
from .options import OPTIONS, add_arguments, add_model_arguments, to_config

FILTER_NAME = "NSN2N Denoise"
MIN_INTERVAL_S = 0.25
"""Progress lines within a phase are written at most this often (the first and last step of a phase always)."""
PROGRESS_PREFIX = "nsn2n-progress "
"""A stdout line starting with this carries one JSON progress record: phase, step, total, loss, fraction."""


def build_parser() -> argparse.ArgumentParser:
    """Positional INPUT and OUTPUT, ``--report``, and one flag per option of :data:`options.OPTIONS`."""
    p = argparse.ArgumentParser(prog="NSN2NDenoiseCLI", description="Denoise one volume file by NS-N2N.")
    add_arguments(p)
    p.add_argument("--report", metavar="REPORT.json", help="write the run report as JSON.")
    p.add_argument(
        "--config",
        metavar="CONFIG.json",
        help="a full configuration as JSON (the 'config' of a run report) to start from; the option flags "
        "given on top of it override it.",
    )
    add_model_arguments(p)
    p.add_argument(
        "--trained-on",
        metavar="TEXT",
        help="what --save-model records as the volume it was trained on (default: INPUT's file name).",
    )
    p.add_argument(
        "--no-compress",
        dest="compress",
        action="store_false",
        help="write OUTPUT uncompressed (a temporary file that the caller reads back at once).",
    )
    p.add_argument("input", help="input volume file (NRRD, NIfTI, MetaImage) or DICOM folder")
    p.add_argument("output", help="output volume file")
    return p


class SlicerProgress:
    """The engine's progress callback, writing Slicer CLI progress lines to ``stream``."""

    def __init__(self, stream: TextIO, estimate, device: str) -> None:
        self.stream = stream
        self.estimate = estimate
        self.device = device
        self.t0 = time.perf_counter()
        self.phase: str | None = None
        self.last = -1.0

    def _write(self, text: str) -> None:
        self.stream.write(text + "\n")
        self.stream.flush()

    def start(self, comment: str) -> None:
        self._write(
            f"<filter-start><filter-name>{FILTER_NAME}</filter-name>"
            f"<filter-comment>{comment}</filter-comment></filter-start>"
        )

    def __call__(self, phase: str, step: int, total: int, loss: float | None) -> None:
        from .costmodel import overall_fraction

        now = time.perf_counter()
        if phase == self.phase and step < total and now - self.last < MIN_INTERVAL_S:
            return  # a few lines a second are enough for a progress bar, and keep Slicer's CLI log short
        self.last = now
        fraction = overall_fraction(phase, step, total, self.estimate)
        record = {
            "device": self.device,
            "phase": phase,
            "step": step,
            "total": total,
            "loss": loss,
            "fraction": round(fraction, 5),
            "elapsed_s": round(time.perf_counter() - self.t0, 3),
        }
        self._write(PROGRESS_PREFIX + json.dumps(record))
        self._write(f"<filter-progress>{fraction:.4f}</filter-progress>")
        if phase != self.phase:
            self._write(f"<filter-comment>{phase}</filter-comment>")
            self.phase = phase

    def end(self) -> None:
        self._write(
            f"<filter-end><filter-name>{FILTER_NAME}</filter-name>"
            f"<filter-time>{time.perf_counter() - self.t0:.2f}</filter-time></filter-end>"
        )


def _raise_interrupt(signum, frame):  # a cancel from Slicer or a job: unwind, so no partial file is left
    raise KeyboardInterrupt


def _model_options(args: argparse.Namespace, cfg):
    """Check ``--save-model`` and read ``--init-from`` before any work, as ``nsn2n denoise`` does.

    Returns the configuration (with the start model's network settings) and the start model's state dict or None.
    """
    if not (args.save_model or args.init_from):
        return cfg, None
    from . import model_io

    if args.save_model:
        model_io.check_save_path(args.save_model)
    return model_io.start_from(cfg, args.init_from)


def run(args: argparse.Namespace, stream: TextIO) -> int:
    """Denoise ``args.input`` into ``args.output``; raises engine errors."""
    from . import costmodel
    from .api import denoise, resolve_device
    from .volume_io import check_output_path, check_paths_differ, check_report_path, read_volume, write_volume

    base = None
    if args.config:
        from .config import NSN2NConfig

        try:
            base = NSN2NConfig.from_dict(json.loads(Path(args.config).read_text()))
        except (OSError, ValueError) as exc:
            raise InputError(f"Cannot read the configuration {args.config}: {exc}") from exc
    cfg = to_config({o.name: getattr(args, o.name) for o in OPTIONS}, base=base)
    out_path = check_output_path(args.output)
    check_paths_differ(args.input, out_path)
    if args.report:
        check_report_path(args.report)
    cfg, init_state = _model_options(args, cfg)
    loaded = read_volume(args.input)
    device = resolve_device(cfg.device)
    est = costmodel.estimate(loaded.array.shape, cfg, device.type, spacing_kji=loaded.spacing_kji)
    progress = SlicerProgress(stream, est, device.type)
    progress.start(f"{loaded.array.shape} voxels (K,J,I) on {device.type}")
    result, report, state = denoise(
        loaded.array, loaded.spacing_kji, cfg, progress=progress, init_model=init_state, return_model=True
    )
    del loaded.array, init_state
    write_volume(out_path, result, loaded.image, compress=args.compress)
    if args.report:
        Path(args.report).write_text(report.to_json())
    if args.save_model:
        from .model_io import save_model

        save_model(args.save_model, state, cfg, trained_on=args.trained_on or Path(args.input).name)
    for warning in report.warnings:
        print(f"nsn2n: warning: {warning}", file=sys.stderr, flush=True)
    progress.end()
    return 0


def main(argv: list[str] | None = None, stream: TextIO | None = None) -> int:
    """Entry point; returns the exit code of :func:`errors.exit_code`."""
    args = build_parser().parse_args(argv)
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        return run(args, stream or sys.stdout)
    except (Exception, KeyboardInterrupt) as exc:  # noqa: BLE001 - every error becomes one line and a code
        err = explain(exc)
        print(f"nsn2n: error: {err}", file=sys.stderr, flush=True)
        return exit_code(err)
    finally:
        signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
