"""Denoise one volume file with NSN2N in batch mode and save the result.

In 3D Slicer (no window)::

    Slicer --no-main-window --python-script <module folder>/Scripts/nsn2n_batch.py --input IN --output OUT

With plain Python and the ``slicer-core`` package (no Slicer application)::

    python nsn2n_batch.py --input IN --output OUT [--preset fast|default|best] [--iterations N] [--device auto|cpu|gpu]

Any volume format that Slicer's volume archetype storage reads (NRRD, NIfTI, MetaImage, ...) is accepted; the
output format follows the output file's extension. The output has the input's exact geometry. Exit status: 0 on
success, 1 for a denoising or input error, 2 for bad arguments; errors are one line on stderr, progress goes to
stderr. The script finds ``NSN2NDenoiseLib`` in the module folder above it.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

MODULE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def parse_args(argv):
    parser = argparse.ArgumentParser(
        prog="nsn2n_batch.py",
        description="Denoise a CT or MRI volume file by NS-N2N self-supervised training on that volume.",
    )
    parser.add_argument("--input", required=True, help="input volume file (e.g. .nrrd, .nii.gz, .mha)")
    parser.add_argument("--output", required=True, help="output volume file; the format follows the extension")
    parser.add_argument(
        "--preset",
        default="default",
        choices=("fast", "default", "best"),
        help="quality/time trade-off (default: %(default)s)",
    )
    parser.add_argument("--iterations", type=int, default=None, help="training iterations (default: the preset's)")
    parser.add_argument(
        "--device",
        default="auto",
        choices=("auto", "cpu", "gpu"),
        help="'auto' uses a CUDA GPU when there is one (default: %(default)s)",
    )
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: torch's choice)")
    parser.add_argument("--seed", type=int, default=None, help="random seed (default: the preset's)")
    parser.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    return parser.parse_args(argv)


def _scene():
    import slicer

    scene = getattr(slicer, "mrmlScene", None)
    if scene is None:  # plain Python with slicer-core: no application, so make a scene
        from slicer import vtkMRMLScene

        scene = vtkMRMLScene()
    return scene


def _storage_node(scene, path):
    from slicer import vtkMRMLVolumeArchetypeStorageNode

    storage = vtkMRMLVolumeArchetypeStorageNode()
    storage.SetFileName(path)
    scene.AddNode(storage)
    return storage


def load_volume(scene, path):
    """Read a volume file into a new scalar volume node of ``scene``."""
    from NSN2NDenoiseLib.errors import InputError

    if not os.path.isfile(path):
        raise InputError(f"Input file not found: {path}")
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", os.path.basename(path).split(".")[0])
    storage = _storage_node(scene, path)
    if not storage.ReadData(node):
        raise InputError(f"Could not read a volume from {path}: unsupported format or damaged file.")
    node.SetAndObserveStorageNodeID(storage.GetID())
    return node


def save_volume(scene, node, path):
    """Write ``node`` to ``path``; the format follows the extension."""
    from NSN2NDenoiseLib.errors import NSN2NError

    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise NSN2NError(f"Output folder does not exist: {folder}")
    storage = _storage_node(scene, path)
    if not storage.WriteData(node):
        raise NSN2NError(f"Could not write {path}: check the extension (.nrrd, .nii.gz, .mha, ...) and permissions.")


def _progress_printer(quiet):
    last = {"t": 0.0, "phase": None}

    def show(job):
        progress = job.progress
        if quiet or progress is None:
            return
        now = time.monotonic()
        if progress.phase != last["phase"] or now - last["t"] >= 5.0:
            last.update(t=now, phase=progress.phase)
            print(f"NSN2N: {progress.describe()}", file=sys.stderr, flush=True)

    return show


def run(args) -> int:
    if MODULE_DIR not in sys.path:
        sys.path.insert(0, MODULE_DIR)
    import slicer

    if getattr(slicer, "app", None) is not None:
        import importlib.util

        if importlib.util.find_spec("torch") is None:
            print(
                "error: PyTorch is not installed. Open the PyTorch Util module in Slicer to install it, "
                "then run again.",
                file=sys.stderr,
            )
            return 1

    from NSN2NDenoiseLib.errors import NSN2NError
    from NSN2NDenoiseLib.mrml import MRMLDenoiser

    try:
        scene = _scene()
        input_node = load_volume(scene, args.input)
        denoiser = MRMLDenoiser(scene)
        job = denoiser.start(
            input_node,
            preset=args.preset,
            iterations=args.iterations,
            device=args.device,
            threads=args.threads,
            seed=args.seed,
        )
        show = _progress_printer(args.quiet)
        try:
            while not job.job.wait(0.5):
                show(job)
        except KeyboardInterrupt:
            job.cancel()
            job.job.wait()
            print("error: interrupted; nothing was written.", file=sys.stderr)
            return 130
        state = job.poll()
        if state != "done":
            raise job.error
        save_volume(scene, job.output_node, args.output)
    except NSN2NError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if not args.quiet:
        print(f"NSN2N: wrote {args.output} in {job.job.elapsed_s:.1f} s", file=sys.stderr)
    return 0


def main(argv=None) -> int:
    try:
        args = parse_args(sys.argv[1:] if argv is None else argv)
    except SystemExit as exc:  # argparse exits 2 on bad arguments and 0 on --help
        return int(exc.code or 0)
    return run(args)


if __name__ == "__main__":
    status = main()
    import slicer

    if getattr(slicer, "app", None) is not None:
        slicer.util.exit(status)  # lets Slicer finish pending events, then exits with this status
    else:
        sys.exit(status)
