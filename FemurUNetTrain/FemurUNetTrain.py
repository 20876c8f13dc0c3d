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
from FemurUNetLib.paths import DEFAULT_MODEL_PATH
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
    """The module's parameters: the export's negative share, the active dataset folder, then the training options of
    FemurUNetTrainLib.options (names, defaults and ranges defined there once)."""
    annotations = {"emptyFraction": Annotated[float, WithinRange(0.0, 1.0)], "activeDatasetPath": str}
    defaults = {"emptyFraction": trainOptions.EMPTY_FRACTION, "activeDatasetPath": ""}
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
        self._caseRows, self._modelRows = [], []   # the active dataset's tables (active_dataset.CaseRow, ModelRow)
        self._finetuneOut = None   # the model file of the fine-tune running in self._run, if it is one
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
        self.ui.datasetCasesTableWidget.setColumnCount(4)
        self.ui.datasetCasesTableWidget.setHorizontalHeaderLabels(["Case", "Femur slices", "Source", "Added"])
        self.ui.datasetCasesTableWidget.horizontalHeader().setStretchLastSection(True)
        self.ui.datasetModelsTableWidget.setColumnCount(5)
        self.ui.datasetModelsTableWidget.setHorizontalHeaderLabels(["Model", "Dice", "From", "Cases", "Created"])
        self.ui.datasetModelsTableWidget.horizontalHeader().setStretchLastSection(True)

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.ui.addPairButton.connect("clicked()", self.onAddPair)
        self.ui.removePairButton.connect("clicked()", self.onRemovePairs)
        self.ui.exportButton.connect("clicked()", self.onExport)
        self.ui.trainButton.connect("clicked()", self.onTrainButton)
        self.ui.useModelButton.connect("clicked()", self.onUseModel)
        pathTextLineEdit(self.ui.activeDatasetPathLineEdit).connect("textChanged(QString)", self.onActiveDatasetChanged)
        self.ui.removeCaseButton.connect("clicked()", self.onRemoveCase)
        self.ui.addCaseButton.connect("clicked()", self.onAddCase)
        self.ui.finetuneButton.connect("clicked()", self.onFinetuneButton)
        self.ui.useDatasetModelButton.connect("clicked()", self.onUseDatasetModel)
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
        if not self._parameterNode.activeDatasetPath:      # a new scene: the folder chosen last time
            self._parameterNode.activeDatasetPath = self.logic.rememberedDataset()
        if self.ui.caseVolumeSelector.currentNode() is None:   # Femur U-Net's current case
            volume, segmentation, segmentIds = self.logic.currentCase()
            if volume is not None:
                self.ui.caseVolumeSelector.setCurrentNode(volume)
                self.ui.caseSegmentSelector.setCurrentNode(segmentation)
                self.ui.caseSegmentSelector.setSelectedSegmentIDs(segmentIds)
        self.updateDatasetTables()

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
        self.updateDatasetButtons()

    # --- active dataset ---------------------------------------------------------------------------------------
    def updateDatasetButtons(self) -> None:
        p = self._parameterNode
        edit = self.ui.activeDatasetPathLineEdit
        if edit.currentPath != p.activeDatasetPath:
            wasBlocked = edit.blockSignals(True)
            edit.currentPath = p.activeDatasetPath
            edit.blockSignals(wasBlocked)
        running = self._run is not None and self._run.running
        problem = self.logic.datasetProblem(p.activeDatasetPath)
        self.ui.addCaseButton.enabled = not problem and not running
        self.ui.addCaseButton.toolTip = problem or "Add the CT and its corrected femur segment(s) to the dataset"
        self.ui.removeCaseButton.enabled = bool(self._caseRows) and not running
        finetuneRunning = running and self._finetuneOut is not None
        self.ui.finetuneButton.enabled = finetuneRunning or (not problem and bool(self._caseRows) and not running)
        self.ui.finetuneButton.text = "Stop" if finetuneRunning else "Fine-tune"
        self.ui.useDatasetModelButton.enabled = any(os.path.isfile(row.path) for row in self._modelRows)

    def onActiveDatasetChanged(self, path: str) -> None:
        p = self._parameterNode
        if p and p.activeDatasetPath != path:
            p.activeDatasetPath = path
            if not self.logic.datasetProblem(path):
                self.logic.rememberDataset(path)
            self.updateDatasetTables()

    def updateDatasetTables(self, message: str = "") -> None:
        """Refill the cases and models tables from the active dataset's folder; ``message``: the last action's."""
        p = self._parameterNode
        folder = p.activeDatasetPath if p else ""
        self._caseRows, self._modelRows, problem = self.logic.datasetRows(folder)
        fill = self._fillTable
        fill(self.ui.datasetCasesTableWidget, [(r.case, r.femur_slices, r.source, r.date) for r in self._caseRows])
        active = self.logic.activeModel()
        fill(self.ui.datasetModelsTableWidget,
             [(("* " if os.path.abspath(r.path) == active else "") + r.name + ("" if r.state in ("done", "") else
                                                                                f" ({r.state})"),
               r.describe_dice(), os.path.basename(r.init), len(r.cases), r.created) for r in self._modelRows])
        cases = sum(r.femur_slices for r in self._caseRows)
        self.ui.activeDatasetStatusLabel.text = problem if folder else "Choose a folder for your corrected cases"
        if folder and not problem:
            self.ui.activeDatasetStatusLabel.text = (f"{len(self._caseRows)} case(s), {cases} slices with femur; "
                                                     f"Femur U-Net's model: {os.path.basename(active)}")
        if message:
            self.ui.activeDatasetStatusLabel.text = message + "\n" + self.ui.activeDatasetStatusLabel.text
        if p:
            self.updateDatasetButtons()

    @staticmethod
    def _fillTable(table, rows) -> None:
        table.setRowCount(len(rows))
        for r, row in enumerate(rows):
            for c, text in enumerate(row):
                table.setItem(r, c, qt.QTableWidgetItem(str(text)))

    def _selectedRow(self, table, rows):
        selected = [index.row() for index in table.selectionModel().selectedRows()]
        return rows[selected[0]] if selected and selected[0] < len(rows) else None

    def onRemoveCase(self) -> None:
        row = self._selectedRow(self.ui.datasetCasesTableWidget, self._caseRows)
        if row is None:
            slicer.util.errorDisplay("Select the case to remove in the table.")
            return
        folder = self._parameterNode.activeDatasetPath
        if not slicer.util.confirmOkCancelDisplay(f"Remove case '{row.case}' ({row.slices} slices) from {folder}?"):
            return
        message = ""
        with slicer.util.tryWithErrorDisplay("Could not remove the case.", waitCursor=True):
            self.logic.removeCase(folder, row.case)
            message = f"Removed case '{row.case}'."
        self.updateDatasetTables(message)

    @staticmethod
    def _chosenSegments(volumeSelector, segmentSelector) -> tuple:
        """(volume, segmentation, segment IDs) chosen in a pair of selectors; an error dialog and Nones if incomplete."""
        volume, segmentation = volumeSelector.currentNode(), segmentSelector.currentNode()
        segmentIds = list(segmentSelector.selectedSegmentIDs())
        if not volume or not segmentation or not segmentIds:
            slicer.util.errorDisplay("Choose a CT volume, a segmentation and at least one femur segment.")
            return None, None, []
        return volume, segmentation, segmentIds

    def onAddCase(self) -> None:
        volume, segmentation, segmentIds = self._chosenSegments(self.ui.caseVolumeSelector, self.ui.caseSegmentSelector)
        if volume is None:
            return
        p = self._parameterNode
        case = self.logic.caseName(volume, self.ui.caseNameLineEdit.text)
        replace = self.logic.hasCase(p.activeDatasetPath, case)
        if replace and not slicer.util.confirmOkCancelDisplay(
                f"The dataset already has a case '{case}'. Replace it with this CT and its segments?"):
            return
        message = ""
        with slicer.util.tryWithErrorDisplay("Could not add the case.", waitCursor=True):
            summary = self.logic.addCase(volume, segmentation, segmentIds, p.activeDatasetPath, case, replace,
                                         p.emptyFraction)
            self.ui.activeDatasetPathLineEdit.addCurrentPathToHistory()
            edited = summary["provenance"]["edited"]
            message = (f"{'Replaced' if replace else 'Added'} case '{case}': {summary['slices']} slices "
                       f"({summary['positive']} with femur)" + {True: "; corrected by hand.", None: ".",
                                                                False: "; unchanged since Femur U-Net made it."}[edited])
        self.updateDatasetTables(message)

    def onPathChanged(self, parameterName: str, path: str) -> None:
        """Every edit of a path field, clearing included; the paths are checked in updateGUIFromParameterNode."""
        if self._parameterNode and getattr(self._parameterNode, parameterName) != path:
            setattr(self._parameterNode, parameterName, path)

    # --- training pairs -------------------------------------------------------------------------------------
    def onAddPair(self) -> None:
        volume, segmentation, segmentIds = self._chosenSegments(self.ui.pairVolumeSelector, self.ui.pairSegmentSelector)
        if volume is None:
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
        with slicer.util.tryWithErrorDisplay("Could not start the training.", waitCursor=True):
            self._startRun(lambda: self.logic.startTraining(self._parameterNode))
            for editName in self.PATH_EDITS:   # remember the folders and model of a run that started
                getattr(self.ui, editName).addCurrentPathToHistory()
        self.updateGUIFromParameterNode()

    def _startRun(self, start, finetuneOut=None) -> None:
        """Start a background run (``start()`` returns it) in place of the last one; the poll timer follows it."""
        if self._run is not None:
            self._run.close()
            self._run = None
        self._finetuneOut = finetuneOut
        self._run = start()
        self.ui.logTextEdit.clear()
        self.ui.useModelButton.enabled = False
        self.ui.trainButton.text = "Stop"
        self.ui.trainStatusLabel.text = "Starting..."
        self._timer.start()

    def onFinetuneButton(self) -> None:
        if self._run is not None and self._run.running:
            self.onTrainButton()    # Stop, like the Train button
            return
        message = ""
        with slicer.util.tryWithErrorDisplay("Could not start the fine-tune.", waitCursor=True):
            run = self.logic.startFinetune(self._parameterNode)
            self._startRun(lambda: run, finetuneOut=run.config.out)
            message = f"Fine-tuning {os.path.basename(run.config.out)}..."
        self.updateDatasetTables(message)

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
            if self._finetuneOut is not None:
                self.onFinetuneFinished()
            self.updateGUIFromParameterNode()

    def onFinetuneFinished(self) -> None:
        """Record the fine-tune's result; a finished model becomes Femur U-Net's model."""
        out, self._finetuneOut, message = self._finetuneOut, None, ""
        with slicer.util.tryWithErrorDisplay("Could not record the fine-tuned model.", waitCursor=True):
            row = self.logic.finishFinetune(out, self._run.succeeded, self._run.process.stopped)
            message = (f"{row.name}: Dice {row.describe_dice()}; now Femur U-Net's model." if row.state == "done" else
                       f"{row.name} {row.state}" + (" (check 'Resume' and click Fine-tune to continue)."
                                                    if row.state == "stopped" else "."))
        self.updateDatasetTables(message)

    def onUseDatasetModel(self) -> None:
        row = self._selectedRow(self.ui.datasetModelsTableWidget, self._modelRows)
        if row is None:
            slicer.util.errorDisplay("Select a model in the table.")
            return
        message = ""
        with slicer.util.tryWithErrorDisplay("Could not use the model.", waitCursor=True):
            self.logic.useModelInFemurUNet(row.path)
            message = f"Femur U-Net now segments with {row.name}."
        self.updateDatasetTables(message)

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

    # the path checks of the module's fields (FemurUNetTrainLib.options, tested there)
    outputModelFile = staticmethod(trainOptions.output_model_file)
    exportPathProblem = staticmethod(trainOptions.export_path_problem)
    trainingPathsProblem = staticmethod(trainOptions.training_paths_problem)

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
        """Make the model Femur U-Net's (module and Segment Editor effect): FemurUNetTrainLib.mrml.set_active_model."""
        ensurePythonRequirements(("torch",))
        from FemurUNetTrainLib import mrml as training_mrml
        training_mrml.set_active_model(slicer.mrmlScene, modelPath)

    # --- active dataset (FemurUNetTrainLib.active_dataset: torch-free; mrml: the scene side) -------------------
    @staticmethod
    def rememberedDataset() -> str:
        from FemurUNetTrainLib import active_dataset
        return active_dataset.remembered_dataset(qt.QSettings())

    @staticmethod
    def rememberDataset(folder: str) -> None:
        from FemurUNetTrainLib import active_dataset
        active_dataset.remember_dataset(qt.QSettings(), folder)

    @staticmethod
    def datasetProblem(folder: str) -> str:
        from FemurUNetTrainLib import active_dataset
        return active_dataset.dataset_problem(folder)

    @staticmethod
    def datasetRows(folder: str) -> tuple:
        """(case rows, model rows, problem) of the dataset folder; no rows when it cannot be read."""
        from FemurUNetTrainLib import active_dataset
        problem = active_dataset.dataset_problem(folder)
        if problem:
            return [], [], problem
        return active_dataset.case_rows(folder), active_dataset.model_rows(folder), ""

    @staticmethod
    def hasCase(folder: str, case: str) -> bool:
        from FemurUNetTrainLib import active_dataset
        return active_dataset.has_case(folder, case)

    @staticmethod
    def caseName(volumeNode, name: str = "") -> str:
        """The case name typed, else the volume's name made safe (as FemurUNetTrainLib.mrml.add_case names it)."""
        from FemurUNetTrainLib import active_dataset
        return name.strip() or active_dataset.safe_case_name(volumeNode.GetName())

    @staticmethod
    def removeCase(folder: str, case: str) -> dict:
        from FemurUNetTrainLib import active_dataset
        return active_dataset.remove_case(folder, case)

    @staticmethod
    def activeModel() -> str:
        """Femur U-Net's model file (the demo model's when its field is empty)."""
        import FemurUNet
        return os.path.abspath(FemurUNet.FemurUNetLogic().getParameterNode().modelPath or DEFAULT_MODEL_PATH)

    @staticmethod
    def currentCase() -> tuple:
        """Femur U-Net's input volume, output segmentation and the femur segments it wrote (see mrml.current_case)."""
        import FemurUNet
        p = FemurUNet.FemurUNetLogic().getParameterNode()
        if p.inputVolume is None or p.outputSegmentation is None:
            return None, None, []
        ensurePythonRequirements(("torch",))
        from FemurUNetTrainLib import mrml as training_mrml
        return training_mrml.current_case(slicer.mrmlScene)

    @staticmethod
    def addCase(volumeNode, segmentationNode, segmentIds, folder, case, replace, emptyFraction):
        ensurePythonRequirements(EXPORT_IMPORTS)
        from FemurUNetTrainLib import mrml as training_mrml
        return training_mrml.add_case(volumeNode, segmentationNode, segmentIds, folder, case, replace=replace,
                                      empty_fraction=emptyFraction)

    def startFinetune(self, parameters):
        """Fine-tune Femur U-Net's model on the active dataset in the background (``femurunet train --init MODEL
        --recipe finetune``) into the next models/vN.pt; returns the started TrainingRun."""
        p = parameters
        ensurePythonRequirements(TRAINING_IMPORTS)
        from FemurUNetTrainLib import active_dataset
        arguments, out = active_dataset.begin_finetune(
            p.activeDatasetPath, self.activeModel(), val=p.validationPath or None, resume=p.resume,
            device=None if p.device == "auto" else p.device)
        run = active_dataset.finetune_run(arguments, out, resume=p.resume, python=self.pythonExecutable())
        logging.info("Femur U-Net fine-tune: %s", " ".join(run.process.command))
        return run.start()

    def finishFinetune(self, modelPath, succeeded: bool, stopped: bool):
        from FemurUNetTrainLib import active_dataset
        row = active_dataset.finish_finetune(modelPath, succeeded, stopped)
        if row.state == "done":
            self.useModelInFemurUNet(row.path)
        return row


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
