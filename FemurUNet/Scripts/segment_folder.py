"""Segment the femur in every CT of a folder (or in listed files) without a GUI.

    Slicer --no-main-window --python-script segment_folder.py --input DIR_OR_FILES... --output DIR [--model M.pt]

Writes ``<case>.seg.nrrd`` per CT and ``femurunet_results.csv`` (case, femur voxels, volume ml, seconds, status,
error, plausibility warnings joined by " | ") into the output folder and prints each warning on stderr; with
``--qc`` also ``<case>_qc.png`` per case and ``index.html``, a contact sheet of all cases; exits 1
(naming the cases) if any case failed, 2 on bad arguments. Runs under Slicer or any Python with the slicer-core
wheel; without Slicer use ``femurunet segment-folder`` (the same selection and CSV, resumable, and
split over processes / GPUs / nodes by torchrun).

Not every image in a folder is a CT: Slicer segmentations (``.seg.nrrd``), label volumes (an integer volume with
at most 64 distinct non-negative values, e.g. ``*_femur.nii.gz`` from ``femurunet sample``) and hidden files (an
unfinished write) are skipped, as are names outside ``--include`` / inside ``--exclude`` (glob patterns on the
file or folder name). Each skipped file is printed and listed in the CSV with status ``skipped`` and the reason.
"""
import argparse
import signal
import sys
import time
from pathlib import Path

# source tree and installed extension alike: FemurUNetLib sits one folder up from Scripts/
_LIB_FOLDER = Path(globals().get("__file__") or sys.argv[0]).resolve().parents[1]
if (_LIB_FOLDER / "FemurUNetLib").is_dir() and str(_LIB_FOLDER) not in sys.path:
    sys.path.insert(0, str(_LIB_FOLDER))

# MRML-free parts shared with ``femurunet segment-folder`` (one definition): input selection, names, CSV, index
from FemurUNetLib.segment_options import add_segment_options, segment_keywords  # noqa: E402
from FemurUNetLib.batch import (RESULTS_NAME, case_name, error_text, find_inputs, finish_row, new_row,  # noqa: E402
                                output_name, qc_name, report, select_inputs, skipped_rows, write_csv, write_index)

__all__ = ["RESULTS_NAME", "case_name", "find_inputs", "main", "parse_args", "segment_files", "select_inputs"]


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="segment_folder.py", description=__doc__.splitlines()[0])
    parser.add_argument("--input", nargs="+", required=True, metavar="DIR_OR_FILE",
                        help="CT files, folders of CT files, or DICOM series folders")
    parser.add_argument("--output", required=True, metavar="DIR", help="folder for the .seg.nrrd files and the CSV")
    add_segment_options(parser, fast=False)
    parser.add_argument("--no-surface", action="store_true", help="skip the closed-surface representation")
    parser.add_argument("--qc", action="store_true",
                        help="also write <case>_qc.png per case (slices with the outline, 3D surface) and index.html, "
                             "a contact sheet of the folder with volumes and warnings")
    parser.add_argument("--include", nargs="+", default=[], metavar="PATTERN",
                        help="segment only files/folders whose name matches one of these globs, e.g. '*_ct.nii.gz'")
    parser.add_argument("--exclude", nargs="+", default=[], metavar="PATTERN",
                        help="skip files/folders whose name matches one of these globs, e.g. '*_femur.nii.gz'")
    return parser.parse_args(argv)


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
    import slicer
    from FemurUNetLib import mrml
    from FemurUNetLib.resolve import resolve_model

    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    net = resolve_model(model)   # once, not per case
    scene = getattr(slicer, "mrmlScene", None) or slicer.vtkMRMLScene()
    rows = []
    for index, path in enumerate(inputs, 1):
        row = new_row(path)
        case = row["case"]
        started = time.perf_counter()
        nodes_before = {scene.GetNthNode(i).GetID() for i in range(scene.GetNumberOfNodes())}
        try:
            volume = load_ct(scene, path)
            node, result, _ = mrml.segment_and_import(volume, net, **options)
            out = save_segmentation(scene, node, output_dir / output_name(case))
            if qc:
                from FemurUNetLib.qc import write_qc
                ct, _ = mrml.volume_node_to_array(volume)
                write_qc(output_dir / qc_name(case), ct, result.labelmap, result.geometry, f"{path.name}: femur")
            finish_row(row, out, result)
        except Exception as exc:   # one bad case must not stop the batch
            row["error"] = error_text(exc)
        finally:
            row["seconds"] = f"{time.perf_counter() - started:.2f}"
            for i in reversed(range(scene.GetNumberOfNodes())):   # leave the scene as found
                added = scene.GetNthNode(i)
                if added is not None and added.GetID() not in nodes_before:
                    scene.RemoveNode(added)
        report(row, index, len(inputs))
        rows.append(row)
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
        rows = segment_files(inputs, args.output, args.model, closed_surface=not args.no_surface, qc=args.qc,
                             **segment_keywords(args))
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
