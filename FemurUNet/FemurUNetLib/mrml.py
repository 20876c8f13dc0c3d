"""Bridge between MRML nodes and the engine; the only FemurUNetLib module that imports slicer.

Everything works on ``node.GetScene()``, so it runs inside Slicer and under the ``slicer-core`` wheel
(no ``slicer.app``, no ``slicer.mrmlScene``).
"""
from __future__ import annotations

import hashlib
import json
import time
from typing import Callable, Optional

import numpy as np
import slicer
import vtk
from vtk.util import numpy_support

from .defaults import BONE_COLOR
from .errors import FemurUNetError
from .evaluate import dice
from .geometry import Geometry
from .inference import segment_volume
from .resolve import model_source, resolve_model
from .plausibility import check_result
from .volume_io import terminology_string

BINARY_LABELMAP = "Binary labelmap"
CLOSED_SURFACE = "Closed surface"
WARNINGS_ATTRIBUTE = "FemurUNet.PlausibilityWarnings"   # on the segmentation node: one warning a line
# on the segmentation node: JSON {segment name: {"model": file, "digest": of its voxels as FemurUNet wrote them}}
SOURCES_ATTRIBUTE = "FemurUNet.SegmentSources"
_CONVERTER_RULE_CLASSES = ("vtkBinaryLabelmapToClosedSurfaceConversionRule",
                           "vtkClosedSurfaceToBinaryLabelmapConversionRule",
                           "vtkClosedSurfaceToFractionalLabelmapConversionRule",
                           "vtkFractionalLabelmapToClosedSurfaceConversionRule")


# --- segmentation infrastructure -------------------------------------------------------------------------
def register_segmentation_converter_rules() -> None:
    """Register the standard converter rules once (Slicer's Segmentations module does it; slicer-core does not).

    Segmentation nodes copy the rules when they are constructed, so call this before creating one.
    """
    factory = slicer.vtkSegmentationConverterFactory.GetInstance()
    registered = {rule.GetClassName() for rule in factory.GetConverterRules()}
    for name in _CONVERTER_RULE_CLASSES:
        if name not in registered:
            factory.RegisterConverterRule(getattr(slicer, name)())


def _scene_of(node, what: str):
    if node is None:
        raise FemurUNetError(f"no {what} given")
    scene = node.GetScene()
    if scene is None:
        raise FemurUNetError(f"{what} '{node.GetName()}' is not in a scene")
    return scene


def _matrix_to_numpy(matrix: vtk.vtkMatrix4x4) -> np.ndarray:
    return np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)])


def _numpy_to_matrix(array) -> vtk.vtkMatrix4x4:
    matrix = vtk.vtkMatrix4x4()
    for r in range(4):
        for c in range(4):
            matrix.SetElement(r, c, float(array[r][c]))
    return matrix


def _geometry_from_ijk_to_ras(matrix, name: str) -> Geometry:
    try:
        return Geometry.from_ijk_to_ras(matrix)
    except ValueError as exc:
        raise FemurUNetError(f"volume '{name}': unsupported voxel geometry ({exc}); resample it first") from None


# --- volumes ---------------------------------------------------------------------------------------------
def volume_node_to_array(volume_node) -> tuple:
    """(array (k, j, i) view of the node's voxels, Geometry) of a scalar volume node (any IJKToRAS)."""
    if volume_node is None:
        raise FemurUNetError("no input volume given")
    name = volume_node.GetName()
    if not volume_node.IsA("vtkMRMLScalarVolumeNode") or volume_node.IsA("vtkMRMLLabelMapVolumeNode"):
        raise FemurUNetError(f"'{name}' is a {volume_node.GetClassName()}, not a scalar (CT) volume")
    image = volume_node.GetImageData()
    if image is None or image.GetNumberOfPoints() == 0:
        raise FemurUNetError(f"volume '{name}' holds no voxels")
    if image.GetNumberOfScalarComponents() != 1:
        raise FemurUNetError(f"volume '{name}' has {image.GetNumberOfScalarComponents()} components per voxel; "
                             "expected a grey-level CT")
    matrix = vtk.vtkMatrix4x4()
    volume_node.GetIJKToRASMatrix(matrix)
    return slicer.util.arrayFromVolume(volume_node), _geometry_from_ijk_to_ras(_matrix_to_numpy(matrix), name)


