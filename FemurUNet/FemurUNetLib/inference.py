"""Segment a CT volume slice by slice: canonical frame, window, resize, batched U-Net, labelmap on the input grid."""
from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np
import torch

from .device import autocast, autocast_dtype, pick_device
from .defaults import CONFIRM_FRACTION, GATE_THRESHOLD, MODEL_SETTINGS_MM
from .errors import Cancelled, FemurUNetError
from .geometry import Geometry, Reorientation
from .cleanup import remove_detached_pieces
from .confirm import remove_unconfirmed_pieces
from .gate import gate_scan, slice_probabilities
from .resolve import is_demo_model, model_identity, resolve_gate, resolve_model
from .transfer import SliceTransfer
from .neighbours import PictureCache, SliceStack, model_offsets
from .quantize import quantize_int8
from .smoothing import SliceSmoother
from .preprocess import from_model_output, labels_from_probabilities, min_side, to_model_input, window_hu

CPU_BATCH_SIZE = 8


@dataclass
class SegmentationResult:
    labelmap: np.ndarray                      # uint8, same shape/grid as the input volume
    geometry: Geometry
    labels: list                              # metadata label records: value, name, color
    probabilities: Optional[np.ndarray] = None  # float32 in [0, 1] (first channel), only when asked for
    device: str = "cpu"
    batch_size: int = 0
    seconds: float = 0.0
    stats: dict = field(default_factory=dict)
    plausibility: Optional[object] = None     # a plausibility.PlausibilityReport, once a caller checked it


PROVENANCE_STATS = ("threshold", "autocast", "mirror", "fast", "padded_field_mm", "keep_all_pieces", "second_opinion",
                    "second_opinion_fraction", "gate", "gate_threshold", "smooth_z_mm")


def provenance(result: SegmentationResult, model) -> dict:
    """What made ``result`` (``model``: the argument ``segment_volume`` was given), for an output file's header:
    FemurUNet's version, the model file's name and digest, the device and the settings that shaped the labels."""
    from . import __version__
    return {"femurunet": __version__, **model_identity(model), "device": result.device,
            **{key: result.stats[key] for key in PROVENANCE_STATS}}


