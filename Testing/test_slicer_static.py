"""Static checks of the Slicer extension files (no Slicer, no torch): .ui widget names, CMake file lists,
extension metadata consistency, module-file import rules.
"""

from __future__ import annotations

import ast
import os
import re
import struct
import xml.etree.ElementTree as ET

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODULE = os.path.join(ROOT, "NSN2NDenoise")
MODULE_FILE = os.path.join(MODULE, "NSN2NDenoise.py")
UI_FILE = os.path.join(MODULE, "Resources", "UI", "NSN2NDenoise.ui")


def read(path):
    with open(path, encoding="utf-8") as f:
        return f.read()


def ui_widgets():
    """{name: element} of every widget in the .ui file."""
    tree = ET.parse(UI_FILE)
    return {w.get("name"): w for w in tree.iter("widget")}


def ui_property(widget, name):
    prop = widget.find(f"property[@name='{name}']")
    if prop is None:
        return None
    child = list(prop)[0]
    if child.tag == "stringlist":
        return [s.text for s in child]
    return child.text


def cmake_list(text, variable):
    match = re.search(rf"set\({variable}\s+(.*?)\)", text, re.S)
    assert match, f"{variable} not found"
    items = [line.split("#")[0].strip() for line in match.group(1).splitlines()]
    return {item.replace("${MODULE_NAME}", "NSN2NDenoise") for item in items if item}


def cmake_set(text, variable):
    match = re.search(rf'set\({variable} "([^"]*)"\)', text)
    assert match, f"{variable} not set in CMakeLists.txt"
    return match.group(1)


def s4ext_fields():
    fields = {}
    for line in read(os.path.join(ROOT, "NSN2N.s4ext")).splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition(" ")
            fields[key] = value.strip()
    return fields


def png_size(path):
    with open(path, "rb") as f:
        header = f.read(24)
    assert header[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    return struct.unpack(">II", header[16:24])


# -- .ui and the Python code that uses it ----------------------------------------------------------------------


def test_every_ui_name_used_in_the_module_exists_in_the_ui_file():
    used = set(re.findall(r"self\.ui\.(\w+)", read(MODULE_FILE)))
    assert len(used) >= 5, "the widget must use its .ui widgets"
    missing = used - set(ui_widgets())
    assert not missing, f"used in NSN2NDenoise.py but not in the .ui file: {sorted(missing)}"


def parameter_node_fields():
    tree = ast.parse(read(MODULE_FILE))
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name == "NSN2NDenoiseParameterNode":
            return {item.target.id for item in node.body if isinstance(item, ast.AnnAssign)}
    raise AssertionError("NSN2NDenoiseParameterNode not found")


def test_ui_parameter_bindings_match_the_parameter_node():
    fields = parameter_node_fields()
    bound = {}
    for name, widget in ui_widgets().items():
        parameter = ui_property(widget, "SlicerParameterName")
        if parameter is not None:
            bound[parameter] = name
    assert set(bound) - fields == set(), "a widget is bound to a parameter that does not exist"
    assert fields - set(bound) == set(), "a parameter has no widget"


def parameter_node_declarations():
    """{field: (type name, annotation extras, default)} of NSN2NDenoiseParameterNode, read from the source."""
    tree = ast.parse(read(MODULE_FILE))
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "NSN2NDenoiseParameterNode")
    out = {}
    for item in cls.body:
        if not isinstance(item, ast.AnnAssign):
            continue
        annotation, extras = item.annotation, {}
        if isinstance(annotation, ast.Subscript) and getattr(annotation.value, "id", None) == "Annotated":
            elements = annotation.slice.elts
            annotation = elements[0]
            for call in elements[1:]:
                extras[call.func.id] = tuple(ast.literal_eval(arg) for arg in call.args)
        default = ast.literal_eval(item.value) if item.value is not None else None
        out[item.target.id] = (getattr(annotation, "id", None), extras, default)
    return out


WIDGET_CLASS = {"choices": "QComboBox", int: "QSpinBox", float: "QDoubleSpinBox", bool: "QCheckBox"}


