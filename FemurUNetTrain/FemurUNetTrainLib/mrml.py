"""Training's Slicer bridge: export a CT volume node + femur segments as training slices, the training curve chart,
and the scene side of the active dataset loop (the active dataset and model, adding the current case).

Needs Slicer (or the slicer-core wheel); the engine's ``FemurUNetLib.mrml`` does the node <-> array work."""
from __future__ import annotations

import os
import time
from typing import Optional

import slicer
import vtk

from FemurUNetLib.errors import FemurUNetError
from FemurUNetLib.mrml import segment_sources, segments_provenance, segments_to_labelmap, volume_node_to_array
from FemurUNetLib.paths import DEFAULT_MODEL_PATH

from . import active_dataset
from .active_dataset import safe_case_name
from .export import export_arrays, read_manifest
from .options import EMPTY_FRACTION

CURVE_COLUMNS = ("epoch", "loss", "dice", "val_loss", "val_dice")   # as in the training's .log.jsonl
_SERIES_COLORS = {"loss": (0.2, 0.4, 0.9), "dice": (0.5, 0.7, 1.0), "val_loss": (0.9, 0.5, 0.1),
                  "val_dice": (0.1, 0.7, 0.3)}


def export_training_slices(volume_node, segmentation_node, segment_ids, outdir, case: Optional[str] = None,
                           provenance: Optional[dict] = None, **export_options) -> dict:
    """Export a (CT volume node, femur segments) pair as training slices with the training package's exporter.

    The union of ``segment_ids`` is the femur label, taken on the volume's grid. ``case`` defaults to the
    volume's name (numbered if the dataset has it already). ``export_options`` go to
    ``export.export_arrays`` (window, empty_fraction, seed). Returns its summary dict
    (case, slices, positive, negative, ...). ``provenance``: more fields for the case's ``source`` record.
    """
    if isinstance(segment_ids, str):
        segment_ids = [segment_ids]
    segment_ids = list(segment_ids)
    if not segment_ids:
        raise FemurUNetError("choose at least one femur segment to export")
    ct, geometry = volume_node_to_array(volume_node)
    label = segments_to_labelmap(segmentation_node, segment_ids, volume_node)
    segmentation = segmentation_node.GetSegmentation()
    source = {"volume": volume_node.GetName(), "segmentation": segmentation_node.GetName(),
              "segments": [segmentation.GetSegment(sid).GetName() for sid in segment_ids], **(provenance or {})}
    if case is None:   # the volume's name, numbered if the dataset already has it
        manifest = read_manifest(outdir) if os.path.isdir(outdir) else None
        taken = set(manifest["cases"]) if manifest else set()
        base = case = safe_case_name(volume_node.GetName())
        number = 2
        while case in taken:
            case, number = f"{base}_{number}", number + 1
    return export_arrays(ct, label, geometry, outdir, case, source=source, **export_options)


def update_training_curve(scene, records: list, chart_node=None, name: str = "FemurUNet training"):
    """Show training log records ({epoch, loss, dice, val_loss, val_dice, ...}) as a plot chart; returns it.

    Pass the returned chart back on the next call: its table is refilled from ``records`` (all epochs so far).
    """
    if chart_node is None:
        chart_node = scene.AddNewNodeByClass("vtkMRMLPlotChartNode", scene.GenerateUniqueName(name))
        chart_node.SetTitle(name)
        chart_node.SetXAxisTitle("epoch")
        chart_node.SetYAxisTitle("loss / Dice")
    table_node = chart_node.GetNodeReference("femurunetTable")
    if table_node is None:
        table_node = scene.AddNewNodeByClass("vtkMRMLTableNode", scene.GenerateUniqueName(f"{name} table"))
        chart_node.SetNodeReferenceID("femurunetTable", table_node.GetID())
    table = table_node.GetTable()
    table.Initialize()
    for column in CURVE_COLUMNS:
        values = vtk.vtkDoubleArray()
        values.SetName(column)
        values.SetNumberOfValues(len(records))
        for row, record in enumerate(records):
            value = record.get(column)
            values.SetValue(row, float("nan") if value is None else float(value))
        table.AddColumn(values)
    table_node.Modified()

    present = {chart_node.GetNthPlotSeriesNode(i).GetYColumnName(): chart_node.GetNthPlotSeriesNode(i)
               for i in range(chart_node.GetNumberOfPlotSeriesNodes())}
    for column in CURVE_COLUMNS[1:]:
        if column in present:
            continue
        series = scene.AddNewNodeByClass("vtkMRMLPlotSeriesNode", scene.GenerateUniqueName(f"{name} {column}"))
        series.SetAndObserveTableNodeID(table_node.GetID())
        series.SetXColumnName("epoch")
        series.SetYColumnName(column)
        series.SetPlotType(slicer.vtkMRMLPlotSeriesNode.PlotTypeScatter)
        series.SetMarkerStyle(slicer.vtkMRMLPlotSeriesNode.MarkerStyleCircle)
        series.SetColor(*_SERIES_COLORS[column])
        chart_node.AddAndObservePlotSeriesNodeID(series.GetID())
    return chart_node


