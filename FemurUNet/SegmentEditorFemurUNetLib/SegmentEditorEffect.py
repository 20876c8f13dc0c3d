"""Segment Editor effect 'Femur U-Net': fill the selected segment with the U-Net's femur (undoable)."""
import logging
import os

import qt

import slicer
from SegmentEditorEffects import AbstractScriptedSegmentEditorEffect

from FemurUNetLib.errors import Cancelled
from FemurUNetSlicerLib.install import ensurePythonRequirements, modelImports
from FemurUNetSlicerLib.options import segmentOptions

SIDES = ("both", "left", "right")


class SegmentEditorEffect(AbstractScriptedSegmentEditorEffect):
    def __init__(self, scriptedEffect):
        scriptedEffect.name = "Femur U-Net"
        scriptedEffect.perSegment = True       # fills the selected segment
        scriptedEffect.requireSegments = True
        AbstractScriptedSegmentEditorEffect.__init__(self, scriptedEffect)

    def clone(self):
        import qSlicerSegmentationsEditorEffectsPythonQt as effects
        clonedEffect = effects.qSlicerSegmentEditorScriptedEffect(None)
        clonedEffect.setPythonSource(__file__.replace("\\", "/"))
        return clonedEffect

    def icon(self):
        iconPath = os.path.join(os.path.dirname(__file__), "SegmentEditorEffect.png")
        return qt.QIcon(iconPath) if os.path.exists(iconPath) else qt.QIcon()

    def helpText(self):
        return ("<html>Replace the selected segment with the femur found by the 2D U-Net in the source volume."
                "<p>Uses the model and settings (device, batch size, threshold, mirror, detached pieces) chosen in the "
                "<b>Femur U-Net</b> module. "
                "Side: with a left/right model, which femur to take. Undo restores the segment.</html>")

    def setupOptionsFrame(self):
        self.sideComboBox = qt.QComboBox()
        self.sideComboBox.addItems(list(SIDES))
        self.sideComboBox.toolTip = "both: every femur label; left/right: needs a model with left/right labels"
        self.scriptedEffect.addLabeledOptionsWidget("Side:", self.sideComboBox)
        self.sideComboBox.connect("currentIndexChanged(int)", self.updateMRMLFromGUI)

        self.applyButton = qt.QPushButton("Apply")
        self.applyButton.objectName = self.__class__.__name__ + "Apply"
        self.applyButton.toolTip = "Segment the femur in the source volume into the selected segment"
        self.scriptedEffect.addOptionsWidget(self.applyButton)
        self.applyButton.connect("clicked()", self.onApply)

    def createCursor(self, widget):
        return slicer.util.mainWindow().cursor

    def setMRMLDefaults(self):
        self.scriptedEffect.setParameterDefault("Side", "both")

    def updateGUIFromMRML(self):
        side = self.scriptedEffect.parameter("Side")
        wasBlocked = self.sideComboBox.blockSignals(True)
        self.sideComboBox.currentIndex = SIDES.index(side) if side in SIDES else 0
        self.sideComboBox.blockSignals(wasBlocked)

    def updateMRMLFromGUI(self):
        self.scriptedEffect.setParameter("Side", SIDES[max(0, self.sideComboBox.currentIndex)])

    def _sourceImage(self):
        getter = getattr(self.scriptedEffect, "sourceVolumeImageData", None) or self.scriptedEffect.masterVolumeImageData
        return getter()

    def onApply(self):
        import FemurUNet
        sourceImage = self._sourceImage()
        if sourceImage is None:
            slicer.util.errorDisplay("Select a source volume first.")
            return
        options = segmentOptions(FemurUNet.FemurUNetLogic().getParameterNode())   # the module's settings
        progressDialog = slicer.util.createProgressDialog(labelText="Femur U-Net: segmenting...", maximum=0)
        try:
            ensurePythonRequirements(modelImports(options["model"]))
            from FemurUNetLib import mrml

            def progress(done, total):
                progressDialog.maximum, progressDialog.value = total, done
                slicer.app.processEvents()

            mask, result = mrml.segment_oriented_image(
                sourceImage, side=self.scriptedEffect.parameter("Side"), progress=progress,
                cancel=lambda: progressDialog.wasCanceled, **options)
        except Cancelled:
            return
        except Exception as exc:
            logging.exception("Femur U-Net effect failed")
            slicer.util.errorDisplay(f"Femur U-Net failed:\n{exc}")
            return
        finally:
            progressDialog.close()
        self.scriptedEffect.saveStateForUndo()
        self.scriptedEffect.modifySelectedSegmentByLabelmap(
            mask, slicer.qSlicerSegmentEditorAbstractEffect.ModificationModeSet)
        warnings = result.plausibility.warnings if result.plausibility is not None else []
        for warning in warnings:
            logging.warning(f"Femur U-Net: {warning}")
        if warnings:
            slicer.util.warningDisplay("The femur segmentation looks implausible:\n\n" + "\n".join(warnings),
                                       windowTitle="Femur U-Net: check the result")