def array_to_volume_node(scene, array: np.ndarray, geometry: Geometry, name: str = "CT",
                         labelmap: bool = False):
    """A new scalar (or labelmap) volume node in ``scene`` holding ``array`` on ``geometry``."""
    node = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode" if labelmap else "vtkMRMLScalarVolumeNode",
                                   scene.GenerateUniqueName(name))
    node.SetIJKToRASMatrix(_numpy_to_matrix(geometry.ijk_to_ras()))
    slicer.util.updateVolumeFromArray(node, np.ascontiguousarray(array))
    node.CreateDefaultDisplayNodes()
    return node


# --- segmentations ---------------------------------------------------------------------------------------
def _source_representation(segmentation) -> str:
    getter = getattr(segmentation, "GetSourceRepresentationName", None) or segmentation.GetMasterRepresentationName
    return getter()


def _set_source_representation(segmentation, name: str) -> None:
    setter = getattr(segmentation, "SetSourceRepresentationName", None) or segmentation.SetMasterRepresentationName
    setter(name)


def _set_terminology(segment, entry: str) -> None:
    if hasattr(segment, "SetTerminology"):
        segment.SetTerminology(entry)
    else:  # Slicer < 5.7
        segment.SetTag(segment.GetTerminologyEntryTagName(), entry)


def get_terminology(segment) -> str:
    if hasattr(segment, "GetTerminology"):
        return segment.GetTerminology()
    return segment.GetTag(segment.GetTerminologyEntryTagName()) or ""


def oriented_image_from_array(array: np.ndarray, image_to_world, extent_start=(0, 0, 0)):
    """A vtkOrientedImageData copy of a (k, j, i) uint8 array starting at index ``extent_start`` (i, j, k)."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    i0, j0, k0 = (int(v) for v in extent_start)
    image = slicer.vtkOrientedImageData()
    image.SetExtent(i0, i0 + array.shape[2] - 1, j0, j0 + array.shape[1] - 1, k0, k0 + array.shape[0] - 1)
    image.AllocateScalars(vtk.VTK_UNSIGNED_CHAR, 1)
    numpy_support.vtk_to_numpy(image.GetPointData().GetScalars()).reshape(array.shape)[...] = array
    image.SetImageToWorldMatrix(_numpy_to_matrix(image_to_world))
    return image


def oriented_image_to_array(image) -> tuple:
    """(array (k, j, i) view, IJKToRAS 4x4 of the array's first voxel) of a vtkOrientedImageData with any extent."""
    e = image.GetExtent()
    shape = (e[5] - e[4] + 1, e[3] - e[2] + 1, e[1] - e[0] + 1)
    if min(shape) < 1 or image.GetPointData().GetScalars() is None:
        raise FemurUNetError("the source image is empty")
    matrix = vtk.vtkMatrix4x4()
    image.GetImageToWorldMatrix(matrix)
    m = _matrix_to_numpy(matrix)
    m[:3, 3] = (m @ np.array([e[0], e[2], e[4], 1.0]))[:3]
    return numpy_support.vtk_to_numpy(image.GetPointData().GetScalars()).reshape(shape), m


def _label_segments(labelmap: np.ndarray, ijk_to_ras, labels: list) -> list:
    """One vtkSegment per label record, all sharing one labelmap (one layer), named/coloured/tagged."""
    shared = oriented_image_from_array(labelmap, ijk_to_ras)
    segments = []
    for label in labels:
        segment = slicer.vtkSegment()
        segment.SetName(label["name"])
        segment.SetNameAutoGenerated(False)
        segment.SetColor(*[float(c) for c in label.get("color", BONE_COLOR)[:3]])
        segment.SetColorAutoGenerated(False)
        segment.SetLabelValue(int(label["value"]))
        segment.AddRepresentation(BINARY_LABELMAP, shared)
        _set_terminology(segment, terminology_string(label.get("side")))
        segments.append(segment)
    return segments


def _segment_ids(segmentation) -> list:
    return [segmentation.GetNthSegmentID(i) for i in range(segmentation.GetNumberOfSegments())]


def _replace_segments(segmentation, segments: list) -> list:
    """Put ``segments`` into ``segmentation``: a same-named segment keeps its ID and place, duplicates go."""
    new_ids = []
    for segment in segments:
        ids = _segment_ids(segmentation)
        same = [sid for sid in ids if segmentation.GetSegment(sid).GetName() == segment.GetName()]
        segment_id, insert_before = "", ""
        if same:
            segment_id = same[0]
            index = ids.index(segment_id)
            insert_before = next((sid for sid in ids[index + 1:] if sid not in same), "")
            for sid in same:
                segmentation.RemoveSegment(sid)
        if not segmentation.AddSegment(segment, segment_id, insert_before):
            raise FemurUNetError(f"could not add segment '{segment.GetName()}'")
        new_ids.append(segmentation.GetSegmentIdBySegmentName(segment.GetName()))
    return new_ids


def remove_node(node) -> None:
    """Remove a node with its display and storage nodes."""
    scene = node.GetScene()
    if scene is None:
        return
    helpers = [node.GetNthDisplayNode(i) for i in range(node.GetNumberOfDisplayNodes())] if hasattr(
        node, "GetNumberOfDisplayNodes") else []
    helpers += [node.GetNthStorageNode(i) for i in range(node.GetNumberOfStorageNodes())] if hasattr(
        node, "GetNumberOfStorageNodes") else []
    for helper in helpers:
        if helper is not None:
            scene.RemoveNode(helper)
    scene.RemoveNode(node)


def new_segmentation_node(volume_node, name: Optional[str] = None):
    """An empty segmentation node on the volume's grid, under the volume's transform, with display nodes."""
    register_segmentation_converter_rules()
    scene = _scene_of(volume_node, "volume")
    node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode",
                                   scene.GenerateUniqueName(name or f"{volume_node.GetName()} femur"))
    node.SetAndObserveTransformNodeID(volume_node.GetTransformNodeID())
    node.SetReferenceImageGeometryParameterFromVolumeNode(volume_node)
    node.CreateDefaultDisplayNodes()
    return node


