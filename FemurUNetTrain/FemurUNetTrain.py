"""Femur U-Net training: export (CT, femur segment) pairs from the scene and train in a background process."""
import logging
import os
import shutil
import sys
from typing import Annotated, Optional

import qt
import vtk

import slicer
from slicer.ScriptedLoadableModule import (ScriptedLoadableModule, ScriptedLoadableModuleLogic,
                                           ScriptedLoadableModuleTest, ScriptedLoadableModuleWidget)
from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper
from slicer.util import VTKObservationMixin

# torch-free Slicer-side helpers (beside FemurUNetLib in the FemurUNet module's folder)
from FemurUNetSlicerLib.gui import ParameterNodeGui, pathTextLineEdit
from FemurUNetSlicerLib.install import ensurePythonRequirements
from FemurUNetTrainLib import options as trainOptions   # torch-free

EXPORT_IMPORTS = ("torch", "PIL")
TRAINING_IMPORTS = ("torch", "PIL", "matplotlib")   # matplotlib: the training curve PNG
POLL_MILLISECONDS = 1000


#
# FemurUNetTrain
#
class FemurUNetTrain(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "Femur U-Net Training"
        self.parent.categories = ["Segmentation"]
        self.parent.dependencies = ["FemurUNet"]
        self.parent.contributors = ["FemurUNet developers"]
        self.parent.helpText = (
            "Train the Femur U-Net on your own segmentations: add (CT, femur segment) pairs, export them as "
            "training slices, and train in a background process (Slicer stays responsive; Stop keeps the last "
            "checkpoint, Resume continues it). The loss and Dice curves are plotted live.")
        self.parent.acknowledgementText = "Training recipe of the original Keras U-Net (Adam 1e-5, 1 - Dice)."


#
# FemurUNetTrainParameterNode
#
def _trainingParameterNodeClass():
    """The module's parameters: the export's negative share, then the training options of
    FemurUNetTrainLib.options (names, defaults and ranges defined there once)."""
    annotations = {"emptyFraction": Annotated[float, WithinRange(0.0, 1.0)]}
    defaults = {"emptyFraction": trainOptions.EMPTY_FRACTION}
    for name, _, kind, default, bounds, choices in trainOptions.gui_parameters():
        annotations[name] = (Annotated[kind, WithinRange(*bounds)] if bounds else
                             Annotated[kind, Choice(choices)] if choices else kind)
        defaults[name] = default
    return parameterNodeWrapper(type("FemurUNetTrainParameterNode", (), {"__annotations__": annotations, **defaults}))


FemurUNetTrainParameterNode = _trainingParameterNodeClass()


#
# FemurUNetTrainWidget
#
class FemurUNetTrainWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    PATH_EDITS = {"datasetPathLineEdit": "datasetPath", "validationPathLineEdit": "validationPath",
                  "outputModelPathLineEdit": "outputModelPath"}

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGui = None
        self._run = None
        self._chart = None
        self._pairs = []   # (volume node ID, segmentation node ID, [segment IDs], exported summary or None)
        self._timer = qt.QTimer()
        self._timer.setInterval(POLL_MILLISECONDS)
        self._timer.connect("timeout()", self.onPollTraining)

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/FemurUNetTrain.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = FemurUNetTrainLogic()
        self._parameterNodeGui = ParameterNodeGui(self.ui)
        self.ui.pairsTableWidget.setColumnCount(4)
        self.ui.pairsTableWidget.setHorizontalHeaderLabels(["CT", "Segmentation", "Segments", "Exported"])
        self.ui.pairsTableWidget.horizontalHeader().setStretchLastSection(True)

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.ui.addPairButton.connect("clicked()", self.onAddPair)
        self.ui.removePairButton.connect("clicked()", self.onRemovePairs)
        self.ui.exportButton.connect("clicked()", self.onExport)
        self.ui.trainButton.connect("clicked()", self.onTrainButton)
        self.ui.useModelButton.connect("clicked()", self.onUseModel)
        for editName, parameterName in self.PATH_EDITS.items():
            pathTextLineEdit(getattr(self.ui, editName)).connect(
                "textChanged(QString)", lambda path, name=parameterName: self.onPathChanged(name, path))
        self.initializeParameterNode()
        self.updatePairsTable()

    def cleanup(self) -> None:
        self._timer.stop()
        if self._run is not None:
            self._run.close()   # a training must not outlive Slicer
            self._run = None
        self.removeObservers()

    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        self.setParameterNode(None)

    def onSceneStartClose(self, caller, event) -> None:
        self.setParameterNode(None)
        self._pairs = []
        self._chart = None

    def onSceneEndClose(self, caller, event) -> None:
        self.updatePairsTable()
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())

    def setParameterNode(self, inputParameterNode: Optional[FemurUNetTrainParameterNode]) -> None:
        if self._parameterNode:
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateGUIFromParameterNode)
        self._parameterNode = inputParameterNode
        self._parameterNodeGui.bind(inputParameterNode)
        if self._parameterNode:
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateGUIFromParameterNode)
        self.updateGUIFromParameterNode()

    def updateGUIFromParameterNode(self, caller=None, event=None) -> None:
        p = self._parameterNode
        if p is None:
            return
        for editName, parameterName in self.PATH_EDITS.items():
            edit, value = getattr(self.ui, editName), getattr(p, parameterName)
            if edit.currentPath != value:
                wasBlocked = edit.blockSignals(True)
                edit.currentPath = value
                edit.blockSignals(wasBlocked)
        running = self._run is not None and self._run.running
        exportProblem = ("Add a (CT, femur segments) pair first" if not self._pairs
                         else self.logic.exportPathProblem(p.datasetPath))
        self.ui.exportButton.enabled = not exportProblem and not running
        self.ui.exportButton.toolTip = exportProblem or "Export the listed pairs as training slices"
        trainProblem = self.logic.trainingPathsProblem(p.datasetPath, p.validationPath, p.outputModelPath)
        self.ui.trainButton.enabled = running or not trainProblem
        self.ui.trainButton.toolTip = ("Stop the training (the last finished epoch is kept)" if running else
                                       trainProblem or "Train in a background process (click again to stop)")
        out = self.logic.outputModelFile(p.outputModelPath)
        self.ui.pathsStatusLabel.text = trainProblem or (f"The model will be written to {out}"
                                                         if out != p.outputModelPath else "")

    def onPathChanged(self, parameterName: str, path: str) -> None:
        """Every edit of a path field, clearing included; the paths are checked in updateGUIFromParameterNode."""
        if self._parameterNode and getattr(self._parameterNode, parameterName) != path:
            setattr(self._parameterNode, parameterName, path)

    # --- training pairs -------------------------------------------------------------------------------------
    def onAddPair(self) -> None:
        volume = self.ui.pairVolumeSelector.currentNode()
        segmentation = self.ui.pairSegmentSelector.currentNode()
        segmentIds = list(self.ui.pairSegmentSelector.selectedSegmentIDs())
        if not volume or not segmentation or not segmentIds:
            slicer.util.errorDisplay("Choose a CT volume, a segmentation and at least one femur segment.")
            return
        self._pairs.append((volume.GetID(), segmentation.GetID(), segmentIds, None))
        self.updatePairsTable()

    def onRemovePairs(self) -> None:
        rows = sorted({index.row() for index in self.ui.pairsTableWidget.selectionModel().selectedRows()},
                      reverse=True)
        for row in rows:
            del self._pairs[row]
        self.updatePairsTable()

    def updatePairsTable(self) -> None:
        table = self.ui.pairsTableWidget
        table.setRowCount(len(self._pairs))
        for row, (volumeId, segmentationId, segmentIds, summary) in enumerate(self._pairs):
            volume, segmentation = slicer.mrmlScene.GetNodeByID(volumeId), slicer.mrmlScene.GetNodeByID(segmentationId)
            names = [segmentation.GetSegmentation().GetSegment(s).GetName() for s in segmentIds
                     if segmentation and segmentation.GetSegmentation().GetSegment(s)]
            exported = (f"{summary['slices']} slices ({summary['positive']} femur, {summary['negative']} empty)"
                        if summary else "")
            for column, text in enumerate((volume.GetName() if volume else "(deleted)",
                                           segmentation.GetName() if segmentation else "(deleted)",
                                           ", ".join(names), exported)):
                table.setItem(row, column, qt.QTableWidgetItem(text))
        pending = sum(1 for pair in self._pairs if pair[3] is None)
        self.ui.exportButton.text = f"Export {pending} pair{'s' if pending != 1 else ''}" if pending else "Export pairs"
        self.updateGUIFromParameterNode()

    def onExport(self) -> None:
        p = self._parameterNode
        done = []
        with slicer.util.tryWithErrorDisplay("Export failed.", waitCursor=True):
            for index, (volumeId, segmentationId, segmentIds, summary) in enumerate(self._pairs):
                if summary is not None:
                    continue
                summary = self.logic.exportPair(slicer.mrmlScene.GetNodeByID(volumeId),
                                                slicer.mrmlScene.GetNodeByID(segmentationId), segmentIds,
                                                p.datasetPath, emptyFraction=p.emptyFraction)
                self._pairs[index] = (volumeId, segmentationId, segmentIds, summary)
                done.append(summary)
                self.updatePairsTable()
                slicer.app.processEvents()
        if done:
            self.ui.datasetPathLineEdit.addCurrentPathToHistory()
        slices = sum(s["slices"] for s in done)
        positive = sum(s["positive"] for s in done)
        self.ui.exportStatusLabel.text = (f"Exported {len(done)} pair(s): {slices} slices ({positive} with femur, "
                                          f"{slices - positive} without) to {p.datasetPath}")
        self.updatePairsTable()

    # --- training ---------------------------------------------------------------------------------------------
    def onTrainButton(self) -> None:
        if self._run is not None and self._run.running:
            self.ui.trainStatusLabel.text = "Stopping (the last finished epoch is kept)..."
            slicer.app.processEvents()
            self._run.stop()
            self.onPollTraining()
            return
        p = self._parameterNode
        with slicer.util.tryWithErrorDisplay("Could not start the training.", waitCursor=True):
            if self._run is not None:
                self._run.close()
            self._run = self.logic.startTraining(p)
            for editName in self.PATH_EDITS:   # remember the folders and model of a run that started
                getattr(self.ui, editName).addCurrentPathToHistory()
            self.ui.logTextEdit.clear()
            self.ui.useModelButton.enabled = False
            self.ui.trainButton.text = "Stop"
            self.ui.trainStatusLabel.text = "Starting..."
            self._timer.start()
        self.updateGUIFromParameterNode()

    def onPollTraining(self) -> None:
        if self._run is None:
            self._timer.stop()
            return
        from FemurUNetTrainLib import process
        status = self._run.poll()
        step, lines = process.split_progress(status.output)
        if lines:
            self.ui.logTextEdit.appendPlainText("\n".join(lines))
        if step:
            self.ui.trainProgressBar.maximum = step.epochs * step.steps
            self.ui.trainProgressBar.value = (step.epoch - 1) * step.steps + step.step
            self.ui.trainStatusLabel.text = step.describe()
        if status.new_records or (status.records and self._chart is None):
            self._chart = self.logic.showTrainingCurve(status.records, self._chart)
        if status.finished:
            self._timer.stop()
            self.ui.trainButton.text = "Train"
            if self._run.succeeded:
                last = status.records[-1] if status.records else {}
                self.ui.trainStatusLabel.text = (f"Done: {len(status.records)} epochs; model {self._run.config.out}"
                                                 + (f" (last val Dice {last['val_dice']:.3f})"
                                                    if last.get("val_dice") is not None else ""))
                self.ui.useModelButton.enabled = True
            elif self._run.process.stopped:
                self.ui.trainStatusLabel.text = "Stopped. Check 'Resume' and click Train to continue."
            else:
                self.ui.trainStatusLabel.text = (f"Training failed (exit code {status.returncode}): "
                                                 f"{process.last_line(self._run.process.output_tail())}")
            self.updateGUIFromParameterNode()

    def onUseModel(self) -> None:
        if self._run is not None:
            self.logic.useModelInFemurUNet(self._run.config.out)
            slicer.util.selectModule("FemurUNet")


