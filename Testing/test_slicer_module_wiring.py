"""The Slicer modules' own code (widgets, logic, self-tests) run against a stand-in application (fake_slicer.py:
Qt/CTK widgets from the modules' .ui files, Slicer's wrapper and dialogs) over real MRML (slicer-core)."""
import importlib.machinery
import shlex
import subprocess
import sys
import tempfile
import textwrap
import time
import types
from pathlib import Path

import numpy as np
import pytest
import slicer.util

import fake_slicer

TESTING = Path(__file__).resolve().parent


@pytest.fixture
def app(monkeypatch):
    app = fake_slicer.install(monkeypatch)
    yield app
    app.mrmlScene.RemoveAllObservers()   # the widgets' scene observers end with the test


@pytest.fixture
def femurunet(app):
    return app.load_module("FemurUNet")


@pytest.fixture
def femurunet_train(app, femurunet):
    return app.load_module("FemurUNetTrain")


@pytest.fixture
def installer(app):
    """FemurUNetSlicerLib.install: PyTorch and pip requirements, shared by both modules and the effect."""
    import FemurUNetSlicerLib.install
    return FemurUNetSlicerLib.install


def phantom_volume(scene, seed=3, shape=(24, 64, 64)):
    """A small CT (soft tissue, two bone rods) and its label (1 left, 2 right) as a volume node in ``scene``."""
    from FemurUNetLib import mrml
    from FemurUNetLib.geometry import Geometry
    k, j, i = np.meshgrid(*(np.arange(n) for n in shape), indexing="ij")
    rng = np.random.default_rng(seed)
    ct = np.where(((i - shape[2] / 2) / (0.45 * shape[2])) ** 2 + ((j - shape[1] / 2) / (0.35 * shape[1])) ** 2 < 1,
                  40.0, -1000.0)
    label = np.zeros(shape, np.uint8)
    for value, centre in ((1, 0.7 * shape[2]), (2, 0.3 * shape[2])):   # LPS: +i is the patient's left
        label[(i - centre) ** 2 + (j - shape[1] / 2) ** 2 < (0.08 * shape[2]) ** 2] = value
    ct = (np.where(label > 0, 1200.0, ct) + rng.normal(0, 10, shape)).astype(np.int16)
    case = types.SimpleNamespace(ct=ct, label=label, geometry=Geometry(spacing=(1.5, 1.5, 3.0)))
    return case, mrml.array_to_volume_node(scene, case.ct, case.geometry, f"CT {seed}")


# --- Python requirements ------------------------------------------------------------------------------------------
@pytest.fixture
def windows_like_temp(monkeypatch, tmp_path):
    """A temp folder whose path has backslashes and a space, like C:\\Users\\Jane Doe\\AppData\\Local\\Temp."""
    folder = tmp_path / "C:\\Users\\Jane Doe\\AppData\\Local\\Temp"
    folder.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    return folder


def test_pip_install_before_slicer_5_12_gets_the_constraints_file_path_intact(app, installer, monkeypatch,
                                                                               windows_like_temp):
    calls = []

    def pip_install(requirements):
        """Slicer 5.6-5.10: a list goes to pip as it is, a string is split with POSIX shlex rules."""
        args = requirements if isinstance(requirements, list) else shlex.split(requirements)
        constraints = args[args.index("-c") + 1]
        calls.append((args, Path(constraints).read_text() if Path(constraints).is_file() else None))

    monkeypatch.setattr(slicer.util, "pip_install", pip_install)
    monkeypatch.setitem(sys.modules, "h5py", None)      # not installed
    app.confirm_answer = True
    installer.ensurePythonRequirements(("h5py",))
    [(args, constraints_text)] = calls
    path = Path(args[2])
    assert args[:2] == ["h5py>=3.8", "-c"] and len(args) == 3
    assert path.parent == windows_like_temp                     # backslashes and space kept
    assert constraints_text is not None and "numpy==" in constraints_text
    assert not path.exists()                                    # removed afterwards
    assert len(app.confirmations) == 1 and "h5py>=3.8" in app.confirmations[0]


