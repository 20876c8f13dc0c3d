"""Static checks of the Slicer modules (no Slicer application here): UI names/classes, slots, parameter nodes,
CMake listings, import rules. They parse the files; nothing is imported from the module files themselves."""
import ast
import py_compile
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
MODULES = {"FemurUNet": REPO / "FemurUNet", "FemurUNetTrain": REPO / "FemurUNetTrain"}
SLICER_LIB = REPO / "FemurUNet" / "FemurUNetSlicerLib"
LISTED_SUFFIXES = (".py", ".ui", ".png", ".pt", ".npz", ".txt")

# what a `self.ui.<name>.<member>` use needs from the widget class
ANY_WIDGET = {"enabled", "visible", "toolTip", "hide", "show", "blockSignals", "setEnabled", "setVisible"}
MEMBER_CLASSES = {
    "text": {"QLabel", "QPushButton", "QToolButton", "QCheckBox", "ctkCollapsibleButton", "QLineEdit"},
    "clicked": {"QPushButton", "QToolButton", "QCheckBox", "ctkCollapsibleButton"},
    "currentPath": {"ctkPathLineEdit"}, "currentPathChanged": {"ctkPathLineEdit"},
    "comboBox": {"ctkPathLineEdit"}, "addCurrentPathToHistory": {"ctkPathLineEdit"},
    "value": {"QProgressBar", "QSpinBox", "QDoubleSpinBox", "ctkSliderWidget"},
    "maximum": {"QProgressBar", "QSpinBox", "QDoubleSpinBox", "ctkSliderWidget"},
    "currentNode": {"qMRMLNodeComboBox", "qMRMLSegmentSelectorWidget"},
    "setCurrentNode": {"qMRMLNodeComboBox", "qMRMLSegmentSelectorWidget"},
    "currentNodeChanged": {"qMRMLNodeComboBox", "qMRMLSegmentSelectorWidget"},
    "selectedSegmentIDs": {"qMRMLSegmentSelectorWidget"}, "setSelectedSegmentIDs": {"qMRMLSegmentSelectorWidget"},
    "setColumnCount": {"QTableWidget"}, "setHorizontalHeaderLabels": {"QTableWidget"},
    "horizontalHeader": {"QTableWidget"}, "setRowCount": {"QTableWidget"}, "setItem": {"QTableWidget"},
    "selectionModel": {"QTableWidget"},
    "clear": {"QPlainTextEdit", "QTableWidget", "QComboBox", "QLineEdit"}, "appendPlainText": {"QPlainTextEdit"},
}
# parameterNodeWrapper GUI connectors: widget class -> parameter type (exact class match, like Slicer's)
CONNECTOR_TYPES = {"QSpinBox": "int", "QSlider": "int", "QDoubleSpinBox": "float", "ctkSliderWidget": "float",
                   "QCheckBox": "bool", "QComboBox": "str", "qMRMLNodeComboBox": "node"}


def module_file(name):
    return MODULES[name] / f"{name}.py"


def parse(path):
    return ast.parse(Path(path).read_text(), filename=str(path))


def ui_widgets(path):
    """{objectName: (class, {property: text or [strings]})} of a Qt Designer file."""
    widgets = {}
    for w in ET.parse(path).getroot().iter("widget"):
        props = {}
        for p in w.findall("property"):
            child = list(p)[0]
            props[p.get("name")] = [s.text for s in child.findall("string")] if child.tag == "stringlist" else child.text
        widgets[w.get("name")] = (w.get("class"), props)
    return widgets


def ui_member_uses(tree):
    """[(widget name, member, line)] for every `self.ui.<name>.<member>` and `self.ui.<name>.connect("sig(...)")`."""
    uses = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Attribute) \
                and isinstance(node.value.value, ast.Attribute) and node.value.value.attr == "ui" \
                and isinstance(node.value.value.value, ast.Name) and node.value.value.value.id == "self":
            uses.append((node.value.attr, node.attr, node.lineno))
    for call in calls_named(tree, "connect"):
        target = call.func.value
        if isinstance(target, ast.Attribute) and isinstance(target.value, ast.Attribute) and target.value.attr == "ui" \
                and call.args and isinstance(call.args[0], ast.Constant):
            uses.append((target.attr, call.args[0].value.split("(")[0], call.lineno))
    return uses