#
# FemurUNetTrainLogic
#
class FemurUNetTrainLogic(ScriptedLoadableModuleLogic):
    def getParameterNode(self):
        return FemurUNetTrainParameterNode(super().getParameterNode())

    @staticmethod
    def outputModelFile(path: str) -> str:
        """The model file a training writes for the output field: '.pt' is added to a name without a suffix."""
        return path + ".pt" if path and not os.path.splitext(path)[1] else path

    @staticmethod
    def exportPathProblem(datasetPath: str) -> str:
        """Why pairs cannot be exported into this folder (one line), or "" (a missing folder is created)."""
        if not datasetPath:
            return "Choose the dataset folder to export into"
        if os.path.exists(datasetPath) and not os.path.isdir(datasetPath):
            return f"The dataset folder is a file: {datasetPath}"
        return ""

    @classmethod
    def trainingPathsProblem(cls, datasetPath: str, validationPath: str, outputModelPath: str) -> str:
        """Why these paths cannot start a training (one line), or "" when they can."""
        if not datasetPath:
            return "Choose the dataset folder (export pairs into it first)"
        if not os.path.isdir(datasetPath):
            return f"Dataset folder not found: {datasetPath}"
        if validationPath and not os.path.isdir(validationPath):
            return f"Validation folder not found: {validationPath}"
        if not outputModelPath:
            return "Choose the output model file (.pt)"
        out = cls.outputModelFile(outputModelPath)
        if not out.endswith(".pt"):
            return f"The output model must be a .pt file: {outputModelPath}"
        if os.path.isdir(out):
            return f"The output model is a folder: {out}"
        return ""

    @classmethod
    def exportPair(cls, volumeNode, segmentationNode, segmentIds, datasetPath, emptyFraction=trainOptions.EMPTY_FRACTION):
        """Export one (CT, femur segments) pair into the dataset folder; returns the summary dict."""
        problem = cls.exportPathProblem(datasetPath)
        if problem:
            raise ValueError(problem)
        ensurePythonRequirements(EXPORT_IMPORTS)
        from FemurUNetTrainLib import mrml as training_mrml
        return training_mrml.export_training_slices(volumeNode, segmentationNode, segmentIds, datasetPath,
                                           empty_fraction=emptyFraction)

    @staticmethod
    def pythonExecutable() -> str:
        """Slicer's Python launcher (PythonSlicer sets up Slicer's libraries), else this interpreter."""
        found = shutil.which("PythonSlicer", path=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""))
        return found or sys.executable

    @classmethod
    def trainingConfig(cls, parameters):
        """The TrainConfig of the module's parameters (the output name gets '.pt' when it has no suffix)."""
        values = {name: getattr(parameters, name) for name, *_ in trainOptions.gui_parameters()}
        return trainOptions.config_from_gui(values, out=cls.outputModelFile(parameters.outputModelPath))

    def startTraining(self, parameters):
        """Start ``femurunet train`` in the background with the module's settings; returns the TrainingRun."""
        p = parameters
        problem = self.trainingPathsProblem(p.datasetPath, p.validationPath, p.outputModelPath)
        if problem:
            raise ValueError(problem)
        ensurePythonRequirements(TRAINING_IMPORTS)
        from FemurUNetTrainLib.process import TrainingRun
        run = TrainingRun(self.trainingConfig(p), python=self.pythonExecutable())
        logging.info("Femur U-Net training: %s", " ".join(run.process.command))
        return run.start()

    @staticmethod
    def showTrainingCurve(records, chartNode=None):
        from FemurUNetTrainLib import mrml as training_mrml
        created = chartNode is None
        chartNode = training_mrml.update_training_curve(slicer.mrmlScene, records, chartNode)
        if created:
            slicer.modules.plots.logic().ShowChartInLayout(chartNode)
        return chartNode

    @staticmethod
    def useModelInFemurUNet(modelPath: str) -> None:
        import FemurUNet
        FemurUNet.FemurUNetLogic().getParameterNode().modelPath = str(modelPath)