def test_pip_install_from_slicer_5_12_gets_the_constraints_keyword(app, installer, monkeypatch, windows_like_temp):
    calls = []

    def pip_install(requirements, **kwargs):
        calls.append((requirements, kwargs, Path(kwargs["constraints"]).read_text()))

    monkeypatch.setattr(slicer.util, "pip_install", pip_install)
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    app.confirm_answer = True
    installer.ensurePythonRequirements(("matplotlib",))
    [(requirements, kwargs, constraints_text)] = calls
    assert requirements == ["matplotlib>=3.6"] and Path(kwargs["constraints"]).parent == windows_like_temp
    assert "SimpleITK==" in constraints_text


def test_declined_pip_install_is_a_one_line_error(app, installer, monkeypatch):
    monkeypatch.setitem(sys.modules, "h5py", None)
    app.confirm_answer = False
    with pytest.raises(RuntimeError, match=r"^missing Python packages: h5py>=3\.8$"):
        installer.ensurePythonRequirements(("torch", "h5py"))


def fake_torch(version):
    torch = types.ModuleType("torch")
    torch.__spec__ = importlib.machinery.ModuleSpec("torch", None)
    torch.__version__ = version
    return torch


@pytest.mark.parametrize("version, ok", [("2.5.0", True), ("2.5.1+cu121", True), ("2.10.0", True),
                                         ("2.13.0+cpu", True), ("3.0.0", True), ("2.4.1+cu118", False),
                                         ("1.13.1", False), ("", False), ("nightly", False)])
def test_torch_version_check(installer, version, ok):
    problem = installer.torchVersionProblem(version)
    assert (problem == "") == ok
    if not ok:
        assert "\n" not in problem and "PyTorch 2.5 or later" in problem


