"""The Slicer module, the CLI module, the batch script and the engine parse with the grammar of every Python that a
supported Slicer embeds, whatever Python runs the tests.

Slicer 5.10 and 5.12 embed Python 3.12.10 (Slicer's CMakeLists.txt, Slicer_REQUIRED_PYTHON_VERSION); the code
needs Python 3.10 or later, so the minimum grammar checked is 3.10. ``ast.parse(feature_version=...)`` is
best-effort: it refuses syntax newer than the version asked for (e.g. ``except*``, ``type X = ...``, PEP 701
f-strings) but cannot check a grammar newer than that of the Python running the test.
"""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

MINIMUM_PYTHON = (3, 10)
EMBEDDED_PYTHON = {"5.10": (3, 12, 10), "5.12": (3, 12, 10)}
"""Supported Slicer release -> the Python it embeds."""

FILES = sorted(
    [ROOT / "NSN2NDenoise" / "NSN2NDenoise.py"]
    + list((ROOT / "NSN2NDenoise" / "NSN2NDenoiseLib").glob("*.py"))
    + list((ROOT / "NSN2NDenoise" / "Scripts").glob("*.py"))
    + list((ROOT / "NSN2NDenoiseCLI").glob("*.py"))
)
GRAMMARS = sorted({MINIMUM_PYTHON} | {version[:2] for version in EMBEDDED_PYTHON.values()})


def dotted(version: tuple[int, ...]) -> str:
    return ".".join(map(str, version))


def test_the_files_checked_include_every_front_end():
    names = {path.name for path in FILES}
    assert {"NSN2NDenoise.py", "worker.py", "options.py", "nsn2n_batch.py", "NSN2NDenoiseCLI.py"} <= names


@pytest.mark.parametrize("grammar", GRAMMARS, ids=lambda v: "py" + dotted(v))
@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_file_parses_with_the_grammar(path, grammar):
    source = path.read_text(encoding="utf-8")
    try:
        ast.parse(source, filename=str(path), feature_version=grammar)
    except SyntaxError as exc:
        pytest.fail(f"{path.relative_to(ROOT)}:{exc.lineno}: not Python {dotted(grammar)} syntax: {exc.msg}")


def test_the_grammar_check_refuses_newer_syntax():
    # `except*` is Python 3.11 syntax: the 3.10 check must refuse it, or it checks nothing.
    source = "try:\n    pass\nexcept* ValueError:\n    pass\n"
    if sys.version_info < (3, 11):
        pytest.skip("this Python cannot parse except* at all")
    ast.parse(source, feature_version=(3, 11))
    with pytest.raises(SyntaxError):
        ast.parse(source, feature_version=MINIMUM_PYTHON)


def test_packaging_and_lint_target_the_minimum_python():
    text = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    assert f'requires-python = ">={dotted(MINIMUM_PYTHON)}"' in text
    assert 'target-version = "py{}{}"'.format(*MINIMUM_PYTHON) in text


def test_readme_states_the_supported_slicer_versions_and_their_python():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    for slicer, python in EMBEDDED_PYTHON.items():
        row = re.search(rf"^\|\s*{re.escape(slicer)}\s*\|\s*([\d.]+)\s*\|", readme, re.M)
        assert row, f"README: no row for Slicer {slicer} in the supported versions table"
        assert row.group(1) == dotted(python), f"README: Slicer {slicer} embeds Python {python}"
    assert f"Python {dotted(MINIMUM_PYTHON)}" in readme
