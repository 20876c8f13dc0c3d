"""Femur U-Net: segment the femur in a CT with a 2D U-Net. The work is done in FemurUNetLib (mrml.py)."""
import logging
import os
from typing import Annotated, Optional

import qt
import vtk

import slicer
from slicer.ScriptedLoadableModule import (ScriptedLoadableModule, ScriptedLoadableModuleLogic,
                                           ScriptedLoadableModuleTest, ScriptedLoadableModuleWidget)
from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper
from slicer.util import VTKObservationMixin
from slicer import vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode

# torch-free imports (Slicer loads this file at startup, before PyTorch may be installed)
from FemurUNetLib.errors import Cancelled
from FemurUNetLib.paths import DEFAULT_MODEL_PATH
from FemurUNetSlicerLib.gui import ParameterNodeGui, pathTextLineEdit
from FemurUNetSlicerLib.install import ensurePythonRequirements, modelImports
from FemurUNetSlicerLib.options import segmentOptions

DEVICES = ("auto", "cpu", "cuda", "mps")


#
# FemurUNet
#
class FemurUNet(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "Femur U-Net"
        self.parent.categories = ["Segmentation"]
        self.parent.dependencies = ["Segmentations"]
        self.parent.contributors = ["FemurUNet developers"]
        self.parent.helpText = (
            "Segments the femur in a CT with a 2D U-Net (slice by slice, any orientation). "
            "Choose the CT and click <b>Segment femur</b>; the result is a segmentation with a 'Femur' segment "
            "(or 'Femur left'/'Femur right'). Also available as the Segment Editor effect 'Femur U-Net' and "
            "from the Python console: <code>slicer.util.getModuleLogic('FemurUNet').segment(volumeNode)</code>. "
            "See <a href='https://github.com/femurunet/SlicerFemurUNet'>the documentation</a>.")
        self.parent.acknowledgementText = (
            "A PyTorch port of a Keras 2D U-Net for proximal femur segmentation, packaged for 3D Slicer.")
        slicer.app.connect("startupCompleted()", registerSegmentEditorEffect)


def registerSegmentEditorEffect():
    import qSlicerSegmentationsEditorEffectsPythonQt as effects
    effectPath = os.path.join(os.path.dirname(__file__), "SegmentEditorFemurUNetLib", "SegmentEditorEffect.py")
    instance = effects.qSlicerSegmentEditorScriptedEffect(None)
    instance.setPythonSource(effectPath.replace("\\", "/"))
    instance.self().register()


#
# FemurUNetParameterNode
#
@parameterNodeWrapper
class FemurUNetParameterNode:
    inputVolume: vtkMRMLScalarVolumeNode
    outputSegmentation: vtkMRMLSegmentationNode
    modelPath: str = ""   # empty: the demo model
    device: Annotated[str, Choice(DEVICES)] = "auto"
    batchSize: Annotated[int, WithinRange(0, 512)] = 0   # 0: automatic
    useModelThreshold: bool = True
    threshold: Annotated[float, WithinRange(0.01, 0.99)] = 0.5
    mirror: bool = False   # also run each slice mirrored left-right and average
    keepAllPieces: bool = False   # keep labelled pieces detached from each femur


#
# FemurUNetWidget
#
class FemurUNetWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGui = None
        self._running = False
        self._cancelRequested = False

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/FemurUNet.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = FemurUNetLogic()
        self._parameterNodeGui = ParameterNodeGui(self.ui)
        self.ui.progressBar.hide()

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.ui.segmentButton.connect("clicked(bool)", self.onSegmentButton)
        pathTextLineEdit(self.ui.modelPathLineEdit).connect("textChanged(QString)", self.onModelPathChanged)
        self.ui.defaultModelButton.connect("clicked()", self.onDefaultModelButton)
        self.ui.importKerasButton.connect("clicked()", self.onImportKerasButton)
        self.initializeParameterNode()

    def cleanup(self) -> None:
        self._cancelRequested = True
        self.removeObservers()

    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        self.setParameterNode(None)

    def onSceneStartClose(self, caller, event) -> None:
        self._cancelRequested = True
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())
        if not self._parameterNode.inputVolume:
            firstVolume = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
            if firstVolume and not firstVolume.IsA("vtkMRMLLabelMapVolumeNode"):
                self._parameterNode.inputVolume = firstVolume

    def setParameterNode(self, inputParameterNode: Optional[FemurUNetParameterNode]) -> None:
        if self._parameterNode:
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateGUIFromParameterNode)
        self._parameterNode = inputParameterNode
        self._parameterNodeGui.bind(inputParameterNode)
        if self._parameterNode:
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateGUIFromParameterNode)
        self.updateGUIFromParameterNode()

    def updateGUIFromParameterNode(self, caller=None, event=None) -> None:
        if self._parameterNode is None or self._running:
            return
        path = self._parameterNode.modelPath
        if self.ui.modelPathLineEdit.currentPath != path:
            wasBlocked = self.ui.modelPathLineEdit.blockSignals(True)
            self.ui.modelPathLineEdit.currentPath = path
            self.ui.modelPathLineEdit.blockSignals(wasBlocked)
        self.ui.modelInfoLabel.text = self.logic.describeModel(path)
        self.ui.thresholdSliderWidget.enabled = not self._parameterNode.useModelThreshold
        problem = ("Select an input CT first" if self._parameterNode.inputVolume is None
                   else self.logic.modelProblem(path))
        self.ui.segmentButton.enabled = not problem
        self.ui.segmentButton.toolTip = problem or "Segment the femur in the input CT (click again to cancel)"

    def onModelPathChanged(self, path) -> None:
        """Every edit of the model field, clearing included (empty: the demo model)."""
        if self._parameterNode and self._parameterNode.modelPath != path:
            self._parameterNode.modelPath = path

    def onDefaultModelButton(self) -> None:
        if self._parameterNode:
            self._parameterNode.modelPath = ""

    def onImportKerasButton(self) -> None:
        path = qt.QFileDialog.getOpenFileName(slicer.util.mainWindow(), "Import a Keras U-Net", "",
                                              "Keras U-Net (*.hdf5 *.h5 *.keras)")
        if not path:
            return
        with slicer.util.tryWithErrorDisplay("Keras model import failed.", waitCursor=True):
            self._parameterNode.modelPath = str(self.logic.importKerasModel(path))

    def _setRunning(self, running: bool) -> None:
        self._running = running
        self._cancelRequested = False
        for widget in (self.ui.inputsCollapsibleButton, self.ui.outputsCollapsibleButton,
                       self.ui.advancedCollapsibleButton):
            widget.enabled = not running
        self.ui.segmentButton.text = "Cancel" if running else "Segment femur"
        self.ui.progressBar.visible = running
        self.ui.progressBar.value = 0
        if not running:
            self.updateGUIFromParameterNode()

    def onProgress(self, done: int, total: int) -> None:
        self.ui.progressBar.maximum = total
        self.ui.progressBar.value = done
        slicer.app.processEvents()   # keeps Slicer responsive and lets the Cancel click through

    def onSegmentButton(self) -> None:
        if self._running:
            self._cancelRequested = True
            self.ui.segmentButton.text = "Cancelling..."
            return
        p = self._parameterNode
        self._setRunning(True)
        self.ui.statusLabel.text = "Segmenting..."
        slicer.app.processEvents()
        try:
            node = self.logic.segmentWithParameterNode(p, progress=self.onProgress,
                                                       cancel=lambda: self._cancelRequested)
        except Cancelled:
            self._setRunning(False)
            self.ui.statusLabel.text = "Cancelled; the scene is unchanged."
            return
        except Exception as exc:
            self._setRunning(False)
            self.ui.statusLabel.text = f"Failed: {exc}"
            logging.exception("Femur U-Net segmentation failed")
            slicer.util.errorDisplay(f"Femur segmentation failed:\n{exc}")
            return
        self._setRunning(False)
        self.ui.modelPathLineEdit.addCurrentPathToHistory()   # its settingKey keeps the models that worked
        p.outputSegmentation = node   # later runs replace the femur segments in this node
        self.ui.statusLabel.text = self.logic.describeLastResult()
        self.logic.showResult(p.inputVolume, node)
        warnings = self.logic.lastWarnings()
        if warnings:
            slicer.util.warningDisplay("The femur segmentation looks implausible:\n\n" + "\n".join(warnings),
                                       windowTitle="Femur U-Net: check the result")