def import_labelmap(volume_node, labelmap: np.ndarray, labels: list, segmentation_node=None,
                    closed_surface: bool = True):
    """Import a (k, j, i) labelmap on ``volume_node``'s grid as one segment per label record.

    Segments named like a label record are replaced (keeping their ID and place); other segments stay.
    Returns (segmentation node, [segment IDs in label order]).
    """
    scene = _scene_of(volume_node, "volume")
    array, geometry = volume_node_to_array(volume_node)
    if labelmap.shape != array.shape:
        raise FemurUNetError(f"labelmap shape {labelmap.shape} does not match volume '{volume_node.GetName()}' "
                             f"{array.shape}")
    register_segmentation_converter_rules()
    others = []
    if segmentation_node is not None:
        if segmentation_node.GetScene() is not scene:
            raise FemurUNetError(f"segmentation '{segmentation_node.GetName()}' is not in the volume's scene")
        if segmentation_node.GetTransformNodeID() != volume_node.GetTransformNodeID():
            raise FemurUNetError(f"segmentation '{segmentation_node.GetName()}' and volume '{volume_node.GetName()}'"
                                 " are under different transforms; choose a new output segmentation")
        segmentation = segmentation_node.GetSegmentation()
        names = {label["name"] for label in labels}
        others = [sid for sid in _segment_ids(segmentation) if segmentation.GetSegment(sid).GetName() not in names]
        if others and _source_representation(segmentation) != BINARY_LABELMAP:
            raise FemurUNetError(f"segmentation '{segmentation_node.GetName()}' is edited as "
                                 f"'{_source_representation(segmentation)}', not as a binary labelmap")
    segments = _label_segments(labelmap, geometry.ijk_to_ras(), labels)

    created = segmentation_node is None
    node = new_segmentation_node(volume_node) if created else segmentation_node
    try:
        segmentation = node.GetSegmentation()
        was_modifying = node.StartModify()
        try:
            if not created and not others:
                _set_source_representation(segmentation, BINARY_LABELMAP)
                node.SetReferenceImageGeometryParameterFromVolumeNode(volume_node)
            elif not created and not segmentation.GetConversionParameter(
                    slicer.vtkSegmentationConverter.GetReferenceImageGeometryParameterName()):
                node.SetReferenceImageGeometryParameterFromVolumeNode(volume_node)
            segment_ids = _replace_segments(segmentation, segments)
        finally:
            node.EndModify(was_modifying)
        if node.GetDisplayNode() is None:
            node.CreateDefaultDisplayNodes()
        if closed_surface:
            node.CreateClosedSurfaceRepresentation()
    except Exception:
        if created:
            remove_node(node)
        raise
    return node, segment_ids


