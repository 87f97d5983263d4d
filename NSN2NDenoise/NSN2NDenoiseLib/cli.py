"""The ``nsn2n`` command line: ``nsn2n denoise INPUT OUTPUT``, ``nsn2n batch INPUTS`` and ``nsn2n demo OUTDIR``.

A front end of :func:`NSN2NDenoiseLib.denoise`: files in and out through :mod:`volume_io`, progress as a tqdm bar
on stderr, errors as one line on stderr with the exit code of :func:`errors.exit_code` (2 for bad input or
options, 3 for device or memory problems, 130 when interrupted, 1 for an unexpected error, and for ``batch`` when
any volume failed: its row in the summary says why). The flags come from the one table of options,
:data:`options.OPTIONS`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from . import __version__
from .api import denoise
from .errors import EXIT_FAILED, CancelledError, InputError, exit_code, explain
from .options import BY_NAME, add_arguments, add_model_arguments, to_config


class _Progress:
    """Turns the engine's progress(phase, step, total, loss) calls into one tqdm bar per phase on stderr."""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet
        self.bar = None
        self.phase = None

    def __call__(self, phase: str, step: int, total: int, loss: float | None) -> None:
        if self.quiet:
            return
        from tqdm import tqdm

        if phase != self.phase:
            self.close()
            self.phase = phase
            self.bar = tqdm(total=total, desc=phase, unit="it" if phase == "training" else "slice", file=sys.stderr)
        self.bar.n = step
        if loss is not None:
            self.bar.set_postfix(loss=f"{loss:.3g}", refresh=False)
        self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _add_run_options(p: argparse.ArgumentParser, names: tuple[str, ...]) -> None:
    """The flags of the options ``names`` (from the one table, :data:`options.OPTIONS`) and ``--quiet``."""
    add_arguments(p, names, help_suffix=" Default: the preset's value.")
    p.add_argument("--quiet", action="store_true", help="no progress bar and no summary line.")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nsn2n",
        description="Self-supervised denoising of one CT or MRI volume by Neighboring Slice Noise2Noise "
        "(NS-N2N): a network is trained on the volume itself, using neighbouring slices as each other's "
        "noisy targets, then denoises every slice. No training data needed.",
    )
    parser.add_argument("--version", action="version", version=f"nsn2n {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    d = sub.add_parser(
        "denoise",
        help="denoise a volume file",
        description="Denoise INPUT and write OUTPUT with exactly the same geometry (spacing, origin, direction), "
        "as float32 in the input's units (HU for CT).",
    )
    d.add_argument("input", help="input volume: .nrrd, .nhdr, .nii, .nii.gz, .mha, .mhd, or a DICOM series folder")
    d.add_argument("output", help="output file: .nrrd, .nhdr, .nii, .nii.gz, .mha or .mhd")
    _add_run_options(d, tuple(BY_NAME))
    d.add_argument("--report", metavar="REPORT.json", help="write the run report (configuration, times, loss) as JSON.")
    d.add_argument(
        "--residual",
        metavar="RESIDUAL.nrrd",
        help="also write what was removed (input minus output, float32, the input's geometry): it should look like "
        "noise, with no edges or anatomy in it; the run report's residual_check scores that.",
    )
    add_model_arguments(
        d,
        init_help="start training from a model saved by --save-model (its network settings are used); fewer "
        "iterations then suffice for a similar volume (see README, 'Cohorts').",
    )

    b = sub.add_parser(
        "batch",
        help="denoise many volumes in parallel (needs: pip install .[cluster])",
        description="Denoise every volume of INPUTS (a folder, a quoted glob pattern such as 'scans/*.nii.gz', or a "
        "CSV manifest with the columns input,output) as parallel tasks of Ray: on a local Ray started for the run, "
        "or on an existing cluster (--address). Each task takes one GPU where the cluster has GPUs, else "
        "--threads-per-task CPU threads. A summary CSV (status, time, device, matched fraction, noise estimate, "
        "warnings, error per volume) is updated as volumes finish; a rerun skips finished volumes (--force redoes "
        "them); a volume that fails gets an error row and the others go on. Ctrl-C stops cleanly, keeping every "
        "finished volume.",
    )
    b.add_argument("inputs", help="a folder of volumes (and DICOM series folders), a quoted glob pattern, or a .csv")
    b.add_argument("--output-dir", metavar="DIR", help="folder of the outputs (folder or pattern inputs; created)")
    b.add_argument(
        "--output-suffix", default=".nrrd", metavar="SUFFIX", help="output file type, e.g. .nii.gz. Default: .nrrd."
    )
    b.add_argument(
        "--summary",
        metavar="SUMMARY.csv",
        help="the summary file. Default: summary.csv in --output-dir, or beside the manifest.",
    )
    b.add_argument(
        "--address",
        metavar="HOST:PORT",
        help="an existing Ray cluster (as printed by 'ray start --head'; 'auto' finds a local one). "
        "Default: start a local Ray for this run. Paths must be visible to every node under the same name.",
    )
    b.add_argument(
        "--workers",
        type=int,
        default=None,
        metavar="N",
        help="volumes at a time on the local Ray. Default: CPU cores // --threads-per-task (at least 1).",
    )
    b.add_argument(
        "--threads-per-task",
        type=int,
        default=1,
        metavar="N",
        help="CPU threads (Ray CPUs) per volume where there is no GPU. Default: 1.",
    )
    b.add_argument("--force", action="store_true", help="redo volumes the summary lists as done.")
    add_model_arguments(b, save=False, init_help="start every volume from this saved model.")
    b.add_argument(
        "--reuse",
        action="store_true",
        help="train the first volume fully, save its network in the output folder, and warm-start the others "
        "from it with --reuse-iterations iterations.",
    )
    b.add_argument(
        "--reuse-iterations",
        type=int,
        default=None,
        metavar="N",
        help="iterations of a warm-started volume with --reuse. Default: half the --iterations (a warm start with half "
        "was within 0.15 dB of a cold start with all of them; README, 'Cohorts').",
    )
    _add_run_options(b, tuple(n for n in BY_NAME if n != "threads"))

    m = sub.add_parser(
        "demo",
        help="denoise a built-in synthetic phantom (no download)",
        description="Build a head-like phantom with in-plane correlated noise, denoise it, and write "
        "noisy.nrrd, denoised.nrrd, clean.nrrd and demo.png (middle slices side by side) into OUTDIR; print "
        "PSNR before and after.",
    )
    m.add_argument("outdir", help="folder for the demo's files (created if missing)")
    _add_run_options(m, ("preset", "iterations", "device", "seed", "threads"))
    return parser