def ui_names_used(tree):
    names = {(n.attr, n.lineno) for n in ast.walk(tree) if isinstance(n, ast.Attribute)
             and isinstance(n.value, ast.Attribute) and n.value.attr == "ui"
             and isinstance(n.value.value, ast.Name) and n.value.value.id == "self"}
    return names


def calls_named(tree, name):
    return [n for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)
            and n.func.attr == name]


def classes(tree):
    return {n.name: n for n in tree.body if isinstance(n, ast.ClassDef)}


def methods(cls):
    return {n.name for n in cls.body if isinstance(n, ast.FunctionDef)}


def class_constant(cls, name):
    for node in cls.body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == name for t in node.targets):
            return ast.literal_eval(node.value)
    raise KeyError(name)


def parameter_fields(name, monkeypatch):
    """{field: (type text, default)} of a module's parameter node class, loaded the way (stand-in) Slicer loads the
    module file; type text is e.g. 'int', 'Annotated[float, WithinRange]', 'vtkMRMLScalarVolumeNode'."""
    import typing

    import fake_slicer
    import slicer
    app = fake_slicer.install(monkeypatch)
    modules = {n: app.load_module(n) for n in MODULES}        # FemurUNet first: FemurUNetTrain depends on it
    cls = getattr(modules[name], f"{name}ParameterNode")
    wrapper = cls(slicer.vtkMRMLScriptedModuleNode())
    fields = {}
    for field, hint in typing.get_type_hints(cls, include_extras=True).items():
        base, *extras = typing.get_args(hint) if typing.get_origin(hint) is typing.Annotated else (hint,)
        text = base.__name__ + "".join(", " + type(e).__name__ for e in extras)
        fields[field] = (f"Annotated[{text}]" if extras else text, getattr(wrapper, field))
    app.mrmlScene.RemoveAllObservers()
    return fields


def cmake_listed(module_dir):
    text = (module_dir / "CMakeLists.txt").read_text()
    name = re.search(r"set\(MODULE_NAME\s+(\w+)\)", text).group(1)
    files = set()
    for block in re.findall(r"set\(MODULE_PYTHON_(?:SCRIPTS|RESOURCES)\s+(.*?)\)", text, re.S):
        files |= {token.replace("${MODULE_NAME}", name) for token in block.split()}
    return name, files, text


# --- compile / structure -----------------------------------------------------------------------------------
def all_module_python_files():
    return sorted(p for d in MODULES.values() for p in d.rglob("*.py") if "__pycache__" not in p.parts)


@pytest.mark.parametrize("path", all_module_python_files(), ids=lambda p: str(p.relative_to(REPO)))
def test_every_module_file_compiles(path, tmp_path):
    py_compile.compile(str(path), cfile=str(tmp_path / "x.pyc"), doraise=True)


# Slicer 5.6 and 5.8 run Python 3.9: every file Slicer runs (modules, effect, Lib, scripts, the training process)
PYTHON_3_10_CALLS = {("zip", "strict"), ("dataclass", "slots"), ("dataclass", "kw_only"), ("dataclasses.dataclass", "slots"),
                     ("dataclasses.dataclass", "kw_only")}


@pytest.mark.parametrize("path", all_module_python_files(), ids=lambda p: str(p.relative_to(REPO)))
def test_every_module_file_runs_on_python_3_9(path):
    source = path.read_text()
    tree = ast.parse(source, filename=str(path), feature_version=(3, 9))   # no match, no parenthesized with, ...
    postponed = any(isinstance(n, ast.ImportFrom) and n.module == "__future__" and
                    any(a.name == "annotations" for a in n.names) for n in tree.body)
    evaluated = []   # expressions Python 3.9 evaluates: annotations (unless postponed), isinstance's second argument
    for node in ast.walk(tree):
        if not postponed and isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            evaluated += [a.annotation for a in node.args.posonlyargs + node.args.args + node.args.kwonlyargs
                          + [node.args.vararg, node.args.kwarg] if a is not None and a.annotation is not None]
            evaluated += [node.returns] if node.returns is not None else []
        elif not postponed and isinstance(node, ast.AnnAssign):
            evaluated.append(node.annotation)
        elif isinstance(node, ast.Call):
            name = ast.unparse(node.func)
            if name in ("isinstance", "issubclass") and len(node.args) == 2:
                evaluated.append(node.args[1])
            for keyword in node.keywords:
                assert (name, keyword.arg) not in PYTHON_3_10_CALLS, \
                    f"{path.name}:{node.lineno}: {name}({keyword.arg}=...) needs Python 3.10"
    for expression in evaluated:
        for inner in ast.walk(expression):
            assert not (isinstance(inner, ast.BinOp) and isinstance(inner.op, ast.BitOr)), \
                f"{path.name}:{inner.lineno}: 'X | Y' types need Python 3.10 (use Optional/Union)"