def test_every_engine_option_has_a_parameter_and_a_widget_that_agree_with_the_engine():
    """The parameter node restates the option table (which imports without torch, so this runs without it): any
    disagreement with the engine's names, types, choices, bounds or defaults fails here."""
    import sys

    sys.path.insert(0, MODULE)
    from NSN2NDenoiseLib.options import OPTIONS

    fields = parameter_node_declarations()
    bound = {ui_property(w, "SlicerParameterName"): w for w in ui_widgets().values()}
    for option in OPTIONS:
        name = option.slicer_name
        assert name in fields, f"option {option.name} has no parameter node field {name}"
        type_name, extras, default = fields[name]
        assert type_name == option.type.__name__, name
        expected_default = option.default("default")
        if name == "iterations":
            assert default == 0 and extras["WithinRange"] == (0, option.high), "0 means the preset's iterations"
        else:
            assert default == expected_default, f"{name}: the module says {default!r}, the engine {expected_default!r}"
            if option.choices:
                assert extras["Choice"] == (list(option.choices),), name
            elif option.low is not None:
                assert extras["WithinRange"] == (option.low, option.high), name
        assert name in bound, f"no widget of the .ui is bound to {name}"
        kind = "choices" if option.choices else option.type
        assert bound[name].get("class") == WIDGET_CLASS[kind], name
    option_names = {o.slicer_name for o in OPTIONS}
    extra = set(fields) - option_names - {"inputVolume", "outputVolume", "overridePreset", "showResidual"}
    extra -= set(MODEL_PATH_FIELDS)
    assert not extra, f"parameter node fields the engine does not have: {sorted(extra)}"
    module = read(MODULE_FILE)
    advanced = re.search(r"ADVANCED_OPTIONS = \(([^)]*)\)", module).group(1)
    assert [a.strip().strip('"') for a in advanced.split(",") if a.strip()] == [
        o.slicer_name for o in OPTIONS if o.advanced
    ]


MODEL_PATH_FIELDS = {"saveModelPath": "Save the trained model to:", "initModelPath": "Start from a saved model:"}


def test_model_path_fields_are_optional_path_edits_in_the_advanced_section():
    """Save / start-from model files: pathlib.Path fields (empty = off, no default) bound to ctkPathLineEdit
    widgets in the Advanced section, filtered to .safetensors, with the warm-start rule in the tooltip."""
    fields = parameter_node_declarations()
    tree = ast.parse(read(MODULE_FILE))
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "NSN2NDenoiseParameterNode")
    annotations = {i.target.id: ast.unparse(i.annotation) for i in cls.body if isinstance(i, ast.AnnAssign)}
    root = ET.parse(UI_FILE).getroot()
    advanced = next(w for w in root.iter("widget") if w.get("name") == "advancedCollapsibleButton")
    in_advanced = {w.get("name"): w for w in advanced.iter("widget")}
    labels = {ui_property(w, "text") for w in in_advanced.values() if w.get("class") == "QLabel"}
    for name, label in MODEL_PATH_FIELDS.items():
        assert annotations[name] == "pathlib.Path", name
        assert fields[name][2] is None, f"{name} must have no default (an empty path: off)"
        widget = next(w for w in in_advanced.values() if ui_property(w, "SlicerParameterName") == name)
        assert widget.get("class") == "ctkPathLineEdit", name
        assert ui_property(widget, "nameFilters") == ["NSN2N model (*.safetensors)"], name
        assert label in labels, label
    assert "Writable" in ui_property(in_advanced["saveModelPathLineEdit"], "filters")  # a save dialog
    tooltip = ui_property(in_advanced["initModelPathLineEdit"], "toolTip")
    assert "half the preset's iterations" in tooltip and "0.15 dB" in tooltip
    assert "ctkPathLineEdit" in {c.findtext("class") for c in root.iter("customwidget")}
    module = read(MODULE_FILE)
    assert re.search(r'MODEL_PATHS = \("saveModelPath", "initModelPath"\)', module)
    assert "import pathlib" in module


def test_show_residual_is_an_off_by_default_checkbox_in_the_advanced_section_that_reaches_the_logic():
    """'Also output what was removed': a bool parameter, False by default, bound to a checkbox of the Advanced
    section that stays enabled without the override (it is no preset option), passed by the widget to
    startProcess, which passes it to the adapter as residual=."""
    fields = parameter_node_declarations()
    assert fields["showResidual"] == ("bool", {}, False)
    root = ET.parse(UI_FILE).getroot()
    advanced = next(w for w in root.iter("widget") if w.get("name") == "advancedCollapsibleButton")
    bound = [w for w in advanced.iter("widget") if ui_property(w, "SlicerParameterName") == "showResidual"]
    assert len(bound) == 1 and bound[0].get("class") == "QCheckBox"
    assert bound[0].get("name") == "showResidualCheckBox"
    assert ui_property(bound[0], "text") == "Also output what was removed (input \u2212 output)"
    tooltip = ui_property(bound[0], "toolTip")
    assert "only noise was removed" in tooltip and "no edges or anatomy" in tooltip
    assert ui_property(bound[0], "checked") in (None, "false")
    module = read(MODULE_FILE)
    assert "showResidual" not in re.search(r"ADVANCED_OPTIONS = \(([^)]*)\)", module).group(1)
    assert "showResidual=p.showResidual" in module  # the widget passes it
    assert "residual=showResidual" in module  # the Logic passes it on
    tree = ast.parse(module)
    logic = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "NSN2NDenoiseLogic")
    for method in ("startProcess", "process"):
        function = next(f for f in logic.body if isinstance(f, ast.FunctionDef) and f.name == method)
        keywords = function.args.args + function.args.kwonlyargs
        defaults = dict(zip([a.arg for a in function.args.kwonlyargs], function.args.kw_defaults, strict=True))
        defaults.update(zip([a.arg for a in function.args.args[::-1]], function.args.defaults[::-1], strict=False))
        assert "showResidual" in {a.arg for a in keywords}, method
        assert ast.literal_eval(defaults["showResidual"]) is False, method


