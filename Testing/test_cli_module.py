"""The Slicer CLI module NSN2NDenoiseCLI: its XML descriptor against the engine's option table and Slicer's rules,
and its script run as Slicer runs it (a separate process, arguments built from the XML the way Slicer builds them,
NRRD files in and out), under plain Python.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
from conftest import require

from NSN2NDenoiseLib import __version__, worker
from NSN2NDenoiseLib.config import PRESETS
from NSN2NDenoiseLib.errors import EXIT_CANCELLED, EXIT_INPUT
from NSN2NDenoiseLib.options import OPTIONS, to_config

sitk = require("SimpleITK", "the engine: pip install -e .")

ROOT = Path(__file__).resolve().parents[1]
CLI_DIR = ROOT / "NSN2NDenoiseCLI"
SCRIPT = CLI_DIR / "NSN2NDenoiseCLI.py"
XML = CLI_DIR / "NSN2NDenoiseCLI.xml"

DIRECTION = (0.8, 0.0, -0.6, 0.0, 1.0, 0.0, 0.6, 0.0, 0.8)  # oblique (rotation about y), LPS as ITK stores it
SPACING = (0.7, 0.8, 3.0)
ORIGIN = (10.0, -20.0, 5.5)

# SlicerExecutionModel's rule for <name> and <longflag>: "can only contain letters, numbers and underscores and
# must start with a _ or letter".
VALID_VARIABLE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# Parameter tags whose value Slicer writes after the flag in any case (vtkSlicerCLIModuleLogic, command line).
ALWAYS_PASSED = {"integer", "float", "double", "string-enumeration", "integer-enumeration", "float-enumeration",
                 "double-enumeration"}  # fmt: skip
NON_PARAMETERS = {"label", "description"}


def load_script():
    """The CLI script as a module (importing it runs nothing)."""
    spec = importlib.util.spec_from_file_location("NSN2NDenoiseCLI", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


cli = load_script()


def xml_parameters() -> list[dict]:
    """Every parameter of the XML in document order: tag, name, longflag, index, channel, default, elements,
    minimum, maximum, advanced (of its group), label, description."""
    params = []
    for group in ET.parse(XML).getroot().iter("parameters"):
        for element in group:
            if element.tag in NON_PARAMETERS:
                continue
            constraints = element.find("constraints")
            params.append(
                {
                    "tag": element.tag,
                    "attrib": element.attrib,
                    "name": element.findtext("name"),
                    "longflag": element.findtext("longflag"),
                    "flag": element.findtext("flag"),
                    "index": element.findtext("index"),
                    "channel": element.findtext("channel"),
                    "default": element.findtext("default"),
                    "elements": [e.text for e in element.findall("element")],
                    "minimum": None if constraints is None else constraints.findtext("minimum"),
                    "maximum": None if constraints is None else constraints.findtext("maximum"),
                    "advanced": group.get("advanced") == "true",
                    "label": element.findtext("label"),
                    "description": element.findtext("description"),
                }
            )
    return params


PARAMS = xml_parameters()
BY_NAME = {p["name"]: p for p in PARAMS}


def slicer_argv(values: dict[str, str], volumes: dict[str, str]) -> list[str]:
    """The argument list that Slicer's CLI logic builds (vtkSlicerCLIModuleLogic::ApplyTask) for parameter
    ``values`` (XML defaults for the rest) and image parameters set to ``volumes`` (name -> file Slicer wrote or
    will read): flagged parameters in XML order, then the indexed ones by index."""
    argv: list[str] = []
    positional: dict[int, str] = {}
    for p in PARAMS:
        value = volumes[p["name"]] if p["tag"] == "image" else values.get(p["name"], p["default"] or "")
        if p["index"] is not None:
            positional[int(p["index"])] = value
            continue
        flag = "--" + p["longflag"].lstrip("-") if p["longflag"] else "-" + p["flag"]
        if p["tag"] in ALWAYS_PASSED:
            argv += [flag, value]
        elif p["tag"] == "boolean":
            argv += [flag] if value == "true" else []
        elif value:  # file, directory, string, image: only when set
            argv += [flag, value]
    return argv + [positional[i] for i in sorted(positional)]


def worker_config(argv: list[str]):
    """The engine configuration that the script would run with for ``argv``."""
    args = worker.build_parser().parse_args(cli.worker_argv(argv, OPTIONS))
    return args, to_config({o.name: getattr(args, o.name) for o in OPTIONS})


# -- the XML descriptor ----------------------------------------------------------------------------------------


def test_xml_is_well_formed_and_follows_slicer_rules():
    root = ET.parse(XML).getroot()
    assert root.tag == "executable"
    assert root.findtext("title") and root.findtext("description") and root.findtext("contributor")
    assert root.findtext("category").startswith("Filtering")
    assert root.findtext("version") == __version__
    names = [p["name"] for p in PARAMS]
    assert len(names) == len(set(names)), "parameter names must be unique"
    for p in PARAMS:
        assert VALID_VARIABLE.match(p["name"]), p["name"]
        assert p["label"] and p["description"], p["name"]
        assert (p["index"] is None) != (p["longflag"] is None), f"{p['name']}: either an index or a longflag"
        if p["longflag"]:
            assert VALID_VARIABLE.match(p["longflag"]), f"{p['name']}: Slicer refuses '-' in a longflag"
        if p["elements"]:
            assert p["default"] in p["elements"], p["name"]
    # Slicer finds the descriptor next to the script by its base name, and runs the script with python-real.
    assert XML.stem == SCRIPT.stem
    assert SCRIPT.read_text(encoding="utf-8").startswith("#!/usr/bin/env python-real\n")
    assert os.access(SCRIPT, os.X_OK)


def test_xml_volumes_and_report():
    inp, out, report = BY_NAME["inputVolume"], BY_NAME["outputVolume"], BY_NAME["report"]
    assert (inp["tag"], inp["channel"], inp["index"], inp["attrib"].get("type")) == ("image", "input", "0", "scalar")
    assert (out["tag"], out["channel"], out["index"]) == ("image", "output", "1")
    assert out["attrib"].get("reference") == "inputVolume"  # the output node takes the input's geometry
    assert (report["tag"], report["channel"], report["longflag"]) == ("file", "output", "report")
    assert report["default"] is None  # no report unless a file is chosen


def test_cmake_builds_the_scripted_cli_and_the_extension_adds_it():
    text = (CLI_DIR / "CMakeLists.txt").read_text(encoding="utf-8")
    assert re.search(r"set\(MODULE_NAME NSN2NDenoiseCLI\)", text)
    assert re.search(r"SlicerMacroBuildScriptedCLI\(\s*NAME \$\{MODULE_NAME\}", text)
    assert "add_subdirectory(NSN2NDenoiseCLI)" in (ROOT / "CMakeLists.txt").read_text(encoding="utf-8")


def preset_values(option) -> set:
    """The option's values over the presets; the preset option's own default is the engine's default preset."""
    return {option.default(p) for p in PRESETS} if option.field else {to_config({}).preset}


