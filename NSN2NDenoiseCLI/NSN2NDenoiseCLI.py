#!/usr/bin/env python-real
"""NSN2N Denoise as a Slicer CLI module: the command line that NSN2NDenoiseCLI.xml describes.

Slicer runs this script with its own Python (``python-real``) in a separate process, with the arguments the XML
declares: the option flags first (``--preset default --iterations 0 --slice_axis auto ...``, ``--report R.json``
only when a report file is chosen), then the input and output volumes as NRRD file paths that Slicer writes and
reads back. The script translates them into the arguments of :func:`NSN2NDenoiseLib.worker.main` and runs it; the
worker prints Slicer's progress lines (``<filter-progress>``, a ``<filter-comment>`` per phase), writes the output
only on success, and returns the exit code of ``NSN2NDenoiseLib.errors.exit_code`` (0 ok, 1 unexpected, 2 bad input
or options, 3 device, 130 cancelled) after one error line on stderr. Cancel in Slicer ends the process, so nothing
is written and the GPU memory goes with the process.

It also runs under any Python with the engine's dependencies, e.g.
``python NSN2NDenoiseCLI.py --preset fast --iterations 500 in.nrrd out.nrrd``.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys

ENGINE_PACKAGE = "NSN2NDenoiseLib"

PRESET_VALUE = "0"
"""The XML value of a number option in :data:`FOLLOWS_PRESET` that means "the preset's value": the flag is left
out."""
PRESET_CHOICE = "preset"
"""The same for a text option in :data:`FOLLOWS_PRESET` (an element of its enumeration)."""

FOLLOWS_PRESET = ("iterations", "tta", "wiener")
"""Options whose value differs between presets. A fixed XML default would override the chosen preset, so their
XML default is :func:`preset_marker`, which is not a valid value of theirs."""


def preset_marker(option):
    """The value of ``option`` (in :data:`FOLLOWS_PRESET`) that means "the preset's value", in its type."""
    return PRESET_CHOICE if option.type is str else option.type(PRESET_VALUE)


EXIT_FAILED = 1
EXIT_INPUT = 2
"""The exit codes of NSN2NDenoiseLib.errors, restated because they are needed before the engine is importable."""


def engine_folders(script: str = __file__) -> list[str]:
    """Folders that may hold ``NSN2NDenoiseLib``, most likely first.

    The extension installs this script in ``lib/Slicer-X.Y/cli-modules/`` and the NSN2NDenoise module with its Lib
    in ``lib/Slicer-X.Y/qt-scripted-modules/``; a multi-configuration build tree puts the script one level deeper
    (``cli-modules/Release/``); in the source tree the module folder is ``../NSN2NDenoise``.
    """
    here = os.path.dirname(os.path.abspath(script))
    parent = os.path.dirname(here)
    return [
        os.path.join(parent, "qt-scripted-modules"),
        os.path.join(os.path.dirname(parent), "qt-scripted-modules"),
        os.path.join(parent, "NSN2NDenoise"),
    ]


def find_engine(script: str = __file__) -> str | None:
    """The first of :func:`engine_folders` that contains the engine's worker, or None."""
    for folder in engine_folders(script):
        if os.path.isfile(os.path.join(folder, ENGINE_PACKAGE, "worker.py")):
            return folder
    return None


class _OneLineParser(argparse.ArgumentParser):
    """An argument parser whose errors are one line on stderr (argparse's own add the usage)."""

    def error(self, message):
        self.exit(EXIT_INPUT, f"nsn2n: error: {message} (see --help).\n")


def build_parser(options) -> argparse.ArgumentParser:
    """The arguments Slicer passes, from ``options`` (the engine's :data:`options.OPTIONS`).

    Each option's flag is ``--`` and its snake_case name, which is its ``longflag`` in the XML (Slicer's XML
    allows no ``-`` in a flag). Types and choices are checked here so that a wrong value is one line; bounds are
    the engine configuration's to check.
    """
    p = _OneLineParser(prog="NSN2NDenoiseCLI", description="Denoise one volume file by NS-N2N (Slicer CLI module).")
    for option in options:
        choices = option.choices
        if choices and option.name in FOLLOWS_PRESET:
            choices = (preset_marker(option), *choices)
        p.add_argument(
            "--" + option.name,
            dest=option.name,
            type=option.type,
            choices=choices or None,
            metavar=option.name.upper(),
            help=option.help
            + (f" {preset_marker(option)}: the preset's value." if option.name in FOLLOWS_PRESET else ""),
        )
    p.add_argument("--report", default="", metavar="REPORT.json", help="write the run report as JSON.")
    p.add_argument("input", help="input volume file (Slicer passes an NRRD file)")
    p.add_argument("output", help="output volume file (Slicer passes an NRRD file and loads it back)")
    return p


def worker_argv(argv: list[str], options) -> list[str]:
    """The arguments of ``worker.main`` for this script's ``argv``.

    Options in :data:`FOLLOWS_PRESET` given as :func:`preset_marker` are left out, so the preset decides them; an
    empty report path is left out. Flags become the worker's kebab-case ones (``--slice_axis`` -> ``--slice-axis``).
    Exits with status 2 and one line on stderr for an unknown flag or a value of the wrong type or not a choice.
    """
    args = build_parser(options).parse_args(argv)
    out: list[str] = []
    for option in options:
        value = getattr(args, option.name)
        if value is None or (option.name in FOLLOWS_PRESET and value == preset_marker(option)):
            continue
        out += [option.flag, str(value)]
    if args.report:
        out += ["--report", args.report]
    return [*out, args.input, args.output]


def _fail(code: int, message: str) -> int:
    print(f"nsn2n: error: {message}", file=sys.stderr, flush=True)
    return code


def main(argv: list[str] | None = None) -> int:
    """Run the engine's worker on this script's arguments; returns the exit code."""
    argv = sys.argv[1:] if argv is None else argv
    folder = find_engine()
    if folder is None:
        return _fail(
            EXIT_FAILED,
            f"{ENGINE_PACKAGE} was not found next to this script (looked in "
            f"{', '.join(engine_folders())}): reinstall the NSN2N extension.",
        )
    if folder not in sys.path:
        sys.path.insert(0, folder)
    if importlib.util.find_spec("torch") is None:
        return _fail(
            EXIT_FAILED,
            "PyTorch is not installed: install it with Slicer's PyTorch Util module "
            "(or pip install torch), then run again.",
        )
    # Importing the package imports the whole engine, torch included: hence the check above.
    from NSN2NDenoiseLib import worker
    from NSN2NDenoiseLib.options import OPTIONS

    return worker.main(worker_argv(argv, OPTIONS))


if __name__ == "__main__":
    sys.exit(main())