def test_a_finished_run_with_warnings_says_so_in_the_status_and_logs_them_all():
    """The DONE branch of onPollTimer takes the warnings from the adapter (mrml.report_warnings), shows the first
    in the status label and logs the full text (the output node also holds them, in NSN2N.warnings)."""
    source = read(MODULE_FILE)
    tree = ast.parse(source)
    widget = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "NSN2NDenoiseWidget")
    poll = ast.get_source_segment(source, next(f for f in widget.body if getattr(f, "name", "") == "onPollTimer"))
    done = poll[poll.index("if state == DONE:") : poll.index("elif state == CANCELLED:")]
    assert "from NSN2NDenoiseLib.mrml import report_warnings" in poll
    assert "report_warnings(job.report)" in done
    assert '_("Warning: {warning}").format(warning=warnings[0])' in done
    assert "logging.warning(" in done and '"\\n".join(warnings)' in done
    assert "self.ui.statusLabel.text = done" in done


def test_ui_selectors_and_required_controls():
    widgets = ui_widgets()
    root = ET.parse(UI_FILE).getroot().find("widget")
    assert root.get("class") == "qMRMLWidget"
    inp, out = widgets["inputSelector"], widgets["outputSelector"]
    for selector in (inp, out):
        assert selector.get("class") == "qMRMLNodeComboBox"
        assert ui_property(selector, "nodeTypes") == ["vtkMRMLScalarVolumeNode"]
        assert ui_property(selector, "showChildNodeTypes") == "false"  # excludes label maps (a scalar subclass)
    assert ui_property(inp, "addEnabled") == "false"
    assert ui_property(out, "addEnabled") == "true" and ui_property(out, "noneEnabled") == "true"
    assert widgets["advancedCollapsibleButton"].get("class") == "ctkCollapsibleButton"
    assert ui_property(widgets["advancedCollapsibleButton"], "collapsed") == "true"
    for name, cls in [
        ("presetComboBox", "QComboBox"),
        ("iterationsSpinBox", "QSpinBox"),
        ("deviceComboBox", "QComboBox"),
        ("applyButton", "QPushButton"),
        ("progressBar", "QProgressBar"),
        ("statusLabel", "QLabel"),
        ("deviceInfoLabel", "QLabel"),
    ]:
        assert widgets[name].get("class") == cls, name
    receivers = {
        c.findtext("receiver")
        for c in ET.parse(UI_FILE).iter("connection")
        if c.findtext("slot") == "setMRMLScene(vtkMRMLScene*)"
    }
    assert {"inputSelector", "outputSelector"} <= receivers


# -- CMake lists against the files on disk ---------------------------------------------------------------------


def test_module_cmake_lists_every_python_file_on_disk():
    listed = cmake_list(read(os.path.join(MODULE, "CMakeLists.txt")), "MODULE_PYTHON_SCRIPTS")
    on_disk = {"NSN2NDenoise.py"}
    lib = os.path.join(MODULE, "NSN2NDenoiseLib")
    on_disk |= {f"NSN2NDenoiseLib/{name}" for name in os.listdir(lib) if name.endswith(".py")}
    assert sorted(on_disk - listed) == [], "on disk but not in MODULE_PYTHON_SCRIPTS"
    assert sorted(listed - on_disk) == [], "in MODULE_PYTHON_SCRIPTS but not on disk"


def test_only_the_module_file_is_a_py_file_in_the_module_folder():
    # Slicer loads every .py directly in a module folder as a module.
    assert sorted(n for n in os.listdir(MODULE) if n.endswith(".py")) == ["NSN2NDenoise.py"]


def test_module_cmake_resources_match_disk():
    listed = cmake_list(read(os.path.join(MODULE, "CMakeLists.txt")), "MODULE_PYTHON_RESOURCES")
    on_disk = set()
    for folder in ("Resources", "Scripts"):
        for dirpath, dirnames, filenames in os.walk(os.path.join(MODULE, folder)):
            dirnames[:] = [d for d in dirnames if d != "__pycache__"]
            for name in filenames:
                on_disk.add(os.path.relpath(os.path.join(dirpath, name), MODULE).replace(os.sep, "/"))
    assert listed == on_disk
    assert "Scripts/nsn2n_batch.py" in listed