def test_xml_parameters_and_defaults_agree_with_the_option_table():
    assert set(BY_NAME) == {o.slicer_name for o in OPTIONS} | {"inputVolume", "outputVolume", "report"}
    # A preset-dependent option needs the "preset's value" default; no other option may have it.
    assert set(cli.FOLLOWS_PRESET) == {o.name for o in OPTIONS if len(preset_values(o)) > 1}
    for option in OPTIONS:
        p = BY_NAME[option.slicer_name]
        follows = option.name in cli.FOLLOWS_PRESET
        assert p["longflag"] == option.name, option.name
        assert p["label"] == option.label, option.name
        assert p["description"].startswith(option.help), option.name
        assert p["advanced"] == option.advanced, option.name
        if option.type is str:
            expected = ([cli.PRESET_CHOICE] if follows else []) + list(option.choices)
            assert p["tag"] == "string-enumeration" and p["elements"] == expected, option.name
        elif option.type is int and option.choices:
            expected = ([cli.PRESET_VALUE] if follows else []) + [str(c) for c in option.choices]
            assert p["tag"] == "integer-enumeration" and p["elements"] == expected, option.name
        elif option.type is int:
            assert p["tag"] == "integer", option.name
            low = int(cli.PRESET_VALUE) if follows else option.low
            assert (int(p["minimum"]), int(p["maximum"])) == (low, option.high), option.name
        else:
            assert option.type is float and p["tag"] == "double", option.name
            assert (float(p["minimum"]), float(p["maximum"])) == (option.low, option.high), option.name
        if follows:
            assert p["default"] == str(cli.preset_marker(option)), option.name
            # The sentinel must not be a value of the option, or a user could not choose it.
            assert cli.preset_marker(option) not in option.choices, option.name
            if option.type is not str:
                assert option.low is None or cli.preset_marker(option) < option.low, option.name
        else:
            (value,) = preset_values(option)
            assert option.type(p["default"]) == value, option.name


# -- the script accepts what Slicer passes ---------------------------------------------------------------------

VOLUMES = {"inputVolume": "/tmp/Slicer/ABCD_vtkMRMLScalarVolumeNode1.nrrd",
           "outputVolume": "/tmp/Slicer/ABCD_vtkMRMLScalarVolumeNode2.nrrd"}  # fmt: skip