@pytest.mark.parametrize("name", MODULES)
def test_module_has_slicer_classes_and_category(name):
    tree = parse(module_file(name))
    found = classes(tree)
    for suffix in ("", "Widget", "Logic", "Test"):
        assert f"{name}{suffix}" in found, f"{name}.py lacks class {name}{suffix}"
    init = next(f for f in found[name].body if isinstance(f, ast.FunctionDef) and f.name == "__init__")
    source = ast.unparse(init)
    assert "self.parent.categories = ['Segmentation']" in source
    assert "runTest" in methods(found[f"{name}Test"])
    assert "getParameterNode" in methods(found[f"{name}Logic"])


def top_level_imports(path):
    """Module names a file imports at its top level (``from package import submodule``: the submodule)."""
    names = set()
    for node in parse(path).body:
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            names |= {f"{module}.{alias.name}" if module in PROJECT_PACKAGES else module for alias in node.names}
    return names


PROJECT_PACKAGES = {"FemurUNetLib", "FemurUNetTrainLib", "FemurUNetSlicerLib"}
# what a module file, the effect or FemurUNetSlicerLib may import when Slicer loads it (before PyTorch may be
# installed): the standard library, Slicer, the Slicer-side helpers and the Lib packages' torch-free modules
STARTUP_IMPORTS = {"importlib", "importlib.util", "inspect", "logging", "os", "re", "shutil", "sys", "tempfile",
                   "typing", "qt", "vtk", "ctk", "slicer", "slicer.ScriptedLoadableModule",
                   "slicer.parameterNodeWrapper", "slicer.util", "SegmentEditorEffects",
                   "FemurUNetLib.errors", "FemurUNetLib.paths", "FemurUNetTrainLib.options"}


@pytest.mark.parametrize("path", [module_file(name) for name in MODULES] + sorted(SLICER_LIB.glob("*.py")) +
                         [MODULES["FemurUNet"] / "SegmentEditorFemurUNetLib" / "SegmentEditorEffect.py"],
                         ids=lambda p: str(p.relative_to(REPO)))
def test_module_files_load_without_torch_or_the_lib(path):
    """Slicer imports the module files at startup, before PyTorch may be installed: the Lib is imported lazily."""
    imported = {name for name in top_level_imports(path) if not name.startswith("FemurUNetSlicerLib.")}
    assert imported <= STARTUP_IMPORTS, imported - STARTUP_IMPORTS


# --- UI ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", MODULES)
def test_every_ui_name_exists_with_a_class_that_has_the_member(name):
    widgets = ui_widgets(MODULES[name] / "Resources" / "UI" / f"{name}.ui")
    tree = parse(module_file(name))
    for widget, line in ui_names_used(tree):
        assert widget in widgets, f"{name}.py:{line}: self.ui.{widget} is not in {name}.ui"
    for widget, member, line in ui_member_uses(tree):
        if member in ANY_WIDGET or member == "connect":
            continue
        assert member in MEMBER_CLASSES, f"{name}.py:{line}: add '{member}' to MEMBER_CLASSES"
        cls = widgets[widget][0]
        assert cls in MEMBER_CLASSES[member], f"{name}.py:{line}: {widget} is a {cls}, which has no '{member}'"


def test_train_path_edits_named_in_a_table_exist_as_path_line_edits(monkeypatch):
    tree = parse(module_file("FemurUNetTrain"))
    edits = class_constant(classes(tree)["FemurUNetTrainWidget"], "PATH_EDITS")
    widgets = ui_widgets(MODULES["FemurUNetTrain"] / "Resources" / "UI" / "FemurUNetTrain.ui")
    fields = parameter_fields("FemurUNetTrain", monkeypatch)
    for edit, parameter in edits.items():
        assert widgets[edit][0] == "ctkPathLineEdit" and parameter in fields and fields[parameter][0] == "str"