#
# FemurUNetLogic
#
class FemurUNetLogic(ScriptedLoadableModuleLogic):
    """Console API: ``slicer.util.getModuleLogic("FemurUNet").segment(volumeNode)`` returns the segmentation."""

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        self.lastResult = None

    def getParameterNode(self):
        return FemurUNetParameterNode(super().getParameterNode())

    def segment(self, volumeNode, model=None, segmentationNode=None, device="auto", batchSize=None,
                threshold=None, progress=None, cancel=None, closedSurface=True, mirror=False,
                keepAllPieces=False):
        """Segment the femur in ``volumeNode``; returns the segmentation node (a new one unless given).

        ``model``: a .pt/.hdf5 path, a loaded UNet2D, or None for the demo model. Raises
        FemurUNetLib.Cancelled (scene unchanged) when ``cancel()`` returns True. ``mirror``: also run each slice
        mirrored left-right and average the probabilities (about 2x slower, slightly more accurate).
        ``keepAllPieces``: keep labelled pieces detached from each femur (by default they are removed).
        """
        options = {"model": model, "device": device, "batch_size": batchSize, "threshold": threshold,
                   "mirror": mirror, "keep_all_pieces": keepAllPieces}
        return self.segmentWithOptions(volumeNode, segmentationNode, options, progress, cancel, closedSurface)

    def segmentWithParameterNode(self, parameterNode, progress=None, cancel=None):
        """The Segment button: the module's input volume and settings, into its output segmentation (or a new one)."""
        return self.segmentWithOptions(parameterNode.inputVolume, parameterNode.outputSegmentation,
                                       segmentOptions(parameterNode), progress, cancel)

    def segmentWithOptions(self, volumeNode, segmentationNode, options, progress=None, cancel=None,
                           closedSurface=True):
        """``segment`` with the engine's options (``FemurUNetSlicerLib.options.segmentOptions``)."""
        ensurePythonRequirements(modelImports(options.get("model")))
        from FemurUNetLib import mrml
        node, self.lastResult, _ = mrml.segment_and_import(
            volumeNode, segmentation_node=segmentationNode, progress=progress, cancel=cancel,
            closed_surface=closedSurface, **options)
        for warning in self.lastWarnings():
            logging.warning(f"Femur U-Net: {warning}")
        return node

    def lastWarnings(self) -> list:
        """The plausibility check's warnings (one line each) of the last segment() call; [] if plausible."""
        report = getattr(self.lastResult, "plausibility", None)
        return list(report.warnings) if report is not None else []

    def importKerasModel(self, path):
        """Convert a Keras .hdf5/.h5 U-Net once (cached beside it) and return the .pt path."""
        ensurePythonRequirements(("torch", "h5py"))
        from FemurUNetLib.keras_import import convert_keras_file
        return convert_keras_file(path)

    @staticmethod
    def demoModelPath() -> str:
        return str(DEFAULT_MODEL_PATH)

    @classmethod
    def modelProblem(cls, path: str) -> str:
        """Why the model field cannot be used (one line), or "" (empty field: the demo model)."""
        if path:
            return "" if os.path.isfile(path) else f"Model file not found: {path}"
        return "" if os.path.isfile(cls.demoModelPath()) else "The demo model is not installed; choose a model file"

    @classmethod
    def describeModel(cls, path: str) -> str:
        problem = cls.modelProblem(path)
        if problem:
            return problem
        return f"Model: {os.path.basename(path)}" if path else "Model: the demo model"

    def describeLastResult(self) -> str:
        r = self.lastResult
        if r is None:
            return ""
        import numpy as np
        voxelMl = float(np.prod(r.geometry.spacing)) / 1000.0
        counts = np.bincount(r.labelmap.ravel(), minlength=256)
        parts = [f"{label['name']}: {counts[label['value']] * voxelMl:.1f} ml" for label in r.labels]
        text = f"{'; '.join(parts)}. {r.stats.get('slices', 0)} slices in {r.seconds:.1f} s on {r.device}."
        if r.stats.get("padded_field_mm"):
            text += f" Small field of view: padded to {r.stats['padded_field_mm']:g} mm (the model's minimum)."
        from FemurUNetLib.gate import emptied_note
        note = emptied_note(r)
        return "\n".join([text] + ([note[0].upper() + note[1:] + "."] if note else [])
                         + [f"Warning: {warning}" for warning in self.lastWarnings()])

    @staticmethod
    def showResult(volumeNode, segmentationNode) -> None:
        slicer.util.setSliceViewerLayers(background=volumeNode, fit=False)
        layoutManager = slicer.app.layoutManager()
        if layoutManager and layoutManager.threeDViewCount:
            layoutManager.threeDWidget(0).threeDView().resetFocalPoint()


#
# FemurUNetTest
#
class FemurUNetTest(ScriptedLoadableModuleTest):
    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_FemurUNet_phantom()

    def test_FemurUNet_phantom(self):
        """Phantom CT in the scene -> demo model -> Dice and geometry checks (FemurUNetLib.mrml.self_test_case)."""
        self.delayDisplay("Segmenting a phantom CT with the demo model")
        ensurePythonRequirements(("torch",))
        from FemurUNetLib import mrml
        measured = mrml.self_test_case(slicer.mrmlScene, model=None, min_dice=0.8)
        self.delayDisplay(f"Dice {measured['dice']:.3f} on {measured['case']} in {measured['seconds']:.1f} s")
        # the console API reuses the node: same-named segments are replaced, not duplicated
        logic = FemurUNetLogic()
        node = logic.segment(measured["volume_node"], segmentationNode=measured["segmentation_node"])
        self.assertEqual(node.GetID(), measured["segmentation_node"].GetID())
        self.assertEqual(node.GetSegmentation().GetNumberOfSegments(), len(measured["segment_ids"]))
        self.delayDisplay("Test passed")
