"""Segment the femur in every CT of a folder (or in listed files) without a GUI.

    Slicer --no-main-window --python-script segment_folder.py --input DIR_OR_FILES... --output DIR [--model M.pt]

Writes ``<case>.seg.nrrd`` per CT and ``femurunet_results.csv`` (case, femur voxels, volume ml, seconds, status,
error, plausibility warnings joined by " | ") into the output folder and prints each warning on stderr; with
``--qc`` also ``<case>_qc.png`` per case and ``index.html``, a contact sheet of all cases; exits 1
(naming the cases) if any case failed, 2 on bad arguments. Runs under Slicer or any Python with the slicer-core
wheel; without Slicer use ``femurunet segment`` per file.

Not every image in a folder is a CT: Slicer segmentations (``.seg.nrrd``), label volumes (an integer volume with
at most 64 distinct non-negative values, e.g. ``*_femur.nii.gz`` from ``femurunet sample``) and hidden files (an
unfinished write) are skipped, as are names outside ``--include`` / inside ``--exclude`` (glob patterns on the
file or folder name). Each skipped file is printed and listed in the CSV with status ``skipped`` and the reason.
"""
import argparse
import csv
import fnmatch
import io
import os
import signal
import sys
import time
import traceback
from pathlib import Path

# source tree and installed extension alike: FemurUNetLib sits one folder up from Scripts/
_LIB_FOLDER = Path(globals().get("__file__") or sys.argv[0]).resolve().parents[1]
if (_LIB_FOLDER / "FemurUNetLib").is_dir() and str(_LIB_FOLDER) not in sys.path:
    sys.path.insert(0, str(_LIB_FOLDER))

CT_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd", ".dcm")
RESULTS_NAME = "femurunet_results.csv"
CSV_FIELDS = ("case", "input", "output", "femur_voxels", "volume_ml", "seconds", "status", "error", "warnings")
LABEL_MAX_VALUES = 64        # an integer volume with this few distinct values >= 0 is a label, not a CT
LABEL_SAMPLE = 2_000_000     # voxels looked at to count them (every n-th)


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="segment_folder.py", description=__doc__.splitlines()[0])
    parser.add_argument("--input", nargs="+", required=True, metavar="DIR_OR_FILE",
                        help="CT files, folders of CT files, or DICOM series folders")
    parser.add_argument("--output", required=True, metavar="DIR", help="folder for the .seg.nrrd files and the CSV")
    parser.add_argument("--model", help="model .pt or Keras .hdf5 (default: the demo model)")
    parser.add_argument("--device", default="auto", help="auto (default), cpu, cuda, cuda:N, mps")
    parser.add_argument("--batch-size", type=int, help="slices per batch (default: automatic)")
    parser.add_argument("--threshold", type=float, help="probability threshold (default: the model's)")
    parser.add_argument("--no-surface", action="store_true", help="skip the closed-surface representation")
    parser.add_argument("--mirror", action="store_true",
                        help="also run each slice mirrored left-right and average (~2x time, a little more accurate)")
    parser.add_argument("--qc", action="store_true",
                        help="also write <case>_qc.png per case (slices with the outline, 3D surface) and index.html, "
                             "a contact sheet of the folder with volumes and warnings")
    parser.add_argument("--include", nargs="+", default=[], metavar="PATTERN",
                        help="segment only files/folders whose name matches one of these globs, e.g. '*_ct.nii.gz'")
    parser.add_argument("--exclude", nargs="+", default=[], metavar="PATTERN",
                        help="skip files/folders whose name matches one of these globs, e.g. '*_femur.nii.gz'")
    return parser.parse_args(argv)


def _is_ct_file(path: Path) -> bool:
    name = path.name.lower()
    return name.endswith(CT_SUFFIXES) and not name.endswith(".seg.nrrd")


def _is_dicom_folder(path: Path) -> bool:
    files = [p for p in path.iterdir() if p.is_file()]
    if not files or any(_is_ct_file(p) and not p.name.lower().endswith(".dcm") for p in files):
        return False
    with open(files[0], "rb") as f:
        return f.read(132)[128:132] == b"DICM"