@pytest.mark.parametrize("name", MODULES)
def test_every_connected_slot_exists(name):
    tree = parse(module_file(name))
    module_functions = {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}
    checked = 0
    for cls in classes(tree).values():
        own = methods(cls)
        for call in [c for c in ast.walk(cls) if isinstance(c, ast.Call) and isinstance(c.func, ast.Attribute)
                     and c.func.attr in ("connect", "addObserver", "removeObserver")]:
            slot = call.args[-1] if call.args else None
            if isinstance(slot, ast.Attribute) and isinstance(slot.value, ast.Name) and slot.value.id == "self":
                assert slot.attr in own, f"{name}.py:{call.lineno}: slot self.{slot.attr} is not a method of {cls.name}"
                checked += 1
            elif isinstance(slot, ast.Name):
                assert slot.id in module_functions, f"{name}.py:{call.lineno}: slot {slot.id} is not defined"
                checked += 1
            elif isinstance(slot, ast.Lambda):
                for inner in ast.walk(slot.body):
                    if isinstance(inner, ast.Attribute) and isinstance(inner.value, ast.Name) \
                            and inner.value.id == "self" and isinstance(inner.ctx, ast.Load):
                        assert inner.attr in own, f"{name}.py:{call.lineno}: lambda calls missing self.{inner.attr}"
                        checked += 1
    assert checked >= 6


@pytest.mark.parametrize("name", MODULES)
def test_parameter_node_widgets_match_field_types(name, monkeypatch):
    fields = parameter_fields(name, monkeypatch)
    widgets = ui_widgets(MODULES[name] / "Resources" / "UI" / f"{name}.ui")
    bound = {}
    for widget, (cls, props) in widgets.items():
        parameter = props.get("SlicerParameterName")
        if parameter is None:
            continue
        assert parameter in fields, f"{widget}: SlicerParameterName {parameter} is not a parameter node field"
        assert parameter not in bound, f"{parameter} bound twice"
        bound[parameter] = widget
        annotation = fields[parameter][0]
        kind = CONNECTOR_TYPES.get(cls)
        assert kind, f"{widget}: no parameterNodeWrapper connector for {cls}"
        if kind == "node":
            assert annotation in props["nodeTypes"], f"{widget}: nodeTypes {props['nodeTypes']} vs {annotation}"
        elif kind == "str":
            assert annotation == "Annotated[str, Choice]", f"{widget}: a QComboBox needs Choice"
        else:
            base = annotation[len("Annotated["):].split(",")[0] if annotation.startswith("Annotated[") else annotation
            assert base == kind, f"{widget} ({cls}) is bound to {parameter}: {annotation}"
        if cls in ("ctkSliderWidget", "QSlider"):
            assert "WithinRange" in annotation, f"{widget}: sliders need a bounded (WithinRange) parameter"
    # the rest are handled by hand in the module (paths): make sure they are
    source = module_file(name).read_text()
    for field in set(fields) - set(bound):
        assert re.search(rf"\.{field}\b|[\"']{field}[\"']", source), f"{field} is neither bound nor used"


def test_femurunet_parameter_defaults_and_console_api(monkeypatch):
    tree = parse(module_file("FemurUNet"))
    fields = parameter_fields("FemurUNet", monkeypatch)
    assert fields["device"][1] == "auto" and fields["batchSize"][1] == 0 and fields["threshold"][1] == 0.5
    assert fields["useModelThreshold"] == ("bool", True)        # the model's own threshold unless overridden
    assert fields["modelPath"] == ("str", "")
    segment = next(f for f in classes(tree)["FemurUNetLogic"].body if isinstance(f, ast.FunctionDef) and f.name == "segment")
    args = segment.args
    assert [a.arg for a in args.args[:2]] == ["self", "volumeNode"]
    assert len(args.defaults) == len(args.args) - 2, "segment(volumeNode) must work with one argument"