def test_an_old_torch_already_installed_is_refused(app, installer, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", fake_torch("2.1.2+cu121"))   # e.g. installed by another extension
    with pytest.raises(RuntimeError, match=r"needs PyTorch 2\.5 or later, but PyTorch 2\.1\.2\+cu121 is installed"):
        installer.ensureTorch()
    monkeypatch.setitem(sys.modules, "torch", fake_torch("2.6.0"))
    installer.ensureTorch()


class PyTorchUtilsLogic:
    """PyTorchUtils.PyTorchUtilsLogic with the version requirement argument (SlicerPyTorch since 2023)."""
    installs = []
    installs_version = "2.8.0"

    @staticmethod
    def torchInstalled():
        return False

    def installTorch(self, askConfirmation=False, forceComputationBackend=None, torchVersionRequirement=None):
        self.installs.append({"askConfirmation": askConfirmation, "torchVersionRequirement": torchVersionRequirement})
        torch = fake_torch(self.installs_version)
        sys.modules["torch"] = torch
        return torch


class OldPyTorchUtilsLogic(PyTorchUtilsLogic):
    def installTorch(self, askConfirmation=False, forceComputationBackend=None):
        return super().installTorch(askConfirmation, forceComputationBackend)


@pytest.mark.parametrize("logic", [PyTorchUtilsLogic, OldPyTorchUtilsLogic])
def test_torch_is_installed_with_the_minimum_version(app, installer, monkeypatch, logic):
    monkeypatch.setitem(sys.modules, "torch", None)      # not installed
    monkeypatch.setitem(sys.modules, "PyTorchUtils", types.SimpleNamespace(PyTorchUtilsLogic=logic))
    monkeypatch.setattr(PyTorchUtilsLogic, "installs", [])
    installer.ensureTorch()
    expected = ">=2.5" if logic is PyTorchUtilsLogic else None
    assert PyTorchUtilsLogic.installs == [{"askConfirmation": True, "torchVersionRequirement": expected}]
    # an old PyTorchUtils may install a torch that is too old: refused with a one-line error
    monkeypatch.setitem(sys.modules, "torch", None)
    monkeypatch.setattr(PyTorchUtilsLogic, "installs_version", "2.3.1")
    with pytest.raises(RuntimeError, match=r"^Femur U-Net needs PyTorch 2\.5 or later, but PyTorch 2\.3\.1 is"):
        installer.ensureTorch()


@pytest.mark.parametrize("name", ["FemurUNet", "FemurUNetTrain"])
def test_self_test_without_torch_reaches_the_installer(name, tmp_path):
    """CTest and 'Reload and Test' in a Slicer without PyTorch: the test must ask to install it, not fail on import."""
    script = textwrap.dedent(f"""
        import sys, types
        sys.path.insert(0, {str(TESTING)!r})
        import fake_slicer
        app = fake_slicer.install()
        sys.modules["torch"] = None   # this Slicer has no PyTorch yet
        asked = []

        class PyTorchUtilsLogic:
            @staticmethod
            def torchInstalled():
                return False

            def installTorch(self, askConfirmation=False, forceComputationBackend=None, torchVersionRequirement=None):
                asked.append((askConfirmation, torchVersionRequirement))
                return None   # the user clicks Cancel

        sys.modules["PyTorchUtils"] = types.ModuleType("PyTorchUtils")
        sys.modules["PyTorchUtils"].PyTorchUtilsLogic = PyTorchUtilsLogic
        app.load_module("FemurUNet")
        module = app.load_module({name!r})
        try:
            getattr(module, {name + "Test"!r})().runTest()
        except Exception as exc:
            print("raised", type(exc).__name__ + ":", exc)
        print("installer asked", asked)
        """)
    done = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert "raised RuntimeError: Femur U-Net needs PyTorch 2.5 or later; it was not installed." in lines, done.stdout
    assert "installer asked [(True, '>=2.5')]" in lines, done.stdout


# --- FemurUNet widget -----------------------------------------------------------------------------------------------
def open_widget(widget_class):
    """A module widget as Slicer shows it: set up, then entered."""
    widget = widget_class()
    widget.setup()
    widget.enter()
    return widget


def test_model_field_every_edit_reaches_the_parameter_node(app, femurunet, tmp_path):
    phantom_volume(app.mrmlScene)
    widget = open_widget(femurunet.FemurUNetWidget)
    field, p = widget.ui.modelPathLineEdit, widget._parameterNode
    assert p.modelPath == "" and widget.ui.modelInfoLabel.text == "Model: the demo model"
    assert widget.ui.segmentButton.enabled

    other_suffix = tmp_path / "model.pth"          # a FemurUNet model saved under another suffix
    other_suffix.write_bytes(b"")
    field.type(str(other_suffix))
    assert p.modelPath == str(other_suffix) and widget.ui.modelInfoLabel.text == "Model: model.pth"

    field.type(str(tmp_path / "missing"))           # typed without a suffix
    assert p.modelPath == str(tmp_path / "missing")
    assert widget.ui.modelInfoLabel.text == f"Model file not found: {tmp_path / 'missing'}"
    assert not widget.ui.segmentButton.enabled and widget.ui.segmentButton.toolTip.startswith("Model file not found")

    field.type("")                                  # cleared: back to the demo model
    assert p.modelPath == "" and widget.ui.modelInfoLabel.text == "Model: the demo model"
    assert widget.ui.segmentButton.enabled

    keras = tmp_path / "unet.hdf5"
    keras.write_bytes(b"")
    field.browse(str(keras))
    assert p.modelPath == str(keras)
    # and the other way: a model chosen elsewhere (FemurUNetTrain's 'Use this model') shows in the field
    p.modelPath = str(other_suffix)
    assert field.currentPath == str(other_suffix)


def test_a_successful_segmentation_adds_the_model_to_the_history(app, femurunet, tmp_path):
    from FemurUNetLib.paths import DEFAULT_MODEL_PATH
    phantom_volume(app.mrmlScene, shape=(12, 48, 48))
    widget = open_widget(femurunet.FemurUNetWidget)
    field = widget.ui.modelPathLineEdit
    broken = tmp_path / "broken.pt"
    broken.write_bytes(b"not a model")
    field.type(str(broken))
    widget.ui.segmentButton.click()
    assert app.errors and "broken.pt" in app.errors[-1]             # failed: not remembered
    assert app.settings.get("ctkPathLineEdit/FemurUNet/ModelPath") is None

    field.type(str(DEFAULT_MODEL_PATH))
    widget.ui.segmentButton.click()
    assert widget._parameterNode.outputSegmentation is not None, app.errors
    assert app.settings["ctkPathLineEdit/FemurUNet/ModelPath"] == [str(DEFAULT_MODEL_PATH)]
    assert field.comboBox().items == [str(DEFAULT_MODEL_PATH)] and field.currentPath == str(DEFAULT_MODEL_PATH)
    assert widget.ui.statusLabel.text.startswith("Femur")
    # the plausibility check still reaches the user (a 12-slice phantom is not a whole femur)
    warnings = widget.logic.lastWarnings()
    assert all(w in widget.ui.statusLabel.text for w in warnings)
    assert (len(app.warnings) == 1) == bool(warnings)
    # a small field padded to the model's minimum field is said so
    padded = widget.logic.lastResult.stats["padded_field_mm"]
    assert ("Small field of view" in widget.ui.statusLabel.text) == bool(padded)
    widget.logic.lastResult.stats["padded_field_mm"] = 300.0
    assert "Small field of view: padded to 300 mm (the model's minimum)." in widget.logic.describeLastResult()


def test_the_demo_model_is_the_engines(femurunet):
    from FemurUNetLib.paths import DEFAULT_MODEL_PATH
    assert femurunet.FemurUNetLogic.demoModelPath() == str(DEFAULT_MODEL_PATH)
    assert femurunet.FemurUNetLogic.modelProblem("") == ""        # shipped: the empty field is usable


def test_module_files_and_effect_load_without_torch(tmp_path):
    """Slicer loads the module files (and registers the effect) at startup, before PyTorch may be installed."""
    script = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(TESTING)!r})
        import fake_slicer
        app = fake_slicer.install()
        app.load_module("FemurUNet")
        app.load_module("FemurUNetTrain")
        app.load_effect()
        print("torch loaded:", sorted(m for m in sys.modules if m.split(".")[0] == "torch"))
        """)
    done = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == "torch loaded: []"


# --- the module's settings in the widget, the console API and the Segment Editor effect ------------------------------
def engine_calls(monkeypatch, result=None):
    """Record the keyword arguments of the engine calls from Slicer (mrml.segment_and_import for the module,
    mrml.segment_oriented_image for the effect); each call raises Cancelled after recording."""
    from FemurUNetLib import mrml
    from FemurUNetLib.errors import Cancelled
    calls = []

    def recorder(name):
        def call(*args, **kwargs):
            calls.append((name, kwargs))
            raise Cancelled("stopped by the test")
        return call

    monkeypatch.setattr(mrml, "segment_and_import", recorder("module"))
    monkeypatch.setattr(mrml, "segment_oriented_image", recorder("effect"))
    return calls


def test_widget_logic_and_effect_give_the_engine_the_same_options(app, femurunet, monkeypatch, tmp_path):
    from FemurUNetSlicerLib.options import SEGMENT_OPTION_NAMES
    calls = engine_calls(monkeypatch)
    _, volume = phantom_volume(app.mrmlScene, shape=(8, 32, 32))
    model = tmp_path / "model.pt"
    model.write_bytes(b"")
    widget = open_widget(femurunet.FemurUNetWidget)
    p = widget._parameterNode
    p.modelPath, p.device, p.batchSize, p.useModelThreshold, p.threshold, p.mirror, p.keepAllPieces = \
        str(model), "cpu", 3, False, 0.3, True, True

    widget.ui.segmentButton.click()
    assert widget.ui.statusLabel.text == "Cancelled; the scene is unchanged." and not app.errors   # caught by class
    effect = app.load_effect()
    effect.scriptedEffect.sourceImage = object()      # the recorder does not look at it
    effect.onApply()
    assert not app.errors and app.progress_dialogs[-1].closed
    assert effect.scriptedEffect.events == []        # a cancelled run leaves no undo state and no change
    with pytest.raises(Exception) as raised:         # the console API, same settings as arguments
        widget.logic.segment(volume, str(model), device="cpu", batchSize=3, threshold=0.3, mirror=True,
                             keepAllPieces=True)
    assert type(raised.value).__name__ == "Cancelled"

    expected = {"model": str(model), "device": "cpu", "batch_size": 3, "threshold": 0.3, "mirror": True,
                "keep_all_pieces": True}
    assert [name for name, _ in calls] == ["module", "effect", "module"]
    for _, kwargs in calls:
        assert {name: kwargs[name] for name in SEGMENT_OPTION_NAMES} == expected
    assert calls[1][1]["side"] == "both"

    p.modelPath, p.batchSize, p.useModelThreshold, p.mirror, p.keepAllPieces = "", 0, True, False, False  # defaults
    widget.ui.segmentButton.click()
    effect.onApply()
    defaults = {"model": None, "device": "cpu", "batch_size": None, "threshold": None, "mirror": False,
                "keep_all_pieces": False}
    assert [{name: kwargs[name] for name in SEGMENT_OPTION_NAMES} for _, kwargs in calls[3:]] == [defaults] * 2


def ct_image(ct, ijk_to_ras):
    """The Segment Editor's source image (a vtkOrientedImageData of shorts) of a CT array."""
    import vtk
    from vtk.util import numpy_support
    image = slicer.vtkOrientedImageData()
    image.SetExtent(0, ct.shape[2] - 1, 0, ct.shape[1] - 1, 0, ct.shape[0] - 1)
    image.AllocateScalars(vtk.VTK_SHORT, 1)
    image.SetImageToWorldMatrix(slicer.util.vtkMatrixFromArray(ijk_to_ras))
    numpy_support.vtk_to_numpy(image.GetPointData().GetScalars()).reshape(ct.shape)[...] = ct
    return image