def _config(args: argparse.Namespace, **fixed):
    return to_config({**{name: getattr(args, name, None) for name in BY_NAME}, **fixed})


def _run_denoise(args: argparse.Namespace) -> int:
    from .volume_io import check_output_path, check_paths_differ, check_report_path, read_volume, write_volume

    cfg = _config(args)
    out_path = check_output_path(args.output)  # fail before training, not after
    check_paths_differ(args.input, out_path)
    residual_path = None
    if args.residual:
        residual_path = check_output_path(args.residual)
        check_paths_differ(args.input, residual_path)
        if residual_path.resolve() == out_path.resolve():
            raise InputError("--residual must differ from the output path.")
    if args.report:
        check_report_path(args.report)
    init_state = None
    if args.save_model or args.init_from:
        from . import model_io

        if args.save_model:
            model_io.check_save_path(args.save_model)
        cfg, init_state = model_io.start_from(cfg, args.init_from)
    loaded = read_volume(args.input)
    progress = _Progress(args.quiet)
    try:
        result, report, state = denoise(
            loaded.array, loaded.spacing_kji, cfg, progress=progress, init_model=init_state, return_model=True
        )
    finally:
        progress.close()
    write_volume(out_path, result, loaded.image)
    if residual_path is not None:
        result -= loaded.array  # in place: output - input, float32; negated below without another copy
        result *= -1.0
        write_volume(residual_path, result, loaded.image)
    if args.report:
        Path(args.report).write_text(report.to_json())
    if args.save_model:
        model_io.save_model(args.save_model, state, cfg, trained_on=Path(args.input).name)
    for warning in report.warnings:
        print(f"nsn2n: warning: {warning}", file=sys.stderr)
    if not args.quiet:
        print(
            f"nsn2n: wrote {out_path} ({report.total_seconds:.1f} s on {report.device_name}, "
            f"{100 * report.matched_fraction:.0f}% of pixels matched)",
            file=sys.stderr,
        )
    return 0