def test_train_module_defaults_are_the_training_defaults(monkeypatch):
    from FemurUNetTrainLib.options import EMPTY_FRACTION, TrainConfig, config_from_gui
    fields = parameter_fields("FemurUNetTrain", monkeypatch)
    d = TrainConfig()
    assert (fields["epochs"][1], fields["stepsPerEpoch"][1], fields["batchSize"][1], fields["learningRate"][1],
            fields["baseFilters"][1], fields["seed"][1]) == (d.epochs, d.steps_per_epoch, d.batch_size, d.lr,
                                                             d.base_filters, d.seed)
    assert fields["emptyFraction"][1] == EMPTY_FRACTION and fields["epochs"][0] == "Annotated[int, WithinRange]"
    values = {name: default for name, (_, default) in fields.items()}
    assert config_from_gui(values, out="m.pt") == TrainConfig(out="m.pt")     # the untouched GUI is the seed recipe


def test_ui_files_are_designer_files_with_scene_connections():
    for name, folder in MODULES.items():
        root = ET.parse(folder / "Resources" / "UI" / f"{name}.ui").getroot()
        assert root.tag == "ui" and root.find("class").text == name
        top = root.find("widget")
        assert top.get("class") == "qMRMLWidget" and top.get("name") == name
        widgets = ui_widgets(folder / "Resources" / "UI" / f"{name}.ui")
        mrml_widgets = {w for w, (cls, _) in widgets.items() if cls.startswith("qMRML") and w != name}
        receivers = {c.find("receiver").text for c in root.iter("connection")
                     if c.find("signal").text == "mrmlSceneChanged(vtkMRMLScene*)"}
        assert mrml_widgets == receivers, "every MRML widget needs the scene"
        custom = {c.find("class").text for c in root.iter("customwidget")}
        assert {cls for cls, _ in widgets.values() if cls.startswith(("ctk", "qMRML"))} <= custom


# --- CMake ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", MODULES)
def test_cmake_lists_every_module_file_and_only_existing_ones(name):
    folder = MODULES[name]
    module_name, listed, text = cmake_listed(folder)
    assert module_name == name
    present = {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file() and p.suffix in LISTED_SUFFIXES
               and "__pycache__" not in p.parts and p.name != "CMakeLists.txt"}
    assert present - listed == set(), f"{name}/CMakeLists.txt does not list {sorted(present - listed)}"
    assert listed - present == set(), f"{name}/CMakeLists.txt lists missing {sorted(listed - present)}"
    assert "slicerMacroBuildScriptedModule(" in text and "WITH_GENERIC_TESTS" in text
    assert re.search(r"slicer_add_python_unittest\(SCRIPT \$\{MODULE_NAME\}\.py\)", text)


def test_top_level_cmake_is_a_slicer_extension():
    text = (REPO / "CMakeLists.txt").read_text()
    values = dict(re.findall(r'set\((EXTENSION_\w+) "([^"]*)"\)', text))
    assert values["EXTENSION_CATEGORY"] == "Segmentation"
    assert values["EXTENSION_DEPENDS"] == "PyTorch"
    assert values["EXTENSION_HOMEPAGE"].startswith("https://")
    assert values["EXTENSION_ICONURL"].endswith("FemurUNet/Resources/Icons/FemurUNet.png")
    assert all(u.startswith("https://") for u in values["EXTENSION_SCREENSHOTURLS"].split())
    assert values["EXTENSION_CONTRIBUTORS"] and len(values["EXTENSION_DESCRIPTION"]) > 40
    # the Extensions Manager shows the description: the supported Slicer versions and the PyTorch the module checks
    description = values["EXTENSION_DESCRIPTION"]
    assert "Slicer 5.6 and later" in description and "Python 3.9" in description and "Python 3.12" in description
    min_torch = next(ast.literal_eval(n.value) for n in parse(SLICER_LIB / "install.py").body
                     if isinstance(n, ast.Assign) and ast.unparse(n.targets[0]) == "MIN_TORCH_VERSION")
    assert f"PyTorch {'.'.join(map(str, min_torch))} or later" in description
    assert "find_package(Slicer REQUIRED)" in text and "include(${Slicer_USE_FILE})" in text
    assert "include(${Slicer_EXTENSION_GENERATE_CONFIG})" in text and "include(${Slicer_EXTENSION_CPACK})" in text
    assert re.findall(r"add_subdirectory\((\w+)\)", text) == list(MODULES)
    assert text.index("project(FemurUNet)") < text.index("find_package(Slicer")