def auto_batch_size(device: torch.device, base_filters: int, input_size: int) -> int:
    if device.type != "cuda":
        return CPU_BATCH_SIZE
    free, _ = torch.cuda.mem_get_info(device)
    per_slice = 48 * base_filters * input_size * input_size  # ~ peak activation bytes per slice in half precision
    return int(max(1, min(256, 0.5 * free // per_slice)))


def _is_out_of_memory(exc: BaseException) -> bool:
    return isinstance(exc, torch.OutOfMemoryError) or "out of memory" in str(exc).lower()


class SliceSegmenter:
    """The per-batch work, on one device: HU slices in, probabilities on the slice grid out (its threshold kept)."""

    def __init__(self, model, device: torch.device, autocast: bool = True, threshold: Optional[float] = None,
                 channels_last: bool = True, compile: bool = False, mirror: bool = False, min_side: int = 0):
        self.model, self.min_side = model, min_side
        meta = model.metadata
        self.window = (float(meta["window"]["center"]), float(meta["window"]["width"]))
        self.size = int(meta["input_size"])
        self.offsets = model_offsets(meta)
        self.threshold = float(meta["threshold"] if threshold is None else threshold)
        self.channels_last = channels_last
        self.autocast = autocast
        self.compile = compile
        self.mirror = mirror
        self.to(device)

    def to(self, device: torch.device) -> "SliceSegmenter":
        self.device = device
        self.model.to(device)
        if self.channels_last:
            self.model.to(memory_format=torch.channels_last)
        self.model.eval()
        self.int8 = self.autocast == "int8"
        self.amp_dtype = None if self.int8 else autocast_dtype(device, self.autocast)
        if device.type == "cuda":
            torch.backends.cudnn.benchmark = True
        if self.int8:
            self.compiled = quantize_int8(self.model, self.window, self.size, device)
        else:
            self.compiled = torch.compile(self.model, dynamic=False) if self.compile else None
        return self

    def _forward(self, x: torch.Tensor, pad_to: int) -> torch.Tensor:
        if self.compiled is None:
            return self.model(x)
        n = x.shape[0]
        if n < pad_to:  # keep the one static graph: pad the last, smaller batch
            fmt = torch.channels_last if self.channels_last else torch.contiguous_format
            x = torch.cat([x, x.new_zeros((pad_to - n, *x.shape[1:]))]).contiguous(memory_format=fmt)
        try:
            return self.compiled(x)[:n]
        except Exception as exc:
            if _is_out_of_memory(exc):
                raise
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
            if self.int8:
                raise FemurUNetError(f"int8 model failed to compile or run ({first}); use --precision bf16") from None
            warnings.warn(f"torch.compile failed ({first}); running the model eagerly")
            self.compiled = None
            return self.model(x[:n])

    def precision_name(self) -> str:
        return "int8" if self.int8 else str(self.amp_dtype).replace("torch.", "") if self.amp_dtype else "off"

    def _amp(self):
        return autocast(self.device, self.amp_dtype)

    @torch.inference_mode()
    def pictures(self, hu: torch.Tensor) -> torch.Tensor:
        """(N, H, W) HU (any dtype, any device) -> (N, 1, size, size) model pictures on the device: window, pad,
        resize (a model of several input slices blends its channels from these: ``neighbours``)."""
        return to_model_input(window_hu(hu.to(self.device, non_blocking=True), *self.window), self.size,
                              self.min_side)

    @torch.inference_mode()
    def __call__(self, x: torch.Tensor, height: int, width: int, pad_to: int = 0) -> torch.Tensor:
        """x: (N, C, size, size) model inputs on the device -> probabilities (N, C_out, height, width) float32 on
        the canonical slice grid (``labels_from_probabilities(probs, self.threshold)`` makes the labels).

        ``pad_to``: the batch size, so a compiled model sees one shape (a smaller last batch is zero-padded).
        """
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with self._amp():
            probs = self._forward(x, pad_to).float()
            if self.mirror:    # the seed's horizontal flip: canonical x is patient left-right
                fmt = torch.channels_last if self.channels_last else torch.contiguous_format
                mirrored = x.flip(-1).contiguous(memory_format=fmt)
                probs = (probs + self._forward(mirrored, pad_to).float().flip(-1)) / 2
        return from_model_output(probs, height, width, self.min_side)


class SliceFeed:
    """The runner's inputs for canonical slices ``ks`` of ``source`` on its device, each slice's picture made
    once (``neighbours.PictureCache``), and the copies of results back (``transfer``)."""

    def __init__(self, runner: SliceSegmenter, stack: SliceStack, source: np.ndarray, batch: int):
        self.device, self.shape = runner.device, source.shape[1:]
        self.transfer = SliceTransfer(runner.device)
        make = lambda ks: runner.pictures(self.transfer.upload(source[ks]))
        self.inputs = PictureCache(stack, make, batch).inputs


def segment_volume(volume: np.ndarray, geometry: Optional[Geometry] = None, model=None, *, device: str = "auto",
                   batch_size: Optional[int] = None, threshold: Optional[float] = None, autocast: bool = True,
                   return_probabilities: bool = False, progress: Optional[Callable[[int, int], None]] = None,
                   cancel: Optional[Callable[[], bool]] = None, channels_last: bool = True,
                   fast: bool = False, compile: bool = False, mirror: bool = False,
                   keep_all_pieces: bool = False, min_field_mm: Optional[float] = None,
                   confirm=None, confirm_fraction: Optional[float] = None, gate=None,
                   gate_threshold: Optional[float] = None, smooth_z_mm: Optional[float] = None) -> SegmentationResult:
    """Segment the femur in a 3-D CT array (numpy (k, j, i), HU) and return a uint8 labelmap on the same grid.

    ``model``: a UNet2D (with ``.metadata``), a ``.pt``/``.hdf5`` path, or None for the shipped demo model.
    ``progress(done, total)`` is called after each batch; ``cancel()`` returning True raises ``Cancelled``.
    Memory beyond the output labelmap is one batch of slices (and the smoothing's 2 x radius slices of
    probabilities): the volume is never converted to float whole.
    A model naming ``slice_offsets_mm`` gets each slice with its neighbours at those distances (``neighbours``).
    ``fast``: run the network on every other axial slice only (about 2x faster); a skipped slice gets the mean
    of its two neighbours' probabilities.
    ``autocast``: True (bf16/fp16 where the device is fast at it), False (fp32), a dtype or "int8" (``quantize``).
    ``mirror``: test-time augmentation: also run each slice mirrored left-right and average the two probability
    maps (about 2x the network time; the demo model gains 0.001 of Dice on the held-out phantoms, 0.002 on leg scans).
    ``keep_all_pieces``: keep labelled pieces detached from each femur and pieces a second model or the gate does
    not confirm (by default they are removed: ``cleanup.remove_detached_pieces``, ``confirm``; the probabilities are
    the network's, before that).
    ``confirm``: a second model (a module or a path, as ``model``) whose labels must cover ``confirm_fraction``
    (0..1; None: ``defaults.CONFIRM_FRACTION``) of each labelled piece, or the piece goes (``confirm``); None: none.
    It is loaded before any slice is segmented, so a missing file fails first.
    ``gate``: a level gate (a ``gate.LevelGate`` or its file; None: the shipped gate with the shipped demo model,
    none with another; False: none): every label goes when no slice of the scan gets ``gate_threshold`` (None:
    ``defaults.GATE_THRESHOLD``) or more from the gate (``gate.gate_scan``); loaded first.
    ``compile``: ``torch.compile`` the model (one static batch shape; a one-off compile of tens of seconds).
    ``min_field_mm``: slices whose field of view is smaller are padded with air to it before the resize (and the
    output cropped back), so small fields are seen at the scale the model knows; None: the model's
    (``min_field_mm`` in its metadata, else 0: off).
    ``smooth_z_mm``: sigma (mm) of the Gaussian along the slice axis the probabilities get before the threshold
    (``smoothing``; ``probabilities`` are those); None: the model's (its metadata's; the demo model's 3), else 0.
    On CUDA ``cudnn.benchmark`` is switched on.
    """
    started = time.perf_counter()
    volume = _checked_volume(volume)
    geometry = geometry or Geometry()
    dev = pick_device(device)
    net = resolve_model(model)
    fraction = _confirm_fraction(confirm, confirm_fraction)
    second = None if keep_all_pieces or confirm is None else resolve_model(confirm)
    level_gate = _level_gate(gate, gate_threshold, keep_all_pieces, net)
    reorient = Reorientation.for_geometry(geometry)
    min_field = _model_setting(net, "min_field_mm", min_field_mm)
    smooth_z = _model_setting(net, "smooth_z_mm", smooth_z_mm)
    runner = SliceSegmenter(net, dev, autocast, threshold, channels_last, compile, mirror,
                            min_side(min_field, reorient.canonical_spacing(geometry)))
    batch = int(batch_size or auto_batch_size(dev, net.base_filters, runner.size))
    if batch < 1:
        raise FemurUNetError(f"batch size must be at least 1, got {batch}")

    source = reorient.to_canonical(volume)
    stack = SliceStack(runner.offsets, reorient.canonical_spacing(geometry)[2], source.shape[0])
    smoother = SliceSmoother(smooth_z, reorient.canonical_spacing(geometry)[2], source.shape[0])
    labelmap = np.zeros(volume.shape, dtype=np.uint8)
    target = reorient.to_canonical(labelmap)
    probabilities = np.zeros(volume.shape, dtype=np.float32) if return_probabilities else None
    prob_target = reorient.to_canonical(probabilities) if return_probabilities else None

    if fast:
        batch = _segment_every_other_slice(runner, stack, smoother, source, target, prob_target, batch, progress,
                                           cancel)
    else:
        batch = _segment_every_slice(runner, stack, smoother, source, target, prob_target, batch, progress, cancel)
    removed = {} if keep_all_pieces else _remove_pieces(labelmap, volume, geometry, net, runner, reorient, batch,
                                                        second, fraction, level_gate)

    return SegmentationResult(labelmap=labelmap, geometry=geometry, labels=list(net.metadata["labels"]),
                              probabilities=probabilities, device=str(runner.device), batch_size=batch,
                              seconds=time.perf_counter() - started,
                              stats={"slices": source.shape[0], "threshold": runner.threshold,
                                     "autocast": runner.precision_name(),
                                     "input_size": runner.size, "min_side": runner.min_side,
                                     "padded_field_mm": min_field if runner.min_side > max(source.shape[1:]) else 0.0,
                                     **_removal_stats(removed, second, fraction, level_gate),
                                     "mirror": mirror, "fast": fast, "keep_all_pieces": keep_all_pieces,
                                     "smooth_z_mm": smooth_z})


def _checked_volume(volume) -> np.ndarray:
    volume = np.asarray(volume)
    if volume.ndim != 3 or min(volume.shape) < 1:
        raise FemurUNetError(f"expected a 3-D volume, got an array of shape {volume.shape}")
    if not (np.issubdtype(volume.dtype, np.integer) or np.issubdtype(volume.dtype, np.floating)):
        raise FemurUNetError(f"expected a scalar CT volume in HU, got dtype {volume.dtype}")
    return volume


def _model_setting(net, key: str, value: Optional[float]) -> float:
    """A keyword of ``MODEL_SETTINGS_MM``: the model's metadata's when it is None (else 0: off), checked."""
    most, what = MODEL_SETTINGS_MM[key]
    value = float(net.metadata.get(key, 0.0) if value is None else value)
    if not 0 <= value <= most:
        raise FemurUNetError(f"{what} must be 0..{most:g} mm, got {value:g}")
    return value


def _remove_pieces(labelmap: np.ndarray, volume: np.ndarray, geometry: Geometry, net, runner: SliceSegmenter,
                   reorient: Reorientation, batch: int, second=None, fraction: float = CONFIRM_FRACTION,
                   gate=(None, GATE_THRESHOLD)) -> dict:
    """The default post-processing, in place: detached pieces, then pieces of which the second model (None: none)
    labels less than ``fraction``, then every label when the gate (``(LevelGate or None, threshold)``) passes no
    level of the scan; returns the voxels each removed (and the gate's highest level P)."""
    labels = net.metadata["labels"]
    removed = {"detached": remove_detached_pieces(labelmap, volume, geometry, labels)}
    if second is not None:
        confirmed = np.zeros(labelmap.shape, dtype=bool)
        _second_opinion(second, runner, reorient.canonical_spacing(geometry)[2], reorient.to_canonical(volume),
                        reorient.to_canonical(labelmap), reorient.to_canonical(confirmed), batch)
        removed["unconfirmed"] = remove_unconfirmed_pieces(labelmap, confirmed, volume, geometry, labels, fraction)
    level_gate, threshold = gate
    if level_gate is not None and labelmap.any():
        p = slice_probabilities(level_gate, reorient.to_canonical(volume), reorient.canonical_spacing(geometry))
        removed["gated"], removed["gate_highest_p"] = gate_scan(labelmap, p, threshold), float(p.max())
    return removed


def _confirm_fraction(confirm, fraction: Optional[float]) -> float:
    """The share of each piece a second model must label: checked before any slice is segmented."""
    if fraction is None:
        return CONFIRM_FRACTION
    if confirm is None:
        raise FemurUNetError("a second-opinion fraction needs a second model (--second-opinion / confirm)")
    if not 0.0 <= fraction <= 1.0:
        raise FemurUNetError(f"the second-opinion fraction must be 0..1, got {fraction}")
    return float(fraction)


def _removal_stats(removed: dict, second, fraction: float, level_gate: tuple) -> dict:
    """What the post-processing removed, and with which second model and gate."""
    gate, threshold = level_gate
    return {"detached_voxels_removed": removed.get("detached", 0),
            "unconfirmed_voxels_removed": removed.get("unconfirmed", 0),
            "second_opinion": _file_name(second), "second_opinion_fraction": fraction if second is not None else None,
            "gate": _file_name(gate), "gate_threshold": threshold if gate is not None else None,
            "gate_highest_p": removed.get("gate_highest_p"), "gated_voxels_removed": removed.get("gated", 0)}


def _level_gate(gate, threshold: Optional[float], keep_all_pieces: bool, net) -> tuple:
    """(LevelGate or None, threshold), checked and loaded before any slice is segmented."""
    if threshold is not None and (gate is False or (gate is None and not is_demo_model(net))):
        raise FemurUNetError("a gate threshold needs a gate (--gate; the demo model's by default)")
    threshold = GATE_THRESHOLD if threshold is None else threshold
    if not 0.0 <= threshold <= 1.0:
        raise FemurUNetError(f"the gate threshold must be 0..1, got {threshold}")
    return None if keep_all_pieces else resolve_gate(gate, net), float(threshold)


def _file_name(model) -> Optional[str]:
    """A model's file name for the record (None: no model; "(in memory)": a module not loaded from a file)."""
    if model is None:
        return None
    return model.source_file.name if getattr(model, "source_file", None) else "(in memory)"


def _second_opinion(model, like: SliceSegmenter, spacing_mm: float, source: np.ndarray, target: np.ndarray,
                    confirmed: np.ndarray, batch: int) -> None:
    """``model``'s labels into ``confirmed`` (canonical, bool) on the slices where ``target`` holds labels, run as
    ``like`` runs (device, precision, mirror, padding to a small field)."""
    runner = SliceSegmenter(model, like.device, like.autocast, None, like.channels_last, False, like.mirror,
                            like.min_side)
    feed = SliceFeed(runner, SliceStack(runner.offsets, spacing_mm, source.shape[0]), source, batch)
    ks = np.flatnonzero(target.any(axis=(1, 2)))
    for start in range(0, len(ks), batch):
        chunk = ks[start:start + batch]
        labels = labels_from_probabilities(runner(feed.inputs(chunk), *feed.shape, batch), runner.threshold)
        confirmed[chunk] = labels.cpu().numpy() > 0


def _segment_every_slice(runner: SliceSegmenter, stack: SliceStack, smoother: SliceSmoother, source: np.ndarray,
                         target: np.ndarray, prob_target: Optional[np.ndarray], batch: int, progress, cancel) -> int:
    """The slice loop: batches up, labels (and probabilities) back into ``target`` as the smoother finishes them;
    returns the final batch size. On CUDA a batch's results are copied back while the next batch computes."""
    total, done = source.shape[0], 0
    pending = None
    feed = SliceFeed(runner, stack, source, batch)
    while done < total:
        if cancel is not None and cancel():
            raise Cancelled("segmentation cancelled; nothing was written")
        stop = min(total, done + batch)
        if feed.device != runner.device:          # the CPU took over after out-of-memory
            feed = SliceFeed(runner, stack, source, batch)
        try:
            probs = runner(feed.inputs(np.arange(done, stop)), *feed.shape, batch)
        except (torch.OutOfMemoryError, RuntimeError) as exc:
            if not _is_out_of_memory(exc):
                raise
            batch = _back_off(runner, batch, exc)
            continue
        pending = _queue_finished(pending, smoother.push(done, probs), runner, feed.transfer, target, prob_target)
        done = stop
        if progress is not None:
            progress(done, total)
    if pending is not None:
        _store(pending, target, prob_target)
    return batch


def _back_off(runner: SliceSegmenter, batch: int, exc: BaseException) -> int:
    """Out of memory: halve the batch; at batch 1 on an accelerator, continue on the CPU."""
    if runner.device.type == "cuda":
        torch.cuda.empty_cache()
    if batch > 1:
        warnings.warn(f"out of memory on {runner.device} at batch size {batch}; retrying with {batch // 2}")
        return batch // 2
    if runner.device.type != "cpu":
        warnings.warn(f"out of memory on {runner.device} even at batch size 1; continuing on the CPU")
        runner.to(torch.device("cpu"))
        return CPU_BATCH_SIZE
    raise FemurUNetError("out of memory on the CPU even at batch size 1") from exc


def _queue_finished(pending, finished, runner: SliceSegmenter, transfer: SliceTransfer, target: np.ndarray,
                    prob_target: Optional[np.ndarray]):
    """Threshold and queue the slices the smoother finished (``(first, probabilities)``; None: none yet); returns
    what is pending now (``_queue``)."""
    if finished is None:
        return pending
    first, probs = finished
    labels = labels_from_probabilities(probs, runner.threshold)
    return _queue(pending, (first, first + labels.shape[0], transfer.download("labels", labels),
                            transfer.download("probabilities", None if prob_target is None else probs[:, 0])),
                  runner.device, target, prob_target)


def _queue(pending, new, device: torch.device, target: np.ndarray, prob_target: Optional[np.ndarray]):
    """Store the batch queued before and queue ``new``; on CUDA ``new`` stays pending (its copy back overlaps the
    next batch's compute), elsewhere it is stored at once. Returns what is pending now."""
    if pending is not None:
        _store(pending, target, prob_target)
    if device.type == "cuda":
        return new
    _store(new, target, prob_target)
    return None


def _store(pending, target: np.ndarray, prob_target: Optional[np.ndarray]) -> None:
    start, stop, (labels, event), probs = pending
    if event is not None:
        event.synchronize()
    target[start:stop] = labels.numpy()
    if prob_target is not None:
        prob_map, prob_event = probs
        if prob_event is not None:
            prob_event.synchronize()
        prob_target[start:stop] = prob_map.numpy()


def _segment_every_other_slice(runner: SliceSegmenter, stack: SliceStack, smoother: SliceSmoother, source: np.ndarray,
                               target: np.ndarray, prob_target: Optional[np.ndarray], batch: int, progress,
                               cancel) -> int:
    """``fast``: predict slices 0, 2, 4, ... (and the last); fill each skipped slice from its neighbours' mean.
    The fills and the thresholds are computed where the network ran; only the labels (and the probabilities when
    asked for) come back, as in the slice loop."""
    total = source.shape[0]
    predicted = list(range(0, total, 2)) + ([total - 1] if (total - 1) % 2 else [])
    previous, pos, pending = None, 0, None
    feed = SliceFeed(runner, stack, source, batch)
    while pos < len(predicted):
        if cancel is not None and cancel():
            raise Cancelled("segmentation cancelled; nothing was written")
        ks = predicted[pos:pos + batch]
        if feed.device != runner.device:          # the CPU took over after out-of-memory
            feed = SliceFeed(runner, stack, source, batch)
            if previous is not None:
                previous = (previous[0], previous[1].to(runner.device))
        try:
            probs = runner(feed.inputs(ks), *feed.shape, batch)
        except (torch.OutOfMemoryError, RuntimeError) as exc:
            if not _is_out_of_memory(exc):
                raise
            batch = _back_off(runner, batch, exc)
            continue
        pending = _queue_finished(pending, smoother.push(*_with_filled_gaps(ks, probs, previous)), runner,
                                  feed.transfer, target, prob_target)
        previous = (ks[-1], probs[-1])
        pos += len(ks)
        if progress is not None:
            progress(min(total, ks[-1] + 1), total)
    if pending is not None:
        _store(pending, target, prob_target)
    return batch


def _with_filled_gaps(ks, probs: torch.Tensor, previous) -> tuple:
    """(first slice, probabilities of slices first..ks[-1]): the predicted ``ks`` with each skipped slice between
    two of them (or after ``previous``, the last predicted slice before) the mean of its two neighbours."""
    first = ks[0] - 1 if previous is not None and ks[0] - previous[0] == 2 else ks[0]
    rows = []
    for k, p in zip(ks, probs):
        if previous is not None and k - previous[0] == 2:
            rows.append((previous[1] + p) / 2)
        rows.append(p)
        previous = (k, p)
    return first, torch.stack(rows)