# --- the active dataset loop: the scene side ---------------------------------------------------------------------
FEMURUNET_MODULE, TRAIN_MODULE = "FemurUNet", "FemurUNetTrain"
MODEL_PARAMETER = "modelPath"                  # FemurUNet's model ("": the demo model); its effect uses it too
DATASET_PARAMETER = "activeDatasetPath"        # FemurUNetTrain's active dataset folder


def module_parameter_node(scene, module: str):
    """A module's parameter node (the singleton vtkMRMLScriptedModuleNode Slicer's module logic uses), made if
    missing: what the modules' parameterNodeWrapper fields read and write."""
    node = scene.GetSingletonNode(module, "vtkMRMLScriptedModuleNode")
    if node is None:
        node = scene.CreateNodeByClass("vtkMRMLScriptedModuleNode")
        node.UnRegister(None)
        node.SetSingletonTag(module)
        node.SetName(scene.GenerateUniqueName(module))
        if hasattr(node, "SetModuleName"):
            node.SetModuleName(module)
        node = scene.AddNode(node)
    return node


def active_model(scene) -> str:
    """The model FemurUNet and its Segment Editor effect segment with (the demo model's file when none is set)."""
    return module_parameter_node(scene, FEMURUNET_MODULE).GetParameter(MODEL_PARAMETER) or str(DEFAULT_MODEL_PATH)


def set_active_model(scene, model) -> str:
    """Make ``model`` (a .pt file; None: the demo model) the model of FemurUNet and of its Segment Editor effect."""
    path = "" if model is None else os.path.abspath(os.fspath(model))
    if path and not os.path.isfile(path):
        raise FemurUNetError(f"{path}: model file not found")
    module_parameter_node(scene, FEMURUNET_MODULE).SetParameter(MODEL_PARAMETER, path)
    return path or str(DEFAULT_MODEL_PATH)


def active_dataset_folder(scene, settings=None) -> str:
    """The scene's active dataset folder; a scene without one takes the one remembered in ``settings``."""
    node = module_parameter_node(scene, TRAIN_MODULE)
    folder = node.GetParameter(DATASET_PARAMETER) or ""
    if not folder and settings is not None:
        folder = active_dataset.remembered_dataset(settings)
        if folder:
            node.SetParameter(DATASET_PARAMETER, folder)
    return folder


def set_active_dataset_folder(scene, folder, settings=None) -> str:
    """Choose the active dataset: remembered in the scene and (``settings``: e.g. qt.QSettings()) for next time."""
    folder = os.path.abspath(os.fspath(folder)) if folder else ""
    problem = active_dataset.dataset_problem(folder) if folder else ""
    if problem:
        raise FemurUNetError(problem)
    module_parameter_node(scene, TRAIN_MODULE).SetParameter(DATASET_PARAMETER, folder)
    active_dataset.remember_dataset(settings, folder)
    return folder


def current_case(scene) -> tuple:
    """FemurUNet's current case: (CT volume node, segmentation node, [femur segment IDs]); the femur segments are
    those FemurUNet wrote (by name), else all. (None, None, []) when FemurUNet has not segmented yet."""
    node = module_parameter_node(scene, FEMURUNET_MODULE)
    volume, segmentation = node.GetNodeReference("inputVolume"), node.GetNodeReference("outputSegmentation")
    if volume is None or segmentation is None:
        return volume, segmentation, []
    seg = segmentation.GetSegmentation()
    ids = [seg.GetNthSegmentID(i) for i in range(seg.GetNumberOfSegments())]
    written = set(segment_sources(segmentation))
    femur = [sid for sid in ids if seg.GetSegment(sid).GetName() in written]
    return volume, segmentation, femur or ids


def add_case(volume_node, segmentation_node, segment_ids, dataset, case: Optional[str] = None, *,
             replace: bool = False, corrected: Optional[bool] = None,
             empty_fraction: float = EMPTY_FRACTION) -> dict:
    """Add a CT volume node + femur segments to the dataset as case ``case`` (default: the volume's name).

    A case of that name already there is replaced only with ``replace=True`` (else FemurUNetError naming it).
    The case's source records the nodes, the model that made the segments (when FemurUNet did), whether they were
    edited since (``edited``) and ``corrected``: the caller's word, else ``edited``. All or nothing.
    Returns the export summary with ``provenance``.
    """
    problem = active_dataset.dataset_problem(dataset)
    if problem:
        raise FemurUNetError(problem)
    if isinstance(segment_ids, str):
        segment_ids = [segment_ids]
    if segmentation_node is None or volume_node is None or not list(segment_ids):
        raise FemurUNetError("choose a CT volume, its segmentation and at least one femur segment")
    case = case or safe_case_name(volume_node.GetName())
    if not replace and active_dataset.has_case(dataset, case):
        raise FemurUNetError(f"{dataset}: case {case!r} is already in the dataset; replace it (replace=True) "
                             "or choose another case name")
    origin = segments_provenance(segmentation_node, segment_ids, volume_node)
    provenance = {"model": origin["models"][0] if len(origin["models"]) == 1 else origin["models"] or None,
                  "edited": origin["edited"], "corrected": origin["edited"] if corrected is None else bool(corrected),
                  "added": time.strftime("%Y-%m-%dT%H:%M:%S")}
    summary = export_training_slices(volume_node, segmentation_node, segment_ids, dataset, case,
                                     provenance=provenance, empty_fraction=empty_fraction, replace=replace)
    return dict(summary, provenance=provenance)