def test_the_effect_honours_the_modules_mirror_setting(app, femurunet, tmp_path):
    """The effect segments the source image with the module's settings: mirror on gives the engine's mirrored
    result, mirror off the plain one (a model with random weights, on which the two differ)."""
    import torch
    from FemurUNetLib import UNet2D, mrml, segment_volume
    from FemurUNetLib.modelfile import save_model
    case, _ = phantom_volume(app.mrmlScene, seed=6, shape=(12, 48, 48))
    torch.manual_seed(1)
    model = save_model(UNet2D(base_filters=4), tmp_path / "random.pt", input_size=48)
    expected = {mirror: segment_volume(case.ct, case.geometry, model, device="cpu", mirror=mirror).labelmap > 0
                for mirror in (False, True)}
    assert not np.array_equal(expected[False], expected[True])

    p = femurunet.FemurUNetLogic().getParameterNode()
    p.modelPath, p.device = str(model), "cpu"
    effect = app.load_effect()
    effect.scriptedEffect.sourceImage = ct_image(case.ct, case.geometry.ijk_to_ras())
    for mirror in (True, False):
        p.mirror = mirror
        effect.onApply()
        assert not app.errors, app.errors
        mask, mode = effect.scriptedEffect.modifications[-1]
        assert mode == slicer.qSlicerSegmentEditorAbstractEffect.ModificationModeSet
        assert np.array_equal(mrml.oriented_image_to_array(mask)[0] > 0, expected[mirror]), f"mirror={mirror}"
    assert effect.scriptedEffect.events == ["undo", "modify"] * 2     # undoable: the state is saved before each change