def find_inputs(paths, include=(), exclude=()) -> list:
    """CT files and DICOM series folders: files as given, folders searched one level deep, in name order."""
    return select_inputs(paths, include, exclude)[0]


def _candidates(paths) -> list:
    """Image files and DICOM series folders: files as given, folders searched one level deep, in name order."""
    found = []
    for path in map(Path, paths):
        if path.is_file():
            found.append(path)
        elif path.is_dir():
            if _is_dicom_folder(path):
                found.append(path)
                continue
            for child in sorted(path.iterdir()):
                name = child.name.lower()
                if child.is_file() and name.endswith(CT_SUFFIXES) and not name.endswith(".dcm"):
                    found.append(child)
                elif child.is_dir() and not child.name.startswith(".") and _is_dicom_folder(child):
                    found.append(child)
        else:
            raise FileNotFoundError(f"{path}: no such file or folder")
    return found


def select_inputs(paths, include=(), exclude=()) -> tuple:
    """(CTs to segment, [(path, why it is skipped)]): segmentations, label volumes, hidden files and names
    outside ``include`` / inside ``exclude`` (glob patterns on the name) are skipped."""
    inputs, skipped = [], []
    for path in _candidates(paths):
        why = _skip_reason(path, include, exclude)
        if why:
            skipped.append((path, why))
        else:
            inputs.append(path)
    return inputs, skipped


def _skip_reason(path: Path, include, exclude) -> str:
    name = path.name
    if name.startswith("."):
        return "hidden file (an unfinished or temporary write?)"
    if include and not any(fnmatch.fnmatchcase(name, p) for p in include):
        return f"not matched by --include {' '.join(include)}"
    for pattern in exclude:
        if fnmatch.fnmatchcase(name, pattern):
            return f"matched by --exclude {pattern}"
    if name.lower().endswith(".seg.nrrd"):
        return "a Slicer segmentation (.seg.nrrd), not a CT"
    return "" if path.is_dir() else label_reason(path)


