"""Denoise one volume file in batch mode: a thin wrapper over the engine's worker (``NSN2NDenoiseLib.worker``),
the code that the CLI module NSN2NDenoiseCLI runs.

In 3D Slicer (no window)::

    Slicer --no-splash --no-main-window --python-script <module folder>/Scripts/nsn2n_batch.py \\
        --input IN --output OUT [--preset fast|default|best] [--iterations N] [--device auto|cpu|cuda] ...

With plain Python and the engine's dependencies (numpy, scipy, SimpleITK, torch)::

    python nsn2n_batch.py --input IN --output OUT [options]

Every option other than ``--input`` and ``--output`` is the worker's (``--help`` lists them), with the same
meaning as in the CLI module. The input is a volume file (NRRD, NIfTI, MetaImage) or a DICOM folder; the output
format follows the output file's extension and the output has the input's geometry. Progress is printed on
stdout in Slicer's CLI format; errors are one line on stderr; the exit status is that of
``NSN2NDenoiseLib.errors.exit_code`` (0 ok, 1 unexpected, 2 bad input or options, 3 device, 130 cancelled).
To denoise a folder of files from Slicer, loop over the CLI module instead (README, "Batch mode").
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys

MODULE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def worker_argv(argv: list[str]) -> list[str]:
    """The worker's arguments: ``--input IN --output OUT`` become its positional INPUT OUTPUT; the rest pass on."""
    from NSN2NDenoiseLib.options import OPTIONS

    parser = argparse.ArgumentParser(
        prog="nsn2n_batch.py",
        description="Denoise a CT or MRI volume file by NS-N2N self-supervised training on that volume.",
        epilog="Other options (the CLI module's): "
        + ", ".join(o.flag for o in OPTIONS)
        + ", --report REPORT.json; python -m NSN2NDenoiseLib.worker --help describes them.",
    )
    parser.add_argument("--input", required=True, help="input volume file (e.g. .nrrd, .nii.gz, .mha) or DICOM folder")
    parser.add_argument("--output", required=True, help="output volume file; the format follows the extension")
    known, rest = parser.parse_known_args(argv)
    return [*rest, known.input, known.output]


def main(argv: list[str] | None = None) -> int:
    if MODULE_DIR not in sys.path:
        sys.path.insert(0, MODULE_DIR)
    if importlib.util.find_spec("torch") is None:
        print("nsn2n: error: PyTorch is not installed: install it with Slicer's PyTorch Util module "
              "(or pip install torch), then run again.", file=sys.stderr)  # fmt: skip
        return 1
    from NSN2NDenoiseLib import worker

    try:
        args = worker_argv(sys.argv[1:] if argv is None else argv)
    except SystemExit as exc:  # argparse exits 2 on bad arguments and 0 on --help
        return int(exc.code or 0)
    return worker.main(args)


if __name__ == "__main__":
    status = main()
    try:
        import slicer

        in_slicer = getattr(slicer, "app", None) is not None
    except ImportError:
        in_slicer = False
    if in_slicer:
        slicer.util.exit(status)  # lets Slicer finish pending events, then exits with this status
    else:
        sys.exit(status)