# --- GUI connections --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("connect_gui_returns_tag", [False, True], ids=["slicer5.6-5.8", "slicer5.10+"])
@pytest.mark.parametrize("name", ["FemurUNet", "FemurUNetTrain"])
def test_entering_the_module_again_keeps_one_connection_per_widget(app, femurunet, name, connect_gui_returns_tag,
                                                                   monkeypatch):
    monkeypatch.setattr(fake_slicer, "CONNECT_GUI_RETURNS_TAG", connect_gui_returns_tag)
    module = femurunet if name == "FemurUNet" else app.load_module(name)
    widget = getattr(module, name + "Widget")()
    widget.setup()
    bound = sum(1 for w in vars(widget.ui).values() if w.property("SlicerParameterName"))
    assert bound >= 5
    widget.enter()
    widget.enter()
    assert fake_slicer.parameter_node_connections(widget.ui) == bound
    widget.exit()
    assert fake_slicer.parameter_node_connections(widget.ui) == 0
    widget.enter()
    assert fake_slicer.parameter_node_connections(widget.ui) == bound
    old_node = widget._parameterNode.parameterNode
    app.mrmlScene.Clear(1)                                  # File / Close scene: a new parameter node afterwards
    assert widget._parameterNode.parameterNode is not old_node
    assert fake_slicer.parameter_node_connections(widget.ui) == bound
    assert widget._parameterNode.parameterNode.GetScene() is app.mrmlScene