class _CohortProgress:
    """One tqdm bar over the cohort's volumes (done and time left) on stderr; failures are counted beside it."""

    def __init__(self, total: int, done: int, quiet: bool) -> None:
        self.bar = None
        self.failed = 0
        if not quiet:
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=done, desc="volumes", unit="vol", file=sys.stderr)

    def __call__(self, row: dict) -> None:
        self.failed += row.get("status") == "failed"
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(failed=self.failed)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _run_batch(args: argparse.Namespace) -> int:
    import os

    from . import cohort

    cfg = _config(args)
    if args.threads_per_task < 1:
        raise InputError("--threads-per-task must be at least 1.")
    if args.workers is not None and args.workers < 1:
        raise InputError("--workers must be at least 1.")
    if args.reuse and args.init_from:
        raise InputError("Give either --reuse or --init-from, not both.")
    if args.output_dir:
        Path(args.output_dir).mkdir(parents=True, exist_ok=True)
    items = cohort.collect_items(args.inputs, args.output_dir, args.output_suffix)
    if args.summary:
        summary = Path(args.summary)
    elif args.output_dir:
        summary = Path(args.output_dir) / cohort.SUMMARY_NAME
    else:
        summary = Path(args.inputs).with_name(Path(args.inputs).stem + "_" + cohort.SUMMARY_NAME)
    if args.init_from:
        from .model_io import start_from

        cfg, _ = start_from(cfg, args.init_from)  # fails early on a bad model
    workers = args.workers or max(1, (os.cpu_count() or 1) // args.threads_per_task)
    previous = {} if args.force else cohort.read_summary(summary)
    done = sum(1 for i in items if previous.get(i.input, {}).get("status") == "done" and os.path.exists(i.output))
    progress = _CohortProgress(len(items), done, args.quiet)
    try:
        rows = cohort.run_cohort(
            items,
            cfg,
            summary,
            address=args.address,
            workers=workers,
            threads=args.threads_per_task,
            force=args.force,
            init_from=args.init_from,
            reuse=args.reuse,
            reuse_iterations=args.reuse_iterations,
            on_row=progress,
        )
    finally:
        progress.close()
    failed = [r for r in rows if r.get("status") != "done"]
    for row in failed:
        print(f"nsn2n: error: {row['input']}: {row.get('error') or row.get('status')}", file=sys.stderr)
    if not args.quiet:
        print(
            f"nsn2n: {len(rows) - len(failed)} of {len(rows)} volumes done ({done} from an earlier run); "
            f"summary: {summary}",
            file=sys.stderr,
        )
    return EXIT_FAILED if failed else 0


def _run_demo(args: argparse.Namespace) -> int:
    import numpy as np
    import SimpleITK as sitk

    from .phantom import add_inplane_correlated_noise, make_phantom, psnr
    from .volume_io import write_volume

    outdir = Path(args.outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    cfg = _config(args, slice_axis="k")
    clean = make_phantom((32, 128, 128), seed=cfg.training.seed)
    noisy = add_inplane_correlated_noise(clean, sigma=60.0, correlation_px=1.0, seed=cfg.training.seed + 1)
    reference = sitk.GetImageFromArray(noisy)
    reference.SetSpacing((0.8, 0.8, 2.0))  # x, y, z in mm
    progress = _Progress(args.quiet)
    try:
        result, report = denoise(noisy, (2.0, 0.8, 0.8), cfg, progress=progress)
    finally:
        progress.close()
    for name, vol in (("clean", clean), ("noisy", noisy), ("denoised", result)):
        write_volume(outdir / f"{name}.nrrd", vol, reference)
    (outdir / "report.json").write_text(report.to_json())
    data_range = 1000.0  # HU-like window of the phantom, stated for the PSNR
    before, after = psnr(clean, noisy, data_range), psnr(clean, result, data_range)
    _demo_figure(outdir / "demo.png", clean, noisy, result, before, after)
    print(f"PSNR before: {before:.2f} dB  after: {after:.2f} dB  (data range {data_range:g} HU, whole volume)")
    print(f"wrote {outdir}/noisy.nrrd, denoised.nrrd, clean.nrrd, demo.png, report.json")
    return 0 if np.isfinite(after) else 1


def _demo_figure(path: Path, clean, noisy, result, before: float, after: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    k = clean.shape[0] // 2
    fig, axes = plt.subplots(1, 3, figsize=(12, 4.4))
    for ax, img, title in (
        (axes[0], noisy[k], f"noisy input ({before:.1f} dB)"),
        (axes[1], result[k], f"NSN2N ({after:.1f} dB)"),
        (axes[2], clean[k], "clean reference"),
    ):
        ax.imshow(img, cmap="gray", vmin=-100, vmax=150)
        ax.set_title(title)
        ax.axis("off")
    fig.suptitle(f"middle slice {k}, window -100..150 HU")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``nsn2n`` command; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "denoise":
            return _run_denoise(args)
        if args.command == "batch":
            return _run_batch(args)
        return _run_demo(args)
    except (Exception, KeyboardInterrupt) as exc:  # noqa: BLE001 - every error becomes one line and a code
        err = explain(exc)
        if isinstance(err, CancelledError) and args.command == "batch":
            print("nsn2n: interrupted; every finished volume is kept (rerun to go on).", file=sys.stderr)
        elif isinstance(err, CancelledError):
            print("nsn2n: interrupted; no output was written.", file=sys.stderr)
        else:
            print(f"nsn2n: error: {err}", file=sys.stderr)
        return exit_code(err)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