def segment_and_import(volume_node, model=None, segmentation_node=None, *, device: str = "auto",
                       batch_size: Optional[int] = None, threshold: Optional[float] = None, autocast: bool = True,
                       progress: Optional[Callable[[int, int], None]] = None,
                       cancel: Optional[Callable[[], bool]] = None, closed_surface: bool = True,
                       mirror: bool = False, keep_all_pieces: bool = False,
                       min_field_mm: Optional[float] = None, confirm=None,
                       confirm_fraction: Optional[float] = None, gate=None,
                       gate_threshold: Optional[float] = None, smooth_z_mm: Optional[float] = None) -> tuple:
    """``segment_volume_node`` that also returns the engine's SegmentationResult and the segment IDs.

    The result carries the plausibility check (``result.plausibility.warnings``, one line each); the
    segmentation node holds the same lines in its ``WARNINGS_ATTRIBUTE`` attribute (absent: no warning).
    """
    _scene_of(volume_node, "volume")
    array, geometry = volume_node_to_array(volume_node)
    # Inference touches no node: Cancelled / errors here leave the scene as it was.
    result = segment_volume(array, geometry, model, device=device, batch_size=batch_size, threshold=threshold,
                            autocast=autocast, progress=progress, cancel=cancel, mirror=mirror,
                            keep_all_pieces=keep_all_pieces, min_field_mm=min_field_mm, confirm=confirm,
                            confirm_fraction=confirm_fraction, gate=gate, gate_threshold=gate_threshold,
                            smooth_z_mm=smooth_z_mm)
    check_result(result, array)
    node, segment_ids = import_labelmap(volume_node, result.labelmap, result.labels, segmentation_node,
                                        closed_surface)
    set_warnings_attribute(node, result.plausibility.warnings)
    record_segment_sources(node, model, result.labelmap, result.labels)
    return node, result, segment_ids


def set_warnings_attribute(node, warnings: list) -> None:
    if warnings:
        node.SetAttribute(WARNINGS_ATTRIBUTE, "\n".join(warnings))
    else:
        node.RemoveAttribute(WARNINGS_ATTRIBUTE)


def mask_digest(mask: np.ndarray) -> str:
    """A short fingerprint of a boolean mask (its shape and voxels): equal masks, equal digests."""
    mask = np.ascontiguousarray(mask, dtype=bool)
    digest = hashlib.sha1(repr(mask.shape).encode())
    digest.update(np.packbits(mask).tobytes())
    return digest.hexdigest()[:20]


def segment_sources(segmentation_node) -> dict:
    """{segment name: {"model", "digest"}} of the segments FemurUNet wrote into the node ({} if none)."""
    text = segmentation_node.GetAttribute(SOURCES_ATTRIBUTE) if segmentation_node is not None else None
    try:
        sources = json.loads(text) if text else {}
    except ValueError:
        return {}
    return sources if isinstance(sources, dict) else {}


def record_segment_sources(node, model, labelmap: np.ndarray, labels: list) -> None:
    """Note on the node which model made each label's segment and a digest of its voxels (on the volume's grid),
    so that a later edit of the segment can be told apart from the model's output."""
    sources = segment_sources(node)
    for label in labels:
        sources[label["name"]] = {"model": model_source(model), "digest": mask_digest(labelmap == label["value"])}
    node.SetAttribute(SOURCES_ATTRIBUTE, json.dumps(sources, sort_keys=True))


def segments_provenance(segmentation_node, segment_ids, volume_node) -> dict:
    """Where the segments come from: {"models": [model files that wrote them], "edited": True (some segment
    differs from what FemurUNet wrote), False (all as written) or None (not written by FemurUNet)}."""
    sources = segment_sources(segmentation_node)
    segmentation = segmentation_node.GetSegmentation()
    models, edited = [], []
    for segment_id in segment_ids:
        segment = segmentation.GetSegment(segment_id)
        source = sources.get(segment.GetName()) if segment is not None else None
        if not isinstance(source, dict):
            edited.append(None)
            continue
        if source.get("model") not in models:
            models.append(source.get("model"))
        mask = segments_to_labelmap(segmentation_node, [segment_id], volume_node) == 1
        edited.append(mask_digest(mask) != source.get("digest"))
    if not edited or None in edited:
        changed = True if any(edited) else None
    else:
        changed = any(edited)
    return {"models": models, "edited": changed}