# --- FemurUNetTrain widget ------------------------------------------------------------------------------------
def test_training_path_fields_every_edit_reaches_the_parameter_node(app, femurunet_train, tmp_path):
    widget = open_widget(femurunet_train.FemurUNetTrainWidget)
    ui, p = widget.ui, widget._parameterNode
    data, val = tmp_path / "data", tmp_path / "val"
    data.mkdir()
    val.mkdir()
    assert not ui.trainButton.enabled and ui.pathsStatusLabel.text.startswith("Choose the dataset folder")

    ui.datasetPathLineEdit.type(str(data))
    assert p.datasetPath == str(data) and ui.pathsStatusLabel.text == "Choose the output model file (.pt)"

    ui.outputModelPathLineEdit.type(str(tmp_path / "runs" / "model"))      # no suffix: .pt is added
    assert p.outputModelPath == str(tmp_path / "runs" / "model")
    assert ui.trainButton.enabled
    assert ui.pathsStatusLabel.text == f"The model will be written to {tmp_path / 'runs' / 'model.pt'}"

    ui.outputModelPathLineEdit.type(str(tmp_path / "model.pth"))           # another suffix: refused, visibly
    assert p.outputModelPath == str(tmp_path / "model.pth") and not ui.trainButton.enabled
    assert ui.pathsStatusLabel.text == f"The output model must be a .pt file: {tmp_path / 'model.pth'}"
    assert ui.trainButton.toolTip == ui.pathsStatusLabel.text

    ui.outputModelPathLineEdit.type(str(tmp_path / "model.pt"))
    assert ui.trainButton.enabled and ui.pathsStatusLabel.text == ""

    ui.validationPathLineEdit.type(str(val))
    assert p.validationPath == str(val) and ui.trainButton.enabled
    ui.validationPathLineEdit.type(str(tmp_path / "nowhere"))
    assert not ui.trainButton.enabled and ui.pathsStatusLabel.text == f"Validation folder not found: {tmp_path / 'nowhere'}"
    ui.validationPathLineEdit.type("")                                     # cleared: no validation folder
    assert p.validationPath == "" and ui.trainButton.enabled

    ui.datasetPathLineEdit.type("")
    assert p.datasetPath == "" and not ui.trainButton.enabled
    with pytest.raises(ValueError, match=r"^Choose the dataset folder"):
        widget.logic.startTraining(p)


def test_export_asks_for_no_package_it_does_not_use(app, femurunet_train, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "skimage", None)   # scikit-image is not installed
    from FemurUNetLib import mrml
    case, volume = phantom_volume(app.mrmlScene, seed=4, shape=(12, 40, 40))
    segmentation, segment_ids = mrml.import_labelmap(volume, case.label, [{"value": 1, "name": "Femur"}])
    summary = femurunet_train.FemurUNetTrainLogic.exportPair(volume, segmentation, segment_ids, str(tmp_path / "d"))
    assert summary["positive"] > 0 and app.confirmations == []
    assert (tmp_path / "d" / "dataset.json").is_file()


@pytest.mark.slow
def test_export_and_training_from_the_widget_need_no_scikit_image(app, femurunet_train, tmp_path, monkeypatch):
    """Clicks through the training module: no pip prompt without scikit-image, and the paths go to the history."""
    blocker = tmp_path / "blocker"
    (blocker / "skimage").mkdir(parents=True)
    (blocker / "skimage" / "__init__.py").write_text("raise ImportError('scikit-image is not installed here')\n")
    monkeypatch.setenv("PYTHONPATH", str(blocker))                        # the training process cannot import it
    monkeypatch.setitem(sys.modules, "skimage", None)                    # nor can this one
    from FemurUNetLib import mrml
    case, volume = phantom_volume(app.mrmlScene, seed=5, shape=(16, 48, 48))
    labels = [{"value": 1, "name": "Femur left", "side": "left"}, {"value": 2, "name": "Femur right", "side": "right"}]
    segmentation, segment_ids = mrml.import_labelmap(volume, case.label, labels)

    widget = open_widget(femurunet_train.FemurUNetTrainWidget)
    ui, p = widget.ui, widget._parameterNode
    ui.pairVolumeSelector.setCurrentNode(volume)
    ui.pairSegmentSelector.setCurrentNode(segmentation)
    ui.pairSegmentSelector.segmentIds = segment_ids
    ui.addPairButton.click()
    assert not ui.exportButton.enabled and ui.exportButton.toolTip == "Choose the dataset folder to export into"
    ui.datasetPathLineEdit.type(str(tmp_path / "data"))
    assert ui.exportButton.enabled
    ui.exportButton.click()
    assert not app.errors and not app.confirmations, (app.errors, app.confirmations)
    assert ui.exportStatusLabel.text.startswith("Exported 1 pair(s)")
    assert app.settings["ctkPathLineEdit/FemurUNetTrain/DatasetPath"] == [str(tmp_path / "data")]

    ui.outputModelPathLineEdit.type(str(tmp_path / "tiny"))
    p.epochs, p.stepsPerEpoch, p.batchSize, p.baseFilters, p.device = 1, 1, 2, 2, "cpu"
    ui.trainButton.click()
    assert not app.errors and not app.confirmations, (app.errors, app.confirmations)
    assert ui.trainButton.text == "Stop" and widget._timer.isActive()
    assert app.settings["ctkPathLineEdit/FemurUNetTrain/OutputModelPath"] == [str(tmp_path / "tiny")]
    assert "ctkPathLineEdit/FemurUNetTrain/ValidationPath" not in app.settings   # empty: nothing to remember
    deadline = time.monotonic() + 180
    while widget._timer.isActive() and time.monotonic() < deadline:
        widget.onPollTraining()
        time.sleep(0.2)
    assert ui.trainStatusLabel.text.startswith("Done: 1 epochs"), (ui.trainStatusLabel.text, ui.logTextEdit.plainText)
    assert (tmp_path / "tiny.pt").is_file() and ui.useModelButton.enabled
    widget.cleanup()