def label_reason(path: Path) -> str:
    """'a label volume (...)' when ``path`` is an integer volume with only a few distinct values >= 0, else ''
    (a CT, or a file that cannot be read: its failure is reported when it is segmented)."""
    import numpy as np
    import SimpleITK as sitk
    shown = sitk.ProcessObject.GetGlobalWarningDisplay()
    sitk.ProcessObject.SetGlobalWarningDisplay(False)
    try:
        reader = sitk.ImageFileReader()
        reader.SetFileName(str(path))
        reader.ReadImageInformation()
        kind = sitk.GetPixelIDValueAsString(reader.GetPixelID())
        if "integer" not in kind or reader.GetNumberOfComponents() != 1:
            return ""
        image = reader.Execute()
    except RuntimeError:
        return ""
    finally:
        sitk.ProcessObject.SetGlobalWarningDisplay(shown)
    voxels = sitk.GetArrayViewFromImage(image).ravel()   # a view: ``image`` must live on meanwhile
    values = np.unique(voxels[::max(1, voxels.size // LABEL_SAMPLE)])
    if len(values) > LABEL_MAX_VALUES or values.min() < 0:
        return ""
    listed = ", ".join(str(v) for v in values[:5]) + (", ..." if len(values) > 5 else "")
    return f"a label volume ({kind}, {len(values)} distinct values: {listed}), not a CT"


def case_name(path: Path) -> str:
    name = path.name
    for suffix in (".seg.nrrd",) + CT_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def load_ct(scene, path: Path):
    """A scalar volume node: files through Slicer's volume reader, DICOM folders through SimpleITK."""
    import slicer
    if path.is_dir():
        from FemurUNetLib import mrml
        from FemurUNetLib.volume_io import read_volume
        array, geometry = read_volume(path)
        return mrml.array_to_volume_node(scene, array, geometry, case_name(path))
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", scene.GenerateUniqueName(case_name(path)))
    storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
    storage.SetFileName(str(path))
    if not storage.ReadData(node):
        scene.RemoveNode(node)
        raise RuntimeError(f"{path}: cannot read as a volume")
    return node


def save_segmentation(scene, node, path: Path) -> Path:
    """Write ``node`` as a .seg.nrrd, atomically and checked (a partial file never has the final name, a full disk
    never leaves a truncated file: VTK's writer, like ITK's, reports success on a short write)."""
    import slicer
    from FemurUNetLib.fileio import WriteFailed, atomic_write
    from FemurUNetLib.outputcheck import check_image_file

    def write(tmp):
        storage = slicer.vtkMRMLSegmentationStorageNode()
        storage.SetFileName(str(tmp))
        if not storage.WriteData(node):
            raise WriteFailed("the segmentation writer failed")
        check_image_file(tmp)
    return atomic_write(path, write, ".seg.nrrd")


def segment_files(inputs, output_dir, model=None, qc: bool = False, **options) -> list:
    """Segment each CT into ``output_dir``; returns one CSV row (dict) per case, failures included. ``qc``: also
    write ``<case>_qc.png``."""
    import numpy as np
    import slicer
    from FemurUNetLib import mrml
    from FemurUNetLib.resolve import resolve_model

    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    net = resolve_model(model)   # once, not per case
    scene = getattr(slicer, "mrmlScene", None) or slicer.vtkMRMLScene()
    rows = []
    for index, path in enumerate(inputs, 1):
        case = case_name(path)
        row = {"case": case, "input": str(path), "output": "", "femur_voxels": "", "volume_ml": "",
               "seconds": "", "status": "failed", "error": "", "warnings": ""}
        started = time.perf_counter()
        nodes_before = {scene.GetNthNode(i).GetID() for i in range(scene.GetNumberOfNodes())}
        try:
            volume = load_ct(scene, path)
            node, result, _ = mrml.segment_and_import(volume, net, **options)
            out = save_segmentation(scene, node, output_dir / f"{case}.seg.nrrd")
            if qc:
                from FemurUNetLib.qc import write_qc
                ct, _ = mrml.volume_node_to_array(volume)
                write_qc(output_dir / qc_name(case), ct, result.labelmap, result.geometry, f"{path.name}: femur")
            voxels = int(np.count_nonzero(result.labelmap))
            row.update(output=str(out), femur_voxels=voxels,
                       volume_ml=f"{voxels * float(np.prod(result.geometry.spacing)) / 1000.0:.2f}", status="ok",
                       warnings=" | ".join(result.plausibility.warnings))
        except Exception as exc:   # one bad case must not stop the batch
            row["error"] = f"{type(exc).__name__}: {exc}".replace("\n", " ")
            print(f"[{index}/{len(inputs)}] {case}: FAILED: {row['error']}", file=sys.stderr)
            if os.environ.get("FEMURUNET_DEBUG"):
                traceback.print_exc()
        finally:
            row["seconds"] = f"{time.perf_counter() - started:.2f}"
            for i in reversed(range(scene.GetNumberOfNodes())):   # leave the scene as found
                added = scene.GetNthNode(i)
                if added is not None and added.GetID() not in nodes_before:
                    scene.RemoveNode(added)
        if row["status"] == "ok":
            print(f"[{index}/{len(inputs)}] {case}: {row['femur_voxels']} femur voxels, {row['volume_ml']} ml, "
                f"{row['seconds']} s -> {row['output']}")
            for warning in row["warnings"].split(" | ") if row["warnings"] else []:
                print(f"[{index}/{len(inputs)}] {case}: warning: {warning}", file=sys.stderr)
        rows.append(row)
    return rows


def qc_name(case: str) -> str:
    return f"{case}_qc.png"


def write_index(rows, output_dir: Path) -> Path:
    """index.html: one row per input (case, status, femur ml, warnings or error) with its QC picture."""
    import html
    from FemurUNetLib.fileio import atomic_write
    lines = ["<!DOCTYPE html><html><head><meta charset='utf-8'><title>FemurUNet results</title>",
             "<style>body{font-family:sans-serif}td{vertical-align:top;padding:4px}img{width:600px}</style></head>",
             "<body><h1>FemurUNet results</h1><table><tr><th>case</th><th>status</th><th>femur ml</th>"
             "<th>warnings / error</th><th>QC picture</th></tr>"]
    for row in rows:
        picture = output_dir / qc_name(row["case"])
        cell = (f"<a href='{html.escape(picture.name)}'><img src='{html.escape(picture.name)}' alt='QC of "
                f"{html.escape(row['case'])}'></a>" if row["status"] == "ok" and picture.is_file() else "")
        notes = html.escape(row["warnings"] or row["error"])
        lines.append(f"<tr><td>{html.escape(row['case'])}</td><td>{row['status']}</td><td>{row['volume_ml']}</td>"
                     f"<td>{notes}</td><td>{cell}</td></tr>")
    lines.append("</table></body></html>")
    text = "\n".join(lines) + "\n"
    return atomic_write(output_dir / "index.html", lambda tmp: Path(tmp).write_text(text, encoding="utf-8"), ".html")


def write_csv(rows, path: Path) -> Path:
    from FemurUNetLib.fileio import atomic_write
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=CSV_FIELDS)
    writer.writeheader()
    writer.writerows(rows)
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text.getvalue(), newline=""), ".csv")