def plausibility_warnings(segmentation_node) -> list:
    """The plausibility warnings of the last FemurUNet run into ``segmentation_node`` ([] if none)."""
    text = segmentation_node.GetAttribute(WARNINGS_ATTRIBUTE) if segmentation_node is not None else None
    return text.splitlines() if text else []


def segment_volume_node(volume_node, model=None, segmentation_node=None, **options):
    """Segment the femur in a scalar volume node; return the segmentation node holding the femur segment(s).

    Plausibility warnings (implausible volume, pieces, HU) of the result: ``plausibility_warnings(node)``.

    ``model``: a UNet2D, a ``.pt``/``.hdf5`` path or None (demo model). ``segmentation_node``: None creates one;
    an existing node keeps its other segments and gets same-named femur segments replaced. ``options``:
    device, batch_size, threshold, autocast, progress(done, total), cancel() -> bool, closed_surface, mirror
    (also average each slice with its left-right mirror: ~2x time, a little more accurate), keep_all_pieces
    (keep labelled pieces detached from each femur; by default they are removed), min_field_mm (pad small fields of
    view to this many mm; None: the model's), confirm (a second model that must confirm each piece, as
    ``segment_volume``'s; None: none) and confirm_fraction (the share of each piece it must
    label; None: ``defaults.CONFIRM_FRACTION``), gate and gate_threshold (a level gate, as ``segment_volume``'s),
    smooth_z_mm (average each slice's probabilities with its neighbours' along the slice axis, a Gaussian of this
    many mm; None: the model's).
    On ``Cancelled`` (or any error) the scene is unchanged.
    """
    return segment_and_import(volume_node, model, segmentation_node, **options)[0]


def segments_to_labelmap(segmentation_node, segment_ids, reference_volume_node) -> np.ndarray:
    """uint8 (k, j, i) array on the reference volume's grid: segment_ids[n] -> n + 1 (later ones win overlaps)."""
    scene = _scene_of(reference_volume_node, "reference volume")
    if segmentation_node is None:
        raise FemurUNetError("no segmentation given")
    if segmentation_node.GetTransformNodeID() != reference_volume_node.GetTransformNodeID():
        raise FemurUNetError(f"segmentation '{segmentation_node.GetName()}' and volume "
                             f"'{reference_volume_node.GetName()}' are under different transforms")
    segmentation = segmentation_node.GetSegmentation()
    ids = vtk.vtkStringArray()
    for segment_id in segment_ids:
        if segmentation.GetSegment(segment_id) is None:
            raise FemurUNetError(f"segmentation '{segmentation_node.GetName()}' has no segment '{segment_id}'")
        ids.InsertNextValue(segment_id)
    if len(segment_ids) > 255:
        raise FemurUNetError("at most 255 segments fit a uint8 labelmap")
    colors_before = _node_ids(scene, "vtkMRMLColorTableNode")
    temp = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", scene.GenerateUniqueName("FemurUNet temporary"))
    temp.SetHideFromEditors(True)
    try:
        if not slicer.vtkSlicerSegmentationsModuleLogic.ExportSegmentsToLabelmapNode(
                segmentation_node, ids, temp, reference_volume_node):
            raise FemurUNetError(f"could not export segments of '{segmentation_node.GetName()}'")
        return slicer.util.arrayFromVolume(temp).astype(np.uint8, copy=True)
    finally:
        # the export adds a display node and a colour table for the temporary labelmap: remove all three
        remove_node(temp)
        for node_id in _node_ids(scene, "vtkMRMLColorTableNode") - colors_before:
            scene.RemoveNode(scene.GetNodeByID(node_id))


def _node_ids(scene, class_name: str) -> set:
    nodes = scene.GetNodesByClass(class_name)
    return {nodes.GetItemAsObject(i).GetID() for i in range(nodes.GetNumberOfItems())}


# --- Segment Editor effect ---------------------------------------------------------------------------------
def label_values_for_side(labels: list, side: Optional[str] = None) -> list:
    """Label values of a model's label records for ``side`` (None/'both': every femur label)."""
    if side in (None, "", "both"):
        return [l["value"] for l in labels]
    values = [l["value"] for l in labels if l.get("side") == side]
    if not values:
        raise FemurUNetError(f"the model has no '{side}' femur label (it has: "
                             f"{', '.join(l['name'] for l in labels)})")
    return values