def test_module_cmake_builds_generic_tests_and_registers_the_self_test():
    text = read(os.path.join(MODULE, "CMakeLists.txt"))
    assert re.search(r"slicerMacroBuildScriptedModule\([^)]*WITH_GENERIC_TESTS", text, re.S)
    assert "slicer_add_python_unittest(SCRIPT ${MODULE_NAME}.py)" in text
    assert "add_subdirectory(Testing)" in text
    assert "add_subdirectory(Python)" in read(os.path.join(MODULE, "Testing", "CMakeLists.txt"))
    assert os.path.isfile(os.path.join(MODULE, "Testing", "Python", "CMakeLists.txt"))
    assert "class NSN2NDenoiseTest(ScriptedLoadableModuleTest)" in read(MODULE_FILE)


# -- extension metadata ----------------------------------------------------------------------------------------


def test_extension_cmake_and_s4ext_agree():
    text = read(os.path.join(ROOT, "CMakeLists.txt"))
    assert re.search(r"^project\(NSN2N\)", text, re.M)
    assert "add_subdirectory(NSN2NDenoise)" in text
    s4 = s4ext_fields()
    assert cmake_set(text, "EXTENSION_CATEGORY") == s4["category"] == "Filtering"
    assert cmake_set(text, "EXTENSION_HOMEPAGE") == s4["homepage"]
    assert cmake_set(text, "EXTENSION_CONTRIBUTORS") == s4["contributors"]
    assert cmake_set(text, "EXTENSION_DESCRIPTION") == s4["description"]
    assert cmake_set(text, "EXTENSION_ICONURL") == s4["iconurl"]
    assert cmake_set(text, "EXTENSION_SCREENSHOTURLS") == s4["screenshoturls"]
    assert cmake_set(text, "EXTENSION_DEPENDS") == s4["depends"] == "PyTorch"
    assert s4["scmurl"].startswith(s4["homepage"]) and s4["scm"] == "git" and s4["scmrevision"] == "main"


def test_icon_and_screenshot_urls_point_at_files_in_the_repository():
    text = read(os.path.join(ROOT, "CMakeLists.txt"))
    prefix = "https://raw.githubusercontent.com/nsn2n/SlicerNSN2N/main/"
    icon_url = cmake_set(text, "EXTENSION_ICONURL")
    assert icon_url.startswith(prefix)
    assert png_size(os.path.join(ROOT, icon_url[len(prefix) :])) == (128, 128)
    for url in cmake_set(text, "EXTENSION_SCREENSHOTURLS").split():
        assert url.startswith(prefix)
        width, height = png_size(os.path.join(ROOT, url[len(prefix) :]))
        assert width >= 400 and height >= 200
    assert png_size(os.path.join(MODULE, "Resources", "Icons", "NSN2NDenoise.png")) == (128, 128)


def test_license_is_apache_2():
    assert "Apache License" in read(os.path.join(ROOT, "LICENSE"))
    assert "Version 2.0" in read(os.path.join(ROOT, "LICENSE"))


# -- import rules ----------------------------------------------------------------------------------------------

ALLOWED_MODULE_IMPORTS = {
    *("logging", "os", "pathlib", "shutil", "sys", "time", "typing"),
    *("numpy", "qt", "ctk", "vtk", "slicer"),
}


def top_level_imports(path):
    names = set()
    for node in ast.parse(read(path)).body:
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_module_file_imports_nothing_heavy_at_file_scope():
    imports = top_level_imports(MODULE_FILE)
    assert imports <= ALLOWED_MODULE_IMPORTS, (
        f"file-scope imports beyond Slicer's own: {imports - ALLOWED_MODULE_IMPORTS}"
    )
    assert "torch" not in imports and "NSN2NDenoiseLib" not in imports


def test_module_file_keeps_the_template_order():
    names = [n.name for n in ast.parse(read(MODULE_FILE)).body if isinstance(n, ast.ClassDef)]
    order = ["NSN2NDenoise", "NSN2NDenoiseParameterNode", "NSN2NDenoiseWidget", "NSN2NDenoiseLogic", "NSN2NDenoiseTest"]
    assert names == order


@pytest.mark.parametrize("name", ["mrml.py", "jobs.py"])
def test_adapter_modules_import_no_qt(name):
    path = os.path.join(MODULE, "NSN2NDenoiseLib", name)
    all_imports, app_uses = set(), []
    for node in ast.walk(ast.parse(read(path))):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "slicer":
            if node.attr in ("app", "mrmlScene"):
                app_uses.append(node.attr)  # the scene is a parameter; slicer-core has neither
        if isinstance(node, ast.Import):
            all_imports |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            all_imports.add(node.module.split(".")[0])
    assert not all_imports & {"qt", "ctk", "PythonQt", "PyQt5", "PySide2", "PySide6"}
    assert app_uses == []
