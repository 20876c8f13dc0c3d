"""A folder of CTs in, one result per case out: what the Slicer batch script (``Scripts/segment_folder.py``) and
``femurunet segment-folder`` share, so both have one definition of it.

Input discovery and selection (CT files and DICOM series folders; segmentations, label volumes, hidden files and
names outside ``include`` / inside ``exclude`` are skipped with a reason), case names, the results CSV and its
contact sheet, and the plain-Python (MRML-free) segmentation of one case into ``<case>.seg.nrrd``. A case that
fails is a row with status ``failed`` and a one-line error; it never stops the others. Light to import: NumPy,
SimpleITK and PyTorch load on first use.
"""
from __future__ import annotations

import contextlib
import csv
import fnmatch
import io
import math
import os
import sys
import time
import traceback
from pathlib import Path

CT_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd", ".dcm")
RESULTS_NAME = "femurunet_results.csv"
CSV_FIELDS = ("case", "input", "output", "femur_voxels", "volume_ml", "seconds", "status", "error", "warnings")
LABEL_MAX_VALUES = 64        # an integer volume with this few distinct values >= 0 is a label, not a CT
LABEL_SAMPLE = 2_000_000     # voxels looked at to count them (every n-th)
DONE_EARLIER = "done earlier"   # status of a case whose output a previous run wrote (its row kept)
FINISHED = ("ok", DONE_EARLIER)
PART_GLOB = "femurunet_results.part*.csv"   # per-process rows of a sharded run, merged (and removed) at its end


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


@contextlib.contextmanager
def _quiet_itk():
    """SimpleITK's own warnings off while a header is probed (a failure is reported by who reads the file)."""
    import SimpleITK as sitk
    shown = sitk.ProcessObject.GetGlobalWarningDisplay()
    sitk.ProcessObject.SetGlobalWarningDisplay(False)
    try:
        yield
    finally:
        sitk.ProcessObject.SetGlobalWarningDisplay(shown)


def _header(path: Path):
    """An ImageFileReader of ``path`` with its header read (RuntimeError when it cannot be)."""
    import SimpleITK as sitk
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    reader.ReadImageInformation()
    return reader


def label_reason(path: Path) -> str:
    """'a label volume (...)' when ``path`` is an integer volume with only a few distinct values >= 0, else ''
    (a CT, or a file that cannot be read: its failure is reported when it is segmented)."""
    import numpy as np
    import SimpleITK as sitk
    with _quiet_itk():
        try:
            reader = _header(path)
            kind = sitk.GetPixelIDValueAsString(reader.GetPixelID())
            if "integer" not in kind or reader.GetNumberOfComponents() != 1:
                return ""
            image = reader.Execute()
        except RuntimeError:
            return ""
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


def qc_name(case: str) -> str:
    return f"{case}_qc.png"


def output_name(case: str) -> str:
    return f"{case}.seg.nrrd"


def new_row(path: Path, status: str = "failed", error: str = "") -> dict:
    """A CSV row for ``path`` with nothing measured yet."""
    return {"case": case_name(path), "input": str(path), "output": "", "femur_voxels": "", "volume_ml": "",
            "seconds": "", "status": status, "error": error, "warnings": ""}


def skipped_rows(skipped) -> list:
    """CSV rows (status ``skipped``, the reason in ``error``) for the inputs that are not segmented."""
    return [new_row(path, "skipped", why) for path, why in skipped]


def finish_row(row: dict, output, result) -> dict:
    """``row`` of a segmented case: output, femur voxels and ml, status ok, the plausibility warnings."""
    import numpy as np
    voxels = int(np.count_nonzero(result.labelmap))
    row.update(output=str(output), femur_voxels=voxels, status="ok",
               volume_ml=f"{voxels * float(np.prod(result.geometry.spacing)) / 1000.0:.2f}",
               warnings=" | ".join(result.plausibility.warnings))
    return row


def error_text(exc: BaseException) -> str:
    """The one-line CSV / terminal form of a case's failure (the traceback too when FEMURUNET_DEBUG is set)."""
    if os.environ.get("FEMURUNET_DEBUG"):
        traceback.print_exception(type(exc), exc, exc.__traceback__)
    return f"{type(exc).__name__}: {exc}".replace("\n", " ")


def report(row: dict, index: int, total: int, prefix: str = "") -> None:
    """A case's terminal lines: the result on stdout, its warnings or its failure on stderr."""
    where = f"{prefix}[{index}/{total}] {row['case']}"
    if row["status"] == "ok":
        print(f"{where}: {row['femur_voxels']} femur voxels, {row['volume_ml']} ml, {row['seconds']} s "
              f"-> {row['output']}", flush=True)
        for warning in row["warnings"].split(" | ") if row["warnings"] else []:
            print(f"{where}: warning: {warning}", file=sys.stderr, flush=True)
    elif row["status"] == DONE_EARLIER:
        print(f"{where}: done earlier ({row['femur_voxels']} femur voxels, {row['volume_ml']} ml) -> "
              f"{row['output']}", flush=True)
    else:
        print(f"{where}: FAILED: {row['error']}", file=sys.stderr, flush=True)