def test_the_xml_defaults_give_the_default_preset():
    args, cfg = worker_config(slicer_argv({}, VOLUMES))
    assert (args.input, args.output) == (VOLUMES["inputVolume"], VOLUMES["outputVolume"])
    assert args.report is None  # an empty file parameter is not passed
    assert cfg == to_config({"preset": "default"})


@pytest.mark.parametrize("preset", PRESETS)
def test_preset_dependent_options_left_at_the_xml_default_follow_the_chosen_preset(preset):
    _, cfg = worker_config(slicer_argv({"preset": preset}, VOLUMES))
    assert cfg == to_config({"preset": preset})


def xml_values():
    """(parameter name, value) for every enumeration element and both ends of every number's range."""
    for p in PARAMS:
        if p["tag"] in ("image", "file"):
            continue
        values = p["elements"] or [p["minimum"], p["maximum"]]
        for value in values:
            yield p["name"], value


@pytest.mark.parametrize(("name", "value"), list(xml_values()))
def test_every_value_the_xml_allows_is_accepted(name, value):
    argv = slicer_argv({name: value, "report": "/tmp/Slicer/report.json"}, VOLUMES)
    args, cfg = worker_config(argv)
    assert args.report == "/tmp/Slicer/report.json"
    option = next(o for o in OPTIONS if o.slicer_name == name)
    if option.name in cli.FOLLOWS_PRESET and value == str(cli.preset_marker(option)):
        assert getattr(args, option.name) is None
    else:
        assert getattr(args, option.name) == option.type(value)
        assert cfg == to_config({option.name: option.type(value)})