# --- FemurUNetTrain: the active dataset section (issue 16) -----------------------------------------------------------
def femurunet_case(app, femurunet, model_path, seed=3):
    """Femur U-Net's current case as its Segment button leaves it: input volume, output segmentation with the
    segments its model wrote (recorded on the node)."""
    from FemurUNetLib import mrml
    case, volume = phantom_volume(app.mrmlScene, seed=seed, shape=(8, 32, 32))
    labels = [{"value": 1, "name": "Femur left", "side": "left"}, {"value": 2, "name": "Femur right", "side": "right"}]
    segmentation, segment_ids = mrml.import_labelmap(volume, case.label, labels, closed_surface=False)
    mrml.record_segment_sources(segmentation, str(model_path), case.label, labels)
    p = femurunet.FemurUNetLogic().getParameterNode()
    p.inputVolume, p.outputSegmentation = volume, segmentation
    return volume, segmentation, segment_ids


def test_active_dataset_is_remembered_and_the_current_case_is_added_replaced_and_removed(app, femurunet,
                                                                                         femurunet_train, tmp_path):
    from FemurUNetTrainLib import active_dataset
    data = tmp_path / "data"
    app.settings[active_dataset.SETTINGS_KEY] = str(data)          # chosen in an earlier session
    volume, segmentation, segment_ids = femurunet_case(app, femurunet, tmp_path / "made-by.pt")
    widget = open_widget(femurunet_train.FemurUNetTrainWidget)
    ui, p = widget.ui, widget._parameterNode
    assert p.activeDatasetPath == str(data) and ui.activeDatasetPathLineEdit.currentPath == str(data)
    assert ui.caseVolumeSelector.currentNode() is volume and ui.caseSegmentSelector.currentNode() is segmentation
    assert ui.caseSegmentSelector.selectedSegmentIDs() == segment_ids
    assert ui.addCaseButton.enabled and not ui.finetuneButton.enabled and not ui.removeCaseButton.enabled

    ui.addCaseButton.click()
    assert not app.errors and app.confirmations == [], app.errors
    cases = ui.datasetCasesTableWidget
    assert cases.rowCount == 1 and cases.item(0, 0).text() == "CT_3" and cases.item(0, 1).text() == "8"
    assert cases.item(0, 2).text().endswith("from made-by.pt, not corrected")
    assert ui.activeDatasetStatusLabel.text.splitlines() == [
        "Added case 'CT_3': 8 slices (8 with femur); unchanged since Femur U-Net made it.",
        "1 case(s), 8 slices with femur; Femur U-Net's model: femurunet_demo_b16.pt"]
    assert ui.finetuneButton.enabled and ui.removeCaseButton.enabled
    assert app.settings["ctkPathLineEdit/FemurUNetTrain/ActiveDatasetPath"] == [str(data)]

    app.confirm_answer = False                                    # same name: asked, declined, nothing changes
    manifest = (data / "dataset.json").read_text()
    ui.addCaseButton.click()
    assert app.confirmations[-1].startswith("The dataset already has a case 'CT_3'. Replace it")
    assert (data / "dataset.json").read_text() == manifest
    app.confirm_answer = True
    ui.caseNameLineEdit.text = "knee"                             # another name: appended without asking
    ui.addCaseButton.click()
    assert len(app.confirmations) == 1 and cases.rowCount == 2 and cases.item(1, 0).text() == "knee"

    cases.selectedRowNumbers = [0]
    ui.removeCaseButton.click()
    assert app.confirmations[-1].startswith("Remove case 'CT_3' (8 slices)")
    assert cases.rowCount == 1 and cases.item(0, 0).text() == "knee" and not app.errors

    ui.activeDatasetPathLineEdit.type(str(tmp_path / "other"))   # another folder: remembered for next time
    assert p.activeDatasetPath == str(tmp_path / "other") and cases.rowCount == 0
    assert app.settings[active_dataset.SETTINGS_KEY] == str(tmp_path / "other")
    widget.cleanup()