#
# FemurUNetTrainTest
#
class FemurUNetTrainTest(ScriptedLoadableModuleTest):
    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_export_and_short_training()

    def test_export_and_short_training(self):
        import tempfile
        import time
        ensurePythonRequirements(TRAINING_IMPORTS)   # before any Lib import: their packages import torch
        from FemurUNetLib import mrml
        from FemurUNetLib.phantom import generate_case
        self.delayDisplay("Exporting a phantom pair and training two tiny epochs in the background")
        case = generate_case(3, shape=(24, 64, 64))
        volume = mrml.array_to_volume_node(slicer.mrmlScene, case.ct, case.geometry, "TrainTest CT")
        labels = [{"value": 1, "name": "Femur left", "side": "left"}, {"value": 2, "name": "Femur right", "side": "right"}]
        segmentation, segmentIds = mrml.import_labelmap(volume, case.label, labels)
        work = tempfile.mkdtemp(prefix="FemurUNetTrainTest-")
        summary = FemurUNetTrainLogic.exportPair(volume, segmentation, segmentIds, os.path.join(work, "data"))
        self.assertGreater(summary["positive"], 0)
        from FemurUNetTrainLib.process import TrainingRun
        config = trainOptions.TrainConfig(data=os.path.join(work, "data"), out=os.path.join(work, "m.pt"), epochs=2,
                                          steps_per_epoch=2, batch_size=2, base_filters=4, input_size=64)
        run = TrainingRun(config,
                          python=FemurUNetTrainLogic.pythonExecutable()).start()
        while run.running:
            slicer.app.processEvents()
            time.sleep(0.2)
        status = run.poll()
        self.assertTrue(run.succeeded, run.process.output_tail())
        self.assertEqual(len(status.records), 2)
        chart = FemurUNetTrainLogic.showTrainingCurve(status.records)
        self.assertEqual(chart.GetNumberOfPlotSeriesNodes(), 4)
        run.close()
        self.delayDisplay("Test passed")