def segment_case(path: Path, output_dir, model, qc: bool = False, **options) -> dict:
    """Plain Python (no MRML): the CT file or DICOM folder ``path`` into ``output_dir/<case>.seg.nrrd`` (and
    ``<case>_qc.png``), written together or not at all; returns its CSV row, a failure included."""
    from .fileio import atomic_outputs
    from .inference import provenance, segment_volume
    from .plausibility import check_result
    from .volume_io import read_volume, write_labelmap

    path, output_dir = Path(path), Path(output_dir)
    row = new_row(path)
    started = time.perf_counter()
    try:
        volume, geometry = read_volume(path)
        result = segment_volume(volume, geometry, model, **options)
        check_result(result, volume)
        out = output_dir / output_name(row["case"])
        with atomic_outputs():   # the segmentation and its QC picture appear together, or neither does
            write_labelmap(out, result.labelmap, result.geometry, result.labels, provenance(result, model))
            if qc:
                from .qc import write_qc
                write_qc(output_dir / qc_name(row["case"]), volume, result.labelmap, result.geometry,
                         f"{path.name}: femur")
        finish_row(row, out, result)
    except Exception as exc:   # one bad case must not stop the batch
        row["error"] = error_text(exc)
    row["seconds"] = f"{time.perf_counter() - started:.2f}"
    return row


def write_index(rows, output_dir: Path) -> Path:
    """index.html: one row per input (case, status, femur ml, warnings or error) with its QC picture."""
    import html
    from .fileio import atomic_write
    lines = ["<!DOCTYPE html><html><head><meta charset='utf-8'><title>FemurUNet results</title>",
             "<style>body{font-family:sans-serif}td{vertical-align:top;padding:4px}img{width:600px}</style></head>",
             "<body><h1>FemurUNet results</h1><table><tr><th>case</th><th>status</th><th>femur ml</th>"
             "<th>warnings / error</th><th>QC picture</th></tr>"]
    for row in rows:
        picture = output_dir / qc_name(row["case"])
        cell = (f"<a href='{html.escape(picture.name)}'><img src='{html.escape(picture.name)}' alt='QC of "
                f"{html.escape(row['case'])}'></a>" if row["status"] in FINISHED and picture.is_file() else "")
        notes = html.escape(row["warnings"] or row["error"])
        lines.append(f"<tr><td>{html.escape(row['case'])}</td><td>{row['status']}</td><td>{row['volume_ml']}</td>"
                     f"<td>{notes}</td><td>{cell}</td></tr>")
    lines.append("</table></body></html>")
    text = "\n".join(lines) + "\n"
    return atomic_write(output_dir / "index.html", lambda tmp: Path(tmp).write_text(text, encoding="utf-8"), ".html")


def write_csv(rows, path: Path) -> Path:
    from .fileio import atomic_write
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=CSV_FIELDS)
    writer.writeheader()
    writer.writerows(rows)
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text.getvalue(), newline=""), ".csv")


def read_csv(path: Path) -> list:
    """The rows of a results CSV written by :func:`write_csv`; [] when it is missing or not such a CSV."""
    try:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            if tuple(reader.fieldnames or ()) != CSV_FIELDS:
                return []
            return [dict(row) for row in reader]
    except (OSError, UnicodeDecodeError, csv.Error):
        return []


def part_name(rank: int) -> str:
    return f"femurunet_results.part{rank}.csv"


def previous_rows(output_dir) -> dict:
    """case -> its finished row (status ok / done earlier) from earlier runs into ``output_dir``: the results CSV,
    then the part files an interrupted sharded run left behind (newer)."""
    output_dir, rows = Path(output_dir), {}
    for path in [output_dir / RESULTS_NAME] + sorted(output_dir.glob(PART_GLOB)):
        for row in read_csv(path):
            if row["status"] in FINISHED:
                rows[row["case"]] = row
    return rows


def done_earlier(previous: dict, output_dir, case: str, qc: bool = False, check: bool = True):
    """``case``'s row from an earlier run (status ``done earlier``) when that run finished it and its outputs are
    there and whole (``check``: the .seg.nrrd's bytes against its header); None when it is to be segmented."""
    from .errors import FemurUNetError
    from .volume_check import check_image_file
    row, out = previous.get(case), Path(output_dir) / output_name(case)
    if row is None or Path(row["output"]).name != out.name or not out.is_file():
        return None
    if qc and not (Path(output_dir) / qc_name(case)).is_file():
        return None
    if check:
        try:
            check_image_file(out)
        except FemurUNetError:
            return None
    return dict(row, status=DONE_EARLIER, output=str(out))


def duplicate_cases(inputs) -> list:
    """Case names that more than one input would write (``a.nii.gz`` and ``a.nrrd`` both make ``a.seg.nrrd``)."""
    seen, twice = set(), []
    for path in inputs:
        name = case_name(Path(path))
        if name in seen and name not in twice:
            twice.append(name)
        seen.add(name)
    return twice


def case_cost(path) -> int:
    """About how many voxels a case holds: its header's size, or its bytes / 2 (DICOM folders, unreadable headers)."""
    path = Path(path)
    try:
        if path.is_dir():
            return sum(p.stat().st_size for p in path.iterdir() if p.is_file()) // 2
        with _quiet_itk():
            try:
                return math.prod(_header(path).GetSize())
            except RuntimeError:
                return path.stat().st_size // 2
    except OSError:
        return 0


def shard(costs, world: int) -> list:
    """The case indices of each of ``world`` processes, balanced by cost: the biggest case next goes to the least
    loaded process (ties: the lower rank); each list in input order. The same on every process."""
    loads, parts = [0] * world, [[] for _ in range(world)]
    for i in sorted(range(len(costs)), key=lambda i: (-costs[i], i)):
        rank = min(range(world), key=lambda r: (loads[r], r))
        parts[rank].append(i)
        loads[rank] += costs[i]
    return [sorted(part) for part in parts]