def skipped_rows(skipped) -> list:
    """CSV rows (status ``skipped``, the reason in ``error``) for the inputs that are not segmented."""
    rows = []
    for path, why in skipped:
        rows.append({"case": case_name(path), "input": str(path), "output": "", "femur_voxels": "", "volume_ml": "",
                     "seconds": "", "status": "skipped", "error": why, "warnings": ""})
    return rows


def main(argv=None) -> int:
    if hasattr(signal, "SIGXFSZ"):   # past the file size limit: an error from the write, not a killed process
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    try:
        args = parse_args(sys.argv[1:] if argv is None else argv)
    except SystemExit as exc:   # argparse: usage error (2) or --help (0)
        return int(exc.code or 0)
    try:
        inputs, skipped = select_inputs(args.input, args.include, args.exclude)
    except OSError as exc:
        print(f"segment_folder: error: {exc}", file=sys.stderr)
        return 2
    for path, why in skipped:
        print(f"skipped {path.name}: {why}")
    if not inputs:
        note = f" ({len(skipped)} skipped: {'; '.join(f'{p.name}: {why}' for p, why in skipped)})" if skipped else ""
        print(f"segment_folder: error: no CT files in {' '.join(args.input)}{note}", file=sys.stderr)
        return 2
    try:
        rows = segment_files(inputs, args.output, args.model, device=args.device, batch_size=args.batch_size,
                             threshold=args.threshold, closed_surface=not args.no_surface, mirror=args.mirror,
                             qc=args.qc)
    except Exception as exc:   # no torch, unusable model or output folder: nothing was segmented
        print(f"segment_folder: error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    try:
        csv_path = write_csv(rows + skipped_rows(skipped), Path(args.output) / RESULTS_NAME)
        if args.qc:
            print(f"contact sheet: {write_index(rows + skipped_rows(skipped), Path(args.output))}")
    except Exception as exc:   # disk full, read-only folder: the CSV is not there (no partial one either)
        print(f"segment_folder: error: {exc}", file=sys.stderr)
        return 2
    failed = [row["case"] for row in rows if row["status"] != "ok"]
    also = f", {len(skipped)} file(s) skipped (not CTs)" if skipped else ""
    print(f"{len(rows) - len(failed)}/{len(rows)} cases segmented{also}; results in {csv_path}")
    if failed:
        print(f"segment_folder: {len(failed)} case(s) failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


def _exit(code: int) -> None:
    try:
        import slicer
        app = getattr(slicer, "app", None)
    except ImportError:
        app = None
    if app is not None:
        slicer.util.exit(code)   # lets Slicer shut down cleanly with this exit code
    else:
        sys.exit(code)


if __name__ == "__main__":
    _exit(main())