@pytest.mark.parametrize(
    "argv",
    [["--device", "tpu", "in.nrrd", "out.nrrd"], ["--iterations", "many", "in.nrrd", "out.nrrd"],
     ["--tta", "3", "in.nrrd", "out.nrrd"], ["--unknown", "1", "in.nrrd", "out.nrrd"], ["in.nrrd"]],
)  # fmt: skip
def test_a_bad_argument_is_one_line_and_status_2(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.worker_argv(argv, OPTIONS)
    assert exc.value.code == EXIT_INPUT
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("nsn2n: error:")


def test_the_script_finds_the_engine_where_the_extension_installs_it(tmp_path):
    # lib/Slicer-X.Y/cli-modules/NSN2NDenoiseCLI.py next to lib/Slicer-X.Y/qt-scripted-modules/NSN2NDenoiseLib
    lib = tmp_path / "lib" / "Slicer-5.10"
    (lib / "qt-scripted-modules" / "NSN2NDenoiseLib").mkdir(parents=True)
    (lib / "qt-scripted-modules" / "NSN2NDenoiseLib" / "worker.py").write_text("")
    for script in (lib / "cli-modules" / "NSN2NDenoiseCLI.py", lib / "cli-modules" / "Release" / "NSN2NDenoiseCLI.py"):
        assert cli.find_engine(str(script)) == str(lib / "qt-scripted-modules")
    assert cli.find_engine(str(tmp_path / "elsewhere" / "NSN2NDenoiseCLI.py")) is None
    assert cli.find_engine(str(SCRIPT)) == str(ROOT / "NSN2NDenoise")  # the source tree


# -- the script end to end, in its own process ------------------------------------------------------------------


@pytest.fixture
def noisy_nrrd(tmp_path):
    """An (8, 32, 32) int16 NRRD with anisotropic spacing, an origin and an oblique direction."""
    rng = np.random.default_rng(0)
    k, j, i = np.meshgrid(np.arange(8), np.arange(32), np.arange(32), indexing="ij")
    voxels = 100.0 + 50.0 * np.sin(j / 5.0) * np.cos(i / 6.0) + 2.0 * k + rng.normal(0.0, 10.0, (8, 32, 32))
    voxels = voxels.astype(np.int16)
    image = sitk.GetImageFromArray(voxels)  # K,J,I array -> x=I, y=J, z=K image
    image.SetSpacing(SPACING)
    image.SetOrigin(ORIGIN)
    image.SetDirection(DIRECTION)
    path = tmp_path / "Slicer" / "ABCD_vtkMRMLScalarVolumeNode1.nrrd"  # the kind of name Slicer writes
    path.parent.mkdir()
    sitk.WriteImage(image, str(path))
    return path, voxels


def script_command(argv):
    return [sys.executable, str(SCRIPT), *argv]


def script_env():
    return dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")


def run_script(argv, timeout=300):
    # From an unrelated folder, so that the script must find the engine from its own location.
    return subprocess.run(
        script_command(argv), capture_output=True, text=True, timeout=timeout, env=script_env(), cwd=os.sep
    )


def test_the_script_denoises_a_volume_keeps_its_geometry_and_reports_progress(noisy_nrrd):
    path, voxels = noisy_nrrd
    output = path.parent / "ABCD_vtkMRMLScalarVolumeNode2.nrrd"
    report = path.parent / "report.json"
    before = path.read_bytes()
    values = {"preset": "fast", "iterations": "20", "device": "cpu", "threads": "1", "report": str(report)}
    result = run_script(slicer_argv(values, {"inputVolume": str(path), "outputVolume": str(output)}))
    assert result.returncode == 0, result.stderr
    assert "error" not in result.stderr

    assert path.read_bytes() == before
    out = sitk.ReadImage(str(output))
    assert out.GetSize() == (32, 32, 8)
    assert out.GetSpacing() == pytest.approx(SPACING, abs=1e-9)
    assert out.GetOrigin() == pytest.approx(ORIGIN, abs=1e-9)
    assert out.GetDirection() == pytest.approx(DIRECTION, abs=1e-9)
    array = sitk.GetArrayFromImage(out)
    assert np.all(np.isfinite(array))
    assert not np.array_equal(array, voxels.astype(array.dtype))
    assert abs(float(array.mean()) - float(voxels.mean())) < 20.0  # same intensity units as the input
    assert json.loads(report.read_text())["config"]["training"]["iterations"] == 20

    # Slicer's CLI progress protocol (vtkSlicerCLIModuleLogic reads these tags from stdout).
    lines = result.stdout.splitlines()
    assert lines[0].startswith("<filter-start>") and lines[-1].startswith("<filter-end>")
    fractions = [float(m) for m in re.findall(r"^<filter-progress>([^<]*)</filter-progress>$", result.stdout, re.M)]
    assert len(fractions) >= 3
    assert all(0.0 <= f <= 1.0 for f in fractions)
    assert fractions == sorted(fractions) and fractions[-1] == pytest.approx(1.0, abs=1e-3)
    comments = re.findall(r"^<filter-comment>([^<]*)</filter-comment>$", result.stdout, re.M)
    assert comments == ["weights", "training", "inference"]


def test_a_bad_input_gives_status_2_and_one_line(noisy_nrrd):
    path, _ = noisy_nrrd
    not_a_volume = path.parent / "text.nrrd"
    not_a_volume.write_text("this is not a volume\n")
    for bad in (not_a_volume, path.parent / "missing.nrrd"):
        output = path.parent / "never.nrrd"
        result = run_script(slicer_argv({}, {"inputVolume": str(bad), "outputVolume": str(output)}))
        assert result.returncode == EXIT_INPUT, result.stderr
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("nsn2n: error:"), result.stderr
        assert not output.exists()


def test_sigterm_mid_run_leaves_no_output(noisy_nrrd):
    path, _ = noisy_nrrd
    output = path.parent / "ABCD_vtkMRMLScalarVolumeNode2.nrrd"
    values = {"preset": "fast", "iterations": "100000", "device": "cpu", "threads": "1"}
    argv = slicer_argv(values, {"inputVolume": str(path), "outputVolume": str(output)})
    process = subprocess.Popen(
        script_command(argv), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=script_env(), cwd=os.sep
    )
    try:
        for line in process.stdout:  # wait until training runs
            if line.startswith("<filter-comment>training"):
                break
        else:
            pytest.fail(f"no training progress: {process.stderr.read()}")
        process.send_signal(signal.SIGTERM)
        process.stdout.read()
        assert process.wait(timeout=60) == EXIT_CANCELLED
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    lines = process.stderr.read().strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("nsn2n: error:")
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]  # no output, no temporary folder


# -- the README's uses -----------------------------------------------------------------------------------------


def test_readme_examples_use_the_module_and_parameter_names_slicer_gives():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    blocks = [b for b in re.findall(r"```(?:python|bash)\n(.*?)```", readme, re.S) if "nsn2ndenoisecli" in b]
    assert len(blocks) >= 2, "the console example and the batch folder loop"
    assert SCRIPT.stem.lower() == "nsn2ndenoisecli"  # Slicer names the module after the script, in lower case
    for block in blocks:
        assert "slicer.cli.runSync(slicer.modules.nsn2ndenoisecli, None, params" in block
        keys = set(re.findall(r"""["'](\w+)["']\s*:""", block))
        assert {"inputVolume", "outputVolume"} <= keys <= set(BY_NAME)
    listed = re.search(r"The other parameter names are (.*?)\.\n", readme, re.S)
    assert listed, "README: the list of the other parameter names"
    named = set(re.findall(r"`(\w+)`", listed.group(1)))
    assert named | {"inputVolume", "outputVolume", "preset", "iterations", "device"} == set(BY_NAME)
