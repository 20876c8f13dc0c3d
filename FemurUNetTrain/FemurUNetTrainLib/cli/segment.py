"""``femurunet segment``: CT file or DICOM folder in, labelmap / .seg.nrrd out."""
from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

from FemurUNetLib.evaluate import dice, hd95
from FemurUNetLib.fileio import atomic_outputs
from FemurUNetLib.gate import emptied_note
from FemurUNetLib.inference import provenance, segment_volume
from FemurUNetLib.phantom import write_case
from FemurUNetLib.phantom2 import generate_case
from FemurUNetLib.errors import FemurUNetError
from FemurUNetLib.plausibility import check_result
from FemurUNetLib.qc import write_qc
from FemurUNetLib.volume_io import output_kind, read_volume, write_image, write_labelmap

from FemurUNetLib.segment_options import add_segment_options, segment_keywords

from .common import TerminalLine
from .messages import print_warnings


class ProgressBar:
    """A one-line progress bar on stderr (only redrawn when the percentage changes)."""

    def __init__(self, label: str, stream=None, width: int = 30):
        self.label, self._stream, self.width, self.last = label, stream, width, -1
        self.started = time.perf_counter()

    @property
    def stream(self):
        return self._stream or sys.stderr       # the stream at the time of writing (redirected or not)

    def __call__(self, done: int, total: int) -> None:
        percent = 100 * done // max(total, 1)
        if percent == self.last:
            return
        self.last = percent
        filled = self.width * done // max(total, 1)
        rate = done / max(time.perf_counter() - self.started, 1e-9)
        TerminalLine.write(self.stream, f"\r{self.label} [{'#' * filled}{'.' * (self.width - filled)}] {done}/{total} "
                                        f"slices ({rate:.1f}/s)" + ("\n" if done >= total else ""))


def summarize(result, report) -> list:
    """Output lines: voxels and ml per label, then the plausibility check's per-side summary."""
    voxel_ml = float(np.prod(result.geometry.spacing)) / 1000.0
    counts = np.bincount(result.labelmap.ravel(), minlength=max([l["value"] for l in result.labels] + [1]) + 1)
    lines = [f"{l['name']}: {int(counts[l['value']])} voxels, {counts[l['value']] * voxel_ml:.1f} ml"
             for l in result.labels]
    return lines + report.summary_lines()


def _check_outputs(args) -> None:
    """Output names the writers know, none of them the input or another output (no careless overwrite of the CT)."""
    outputs = [args.output] + ([args.probabilities] if args.probabilities else [])
    for output in outputs:
        output_kind(output)
        if Path(output).resolve() == Path(args.input).resolve():
            raise FemurUNetError(f"{output}: this is the input; choose another output name")
    if len({Path(o).resolve() for o in outputs}) < len(outputs):
        raise FemurUNetError(f"{args.probabilities}: --probabilities must differ from the output")


def run_segment(args) -> int:
    _check_outputs(args)  # fail on a bad output name before any work
    if args.qc and not args.qc.lower().endswith(".png"):
        raise FemurUNetError(f"{args.qc}: the QC picture is a PNG; name it *.png")
    volume, geometry = read_volume(args.input, series_uid=args.series)
    result = segment_volume(volume, geometry, args.model, **segment_keywords(args),
                            return_probabilities=bool(args.probabilities),
                            progress=None if args.quiet else ProgressBar("segment"))
    with atomic_outputs():   # the labelmap, probability map and QC picture appear together, or none does
        write_labelmap(args.output, result.labelmap, result.geometry, result.labels, provenance(result, args.model))
        if args.probabilities:
            write_image(args.probabilities, result.probabilities, result.geometry)
        if args.qc:
            write_qc(args.qc, volume, result.labelmap, result.geometry, f"{Path(args.input).name}: femur by FemurUNet")
    report = check_result(result, volume)
    print("\n".join(summarize(result, report)))
    print_warnings(report.warnings)
    padded, second = result.stats["padded_field_mm"], result.stats["second_opinion"]
    fraction, gate, at = (result.stats[k] for k in ("second_opinion_fraction", "gate", "gate_threshold"))
    print(f"{result.stats['slices']} slices in {result.seconds:.1f} s on {result.device} "
          f"(batch {result.batch_size}, precision {result.stats['autocast']}"
          f"{f', small field padded to {padded:g} mm' if padded else ''}"
          f"{f', second opinion {second} at {fraction:g}' if second else ''}"
          f"{f', gate {gate} at {at:g}' if gate else ''}) -> {args.output}")
    note = emptied_note(result)
    if note:
        print(f"note: {note}")
    return 0


def run_demo(args) -> int:
    """Generate a phantom CT with known truth, segment it with the (demo) model, report Dice against truth."""
    out = Path(args.out)
    case = generate_case(args.seed, coverage="pelvis")
    ct_path, truth_path = write_case(case, out)
    result = segment_volume(case.ct, case.geometry, args.model, device=args.device,
                            progress=None if args.quiet else ProgressBar("segment"))
    seg_path = write_labelmap(out / f"{case.name}_femur_pred.seg.nrrd", result.labelmap, case.geometry, result.labels)
    truth, pred = case.label > 0, result.labelmap > 0
    print(f"phantom CT   : {ct_path} ({'x'.join(map(str, case.ct.shape[::-1]))} voxels, "
          f"spacing {' x '.join(f'{s:.2f}' for s in case.geometry.spacing)} mm)")
    print(f"segmentation : {seg_path} ({result.stats['slices']} slices in {result.seconds:.1f} s on {result.device})")
    print(f"Dice vs truth: {dice(pred, truth):.4f}  (HD95 {hd95(pred, truth, case.geometry.spacing[::-1]):.2f} mm)")
    print_warnings(check_result(result, case.ct).warnings)
    return 0


def register(subparsers) -> None:
    d = subparsers.add_parser("demo", help="segment a generated phantom CT with the demo model and score it",
                              description="Generate a synthetic pelvis CT (phantom v2) with known truth, segment it, print Dice.")
    d.add_argument("--out", default="femurunet_demo", help="output folder (default: ./femurunet_demo)")
    d.add_argument("--seed", type=int, default=9000, help="phantom seed (default 9000, never used in training)")
    d.add_argument("--model", help="model .pt (default: the shipped demo model)")
    d.add_argument("--device", default="auto")
    d.add_argument("--quiet", action="store_true")
    d.set_defaults(func=run_demo)

    p = subparsers.add_parser("segment", help="segment the femur in a CT volume",
                              description="Segment the femur in a CT (NIfTI/NRRD/MHA file or DICOM folder).")
    p.add_argument("input", help="CT volume file or DICOM folder")
    p.add_argument("output", help="labelmap .nii.gz/.nrrd/.mha, or a Slicer segmentation .seg.nrrd")
    p.add_argument("--series", metavar="UID",
                   help="the DICOM series to read when the input folder holds several (they are listed on error)")
    add_segment_options(p)
    p.add_argument("--probabilities", metavar="P.nii.gz", help="also write the probability map")
    p.add_argument("--qc", metavar="QC.png", help="also write a quality-control picture: axial, coronal and sagittal "
                                                 "slices with the femur outline, and a 3D surface (1200 x 400 px)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run_segment)