def segment_oriented_image(image, model=None, side: Optional[str] = None, **options) -> tuple:
    """Run the engine on a vtkOrientedImageData (the Segment Editor's source image, any extent).

    Returns (mask: vtkOrientedImageData on the same grid and extent, 1 where the femur of ``side``
    ('left', 'right', None/'both') is, SegmentationResult with ``plausibility``). ``options`` go to
    ``segment_volume``.
    """
    array, ijk_to_ras = oriented_image_to_array(image)
    geometry = _geometry_from_ijk_to_ras(ijk_to_ras, "source volume")
    net = resolve_model(model)
    values = label_values_for_side(net.metadata["labels"], side)   # fail before the long part
    result = segment_volume(array, geometry, net, **options)
    check_result(result, array)   # result.plausibility: the whole result's report (both sides)
    mask = np.isin(result.labelmap, values).astype(np.uint8)
    matrix = vtk.vtkMatrix4x4()
    image.GetImageToWorldMatrix(matrix)
    e = image.GetExtent()
    return oriented_image_from_array(mask, _matrix_to_numpy(matrix), (e[0], e[2], e[4])), result


# --- self-test ----------------------------------------------------------------------------------------------
def self_test_case(scene, model=None, seed: int = 9000, min_dice: float = 0.8, shape=None, **options) -> dict:
    """Phantom CT -> volume node -> segment -> checks; raises AssertionError on a failed check.

    The default seed is one of the held-out evaluation phantoms (the demo model never saw it).

    Checks: femur segments named/tagged as the model's labels, segmentation geometry equal to the volume's,
    segments voxel-exact with the engine's labelmap, Dice (any femur) against the phantom truth >= min_dice.
    Returns the measurements and the nodes it made.
    """
    from .phantom import generate_case

    case = generate_case(seed, shape=shape)
    volume = array_to_volume_node(scene, case.ct, case.geometry, name=f"FemurUNetTest {case.name}")
    started = time.perf_counter()
    node, result, segment_ids = segment_and_import(volume, model, **options)
    seconds = time.perf_counter() - started
    segmentation = node.GetSegmentation()

    names = [segmentation.GetSegment(sid).GetName() for sid in segment_ids]
    expected = [l["name"] for l in result.labels]
    assert names == expected, f"segments {names}, expected {expected}"
    for sid, label in zip(segment_ids, result.labels):
        entry = get_terminology(segmentation.GetSegment(sid))
        assert entry == terminology_string(label.get("side")), f"segment '{label['name']}' terminology {entry!r}"

    reference = segmentation_geometry(node)
    vol_geometry = volume_node_to_array(volume)[1]
    assert reference is not None and reference[0] == vol_geometry and reference[1] == case.ct.shape, \
        "segmentation reference geometry differs from the volume's"

    stored = segments_to_labelmap(node, segment_ids, volume)
    values = np.array([0] + [l["value"] for l in result.labels], np.uint8)
    assert np.array_equal(values[stored], result.labelmap), "segments differ from the engine's labelmap"

    measured = {"case": case.name, "dice": dice(result.labelmap > 0, case.label > 0), "seconds": seconds,
                "voxels": int((result.labelmap > 0).sum()), "truth_voxels": int((case.label > 0).sum()),
                "volume_node": volume, "segmentation_node": node, "segment_ids": segment_ids}
    if len(result.labels) == 2:
        for label in result.labels:
            truth_value = 1 if label.get("side") == "left" else 2
            measured[f"dice_{label.get('side')}"] = dice(result.labelmap == label["value"],
                                                         case.label == truth_value)
    assert measured["dice"] >= min_dice, f"Dice {measured['dice']:.3f} < {min_dice} on {case.name}"
    return measured


def segmentation_geometry(segmentation_node):
    """(Geometry, numpy shape (k, j, i)) of a segmentation's reference image geometry, or None if unset."""
    serialized = segmentation_node.GetSegmentation().GetConversionParameter(
        slicer.vtkSegmentationConverter.GetReferenceImageGeometryParameterName())
    if not serialized:
        return None
    image = slicer.vtkOrientedImageData()
    slicer.vtkSegmentationConverter.DeserializeImageGeometry(serialized, image, False)
    array_shape = tuple(reversed(image.GetDimensions()))
    matrix = vtk.vtkMatrix4x4()
    image.GetImageToWorldMatrix(matrix)
    m = _matrix_to_numpy(matrix)
    e = image.GetExtent()
    m[:3, 3] = (m @ np.array([e[0], e[2], e[4], 1.0]))[:3]
    return Geometry.from_ijk_to_ras(m), array_shape
