"""Training's Slicer bridge: export a CT volume node + femur segments as training slices, the training curve chart.

Needs Slicer (or the slicer-core wheel); the engine's ``FemurUNetLib.mrml`` does the node <-> array work."""
from __future__ import annotations

import os
import re
from typing import Optional

import slicer
import vtk

from FemurUNetLib.errors import FemurUNetError
from FemurUNetLib.mrml import segments_to_labelmap, volume_node_to_array

from .export import export_arrays, read_manifest

CURVE_COLUMNS = ("epoch", "loss", "dice", "val_loss", "val_dice")   # as in the training's .log.jsonl
_SERIES_COLORS = {"loss": (0.2, 0.4, 0.9), "dice": (0.5, 0.7, 1.0), "val_loss": (0.9, 0.5, 0.1),
                  "val_dice": (0.1, 0.7, 0.3)}


def safe_case_name(name: str) -> str:
    """A dataset case name (letters, digits, '.', '_', '-'; starting with a letter or digit) from a node name."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).lstrip("._-").rstrip("._") or "case"


def export_training_slices(volume_node, segmentation_node, segment_ids, outdir, case: Optional[str] = None,
                           **export_options) -> dict:
    """Export a (CT volume node, femur segments) pair as training slices with the training package's exporter.

    The union of ``segment_ids`` is the femur label, taken on the volume's grid. ``case`` defaults to the
    volume's name (numbered if the dataset has it already). ``export_options`` go to
    ``export.export_arrays`` (window, empty_fraction, seed). Returns its summary dict
    (case, slices, positive, negative, ...).
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
              "segments": [segmentation.GetSegment(sid).GetName() for sid in segment_ids]}
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