def test_a_versioned_model_is_chosen_for_femurunet_and_its_effect(app, femurunet, femurunet_train, tmp_path):
    import json
    from FemurUNetLib import UNet2D
    from FemurUNetLib.modelfile import save_model
    from FemurUNetSlicerLib.options import segmentOptions
    from FemurUNetTrainLib import active_dataset
    data = tmp_path / "data"
    femurunet_case(app, femurunet, tmp_path / "made-by.pt")
    widget = open_widget(femurunet_train.FemurUNetTrainWidget)
    ui = widget.ui
    ui.activeDatasetPathLineEdit.type(str(data))
    ui.addCaseButton.click()
    for version, dice in ((1, 0.81), (2, 0.86)):                  # two fine-tunes done earlier
        arguments, out = active_dataset.begin_finetune(data, None)
        save_model(UNet2D(base_filters=2), out)
        out.with_suffix(".log.jsonl").write_text(json.dumps({"epoch": 1, "dice": dice, "val_dice": None,
                                                             "best": True}) + "\n")
        active_dataset.finish_finetune(out, succeeded=True)
    widget.updateDatasetTables()
    models = ui.datasetModelsTableWidget
    assert [models.item(r, 0).text() for r in range(models.rowCount)] == ["v2.pt", "v1.pt"]
    assert models.item(0, 1).text() == "0.860 (training)" and models.item(0, 2).text() == "femurunet_demo_b16.pt"

    models.selectedRowNumbers = [1]
    ui.useDatasetModelButton.click()
    assert not app.errors, app.errors
    femurunet_parameters = femurunet.FemurUNetLogic().getParameterNode()
    assert femurunet_parameters.modelPath == str(data / "models" / "v1.pt")
    assert segmentOptions(femurunet_parameters)["model"] == str(data / "models" / "v1.pt")   # the effect's too
    assert models.item(1, 0).text() == "* v1.pt" and ui.activeDatasetStatusLabel.text.splitlines() == [
        "Femur U-Net now segments with v1.pt.", "1 case(s), 8 slices with femur; Femur U-Net's model: v1.pt"]
    widget.cleanup()


def test_fine_tune_button_starts_the_background_run_and_stop_keeps_a_stopped_version(app, femurunet, femurunet_train,
                                                                                    tmp_path):
    femurunet_case(app, femurunet, tmp_path / "made-by.pt")
    widget = open_widget(femurunet_train.FemurUNetTrainWidget)
    ui, p = widget.ui, widget._parameterNode
    ui.activeDatasetPathLineEdit.type(str(tmp_path / "data"))
    ui.addCaseButton.click()
    p.device = "cpu"
    ui.finetuneButton.click()
    assert not app.errors, app.errors
    command = widget._run.process.command
    out = tmp_path / "data" / "models" / "v1.pt"
    assert command[command.index("train") + 1:] == [str(tmp_path / "data"), "--out", str(out), "--init",
                                                    femurunet.FemurUNetLogic.demoModelPath(), "--recipe", "finetune",
                                                    "--device", "cpu", "--progress", "json"]
    assert ui.finetuneButton.text == "Stop" and ui.trainButton.text == "Stop" and widget._timer.isActive()
    assert ui.datasetModelsTableWidget.item(0, 0).text() == "v1.pt (training)"
    ui.finetuneButton.click()                                     # Stop
    assert not widget._timer.isActive() and ui.finetuneButton.text == "Fine-tune"
    assert ui.datasetModelsTableWidget.item(0, 0).text() == "v1.pt (stopped)"
    assert ui.activeDatasetStatusLabel.text.startswith("v1.pt stopped")
    assert femurunet.FemurUNetLogic().getParameterNode().modelPath == ""     # not the active model
    widget.cleanup()