def test_icons_are_png_of_the_right_size():
    from PIL import Image
    for name, folder in MODULES.items():
        with Image.open(folder / "Resources" / "Icons" / f"{name}.png") as icon:
            assert icon.format == "PNG" and icon.size == (128, 128)
            assert np.asarray(icon.convert("L")).std() > 20        # a picture, not a blank square
    with Image.open(MODULES["FemurUNet"] / "SegmentEditorFemurUNetLib" / "SegmentEditorEffect.png") as icon:
        assert icon.format == "PNG" and icon.size[0] <= 32


# --- Segment Editor effect, requirements, Lib rules ----------------------------------------------------------------
def test_effect_is_registered_from_its_own_package_and_is_undoable():
    module_source = module_file("FemurUNet").read_text()
    assert '"SegmentEditorFemurUNetLib", "SegmentEditorEffect.py"' in module_source
    assert 'slicer.app.connect("startupCompleted()", registerSegmentEditorEffect)' in module_source
    effect = MODULES["FemurUNet"] / "SegmentEditorFemurUNetLib" / "SegmentEditorEffect.py"
    tree = parse(effect)
    cls = classes(tree)["SegmentEditorEffect"]     # Slicer looks the class up by the file name
    assert [ast.unparse(b) for b in cls.bases] == ["AbstractScriptedSegmentEditorEffect"]
    assert {"clone", "icon", "helpText", "setupOptionsFrame", "onApply"} <= methods(cls)
    assert "scriptedEffect.name = 'Femur U-Net'" in ast.unparse(cls)
    # undo order (state saved after segmenting, before changing the segment): test_slicer_module_wiring, by running it


def test_requirements_never_touch_slicers_numpy_or_simpleitk():
    tree = parse(SLICER_LIB / "install.py")
    constants = {t.id: ast.literal_eval(n.value) for n in tree.body if isinstance(n, ast.Assign)
                 for t in n.targets if isinstance(t, ast.Name) and t.id.isupper()}
    requirements = " ".join(constants["PIP_REQUIREMENTS"].values()).lower()
    assert "numpy" not in requirements and "simpleitk" not in requirements and "torch" not in requirements
    assert {"numpy", "SimpleITK"} <= set(constants["PROTECTED_DISTRIBUTIONS"])
    for call in calls_named(tree, "pip_install"):
        source = ast.unparse(call)
        assert "constraints" in source, f"line {call.lineno}: pip_install without the constraints file"
    assert "PyTorchUtils" in (SLICER_LIB / "install.py").read_text()


def test_the_extension_ships_the_engines_demo_model():
    from FemurUNetLib.paths import DEFAULT_MODEL_PATH
    _, listed, _ = cmake_listed(MODULES["FemurUNet"])
    assert str(DEFAULT_MODEL_PATH.relative_to(MODULES["FemurUNet"])) in listed


def test_only_mrml_imports_slicer_among_lib_modules():
    for lib in (REPO / "FemurUNet" / "FemurUNetLib", REPO / "FemurUNetTrain" / "FemurUNetTrainLib"):
        for path in lib.glob("*.py"):
            imported = set()
            for node in ast.walk(parse(path)):
                if isinstance(node, ast.Import):
                    imported |= {a.name.split(".")[0] for a in node.names}
                elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                    imported.add(node.module.split(".")[0])
            gui = imported & {"slicer", "qt", "ctk", "vtk"}
            if path.name == "mrml.py":
                assert gui == {"slicer", "vtk"}
            else:
                assert not gui, f"{path.relative_to(REPO)} imports {gui}"


def test_every_module_setting_reaches_the_engine_options(monkeypatch):
    """segmentOptions (shared by the module and the effect) reads every setting but the input and output nodes."""
    fields = parameter_fields("FemurUNet", monkeypatch)
    tree = parse(SLICER_LIB / "options.py")
    used = {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute) and isinstance(n.value, ast.Name)
            and n.value.id == "p"}
    assert used == set(fields) - {"inputVolume", "outputSegmentation"}
