"""The active dataset of the correct, add, fine-tune loop: one exported folder (``dataset.json`` + PNG pairs) that
collects the user's corrected cases, with its fine-tuned models versioned beside them (``models/v1.pt``, ``v2.pt``,
...; each with ``vN.json``: what it started from, which cases, the arguments, its Dice).

Pure Python and torch-free (the Slicer module lists cases and models before PyTorch is installed); the scene side
(adding a case from nodes, the active model) is in ``mrml.py``. Settings go through a seam: any object with
``value(key)`` and ``setValue(key, value)`` (Slicer passes ``qt.QSettings()``).
"""
from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from FemurUNetLib.errors import FemurUNetError
from FemurUNetLib.fileio import atomic_write
from FemurUNetLib.paths import DEFAULT_MODEL_PATH

from .history import checkpoint_path, log_path, read_log_records
from .manifest import IMAGE_DIR, MANIFEST_NAME, put_back, read_manifest, set_aside, slice_name
from .options import TrainConfig

SETTINGS_KEY = "FemurUNetTrain/ActiveDataset"
MODELS_DIR = "models"
RECORD_FORMAT = "femurunet-model-version"
_VERSION_FILE = re.compile(r"^v(\d+)(?:\.|$)")


# --- the folder, remembered -----------------------------------------------------------------------------------------
def remembered_dataset(settings) -> str:
    """The dataset folder last chosen (``settings``: e.g. ``qt.QSettings()``), or ""."""
    value = settings.value(SETTINGS_KEY) if settings is not None else None
    return str(value) if value else ""


def remember_dataset(settings, folder) -> None:
    if settings is not None:
        settings.setValue(SETTINGS_KEY, str(folder or ""))


def dataset_problem(folder) -> str:
    """Why ``folder`` cannot be the active dataset (one line), or "" (a missing folder is made by the first add)."""
    if not folder:
        return "Choose the dataset folder"
    path = Path(folder)
    if path.exists() and not path.is_dir():
        return f"The dataset folder is a file: {path}"
    try:
        read_manifest(path)
    except FemurUNetError as exc:
        return str(exc)
    return ""


def _manifest(folder) -> dict:
    problem = dataset_problem(folder)
    if problem:
        raise FemurUNetError(problem)
    return read_manifest(folder) or {"cases": {}}


# --- cases ------------------------------------------------------------------------------------------------------------
def safe_case_name(name: str) -> str:
    """A dataset case name (letters, digits, '.', '_', '-'; starting with a letter or digit) from a node name."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).lstrip("._-").rstrip("._") or "case"


@dataclass(frozen=True)
class CaseRow:
    case: str
    femur_slices: int       # slices with femur
    slices: int             # all exported slices (with the label-free ones)
    source: str             # where it came from, in words
    date: str               # when it was added (YYYY-MM-DD HH:MM), "" if unknown


def describe_source(source: dict) -> str:
    """A case's ``source`` record in a few words: the nodes or files, the model that made it, whether corrected."""
    if not isinstance(source, dict):
        return ""
    if source.get("volume"):
        what = f"{source['volume']} / {source.get('segmentation', '?')}"
        if source.get("segments"):
            what += f" ({', '.join(source['segments'])})"
    else:
        what = " + ".join(Path(str(source[k])).name for k in ("ct", "label") if source.get(k))
    models = source.get("model") if isinstance(source.get("model"), list) else [source.get("model")]
    if any(models):
        what += f"; from {', '.join(Path(str(m)).name for m in models if m)}"
    corrected = source.get("corrected")
    if corrected is not None:
        what += ", corrected by hand" if corrected else ", not corrected"
    return what


def _added(folder: Path, case: str, entry: dict) -> str:
    """The case's "added" date, else the time its first slice file was written (cases from ``femurunet export``)."""
    added = (entry.get("source") or {}).get("added") if isinstance(entry.get("source"), dict) else None
    if added:
        return str(added).replace("T", " ")[:16]
    slices = entry.get("slices") or []
    image = folder / IMAGE_DIR / slice_name(case, int(slices[0])) if slices else None
    if image is None or not image.exists():
        return ""
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(image.stat().st_mtime))


def case_rows(folder) -> list:
    """The dataset's cases as CaseRows, in the manifest's order ([] for a folder not made yet)."""
    folder = Path(folder)
    cases = _manifest(folder)["cases"]
    return [CaseRow(case, int(entry.get("positive", 0)), len(entry.get("slices") or []),
                    describe_source(entry.get("source")), _added(folder, case, entry))
            for case, entry in cases.items()]


def has_case(folder, case: str) -> bool:
    return bool(folder) and Path(folder).is_dir() and case in _manifest(folder)["cases"]


def remove_case(folder, case: str) -> dict:
    """Remove a case (its slice pairs and manifest entry), all or nothing; returns its manifest entry."""
    folder = Path(folder)
    manifest = _manifest(folder)
    if case not in manifest["cases"]:
        raise FemurUNetError(f"{folder / MANIFEST_NAME}: no case {case!r} in this dataset")
    entry = manifest["cases"].pop(case)
    names = [slice_name(case, int(k)) for k in entry.get("slices") or []]
    staging = Path(tempfile.mkdtemp(prefix=".remove-", dir=folder))
    moved = []
    try:
        moved = set_aside(folder, names, staging)
        text = json.dumps(manifest, indent=1)
        atomic_write(folder / MANIFEST_NAME, lambda tmp: Path(tmp).write_text(text))
    except BaseException as exc:
        put_back(moved)                      # the case comes back as it was
        if isinstance(exc, OSError):
            raise FemurUNetError(f"{folder}: cannot remove case {case!r}: {exc.strerror or exc}; nothing was "
                                 "removed") from None
        raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return entry


# --- versioned models -------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ModelRow:
    version: int
    path: str                       # DATASET/models/vN.pt (may not exist yet while the first epoch runs)
    state: str                      # training, done, stopped, failed; "" for a model without a record
    dice: Optional[float]           # training Dice of the best epoch
    val_dice: Optional[float]       # validation Dice of the best epoch (with a validation folder)
    best_epoch: Optional[int]
    epochs: int                     # epochs finished
    init: str                       # the model it was fine-tuned from
    cases: list = field(default_factory=list)
    created: str = ""

    @property
    def name(self) -> str:
        return Path(self.path).name

    def describe_dice(self) -> str:
        if self.val_dice is not None:
            return f"{self.val_dice:.3f} (validation)"
        return f"{self.dice:.3f} (training)" if self.dice is not None else ""


def models_folder(dataset) -> Path:
    return Path(dataset) / MODELS_DIR


def record_path(model_path) -> Path:
    return Path(model_path).with_suffix(".json")


def _versions(dataset) -> list:
    """Version numbers that have any file in models/ (model, record, log, checkpoint), ascending."""
    folder = models_folder(dataset)
    found = {int(m.group(1)) for m in map(_VERSION_FILE.match, os.listdir(folder) if folder.is_dir() else []) if m}
    return sorted(found)


def model_path(dataset, version: int) -> Path:
    return models_folder(dataset) / f"v{int(version)}.pt"


def next_model_path(dataset) -> Path:
    """DATASET/models/v<N+1>.pt after the highest version present (v1.pt in a new dataset)."""
    versions = _versions(dataset)
    return model_path(dataset, (versions[-1] if versions else 0) + 1)


def read_record(path) -> dict:
    """A model's ``vN.json`` ({} when there is none or it is unreadable)."""
    try:
        record = json.loads(record_path(path).read_text())
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) and record.get("format") == RECORD_FORMAT else {}


def model_row(path) -> ModelRow:
    """A model's row: its record, and the Dice of its best epoch from its epoch log (read while it trains too)."""
    path = Path(path)
    record = read_record(path)
    history = read_log_records(log_path(path))
    best = [r for r in history if r.get("best")]
    best = best[-1] if best else {}
    return ModelRow(version=int(_VERSION_FILE.match(path.name).group(1)), path=str(path),
                    state=record.get("state", "done" if path.is_file() else ""), dice=best.get("dice"),
                    val_dice=best.get("val_dice"), best_epoch=best.get("epoch"), epochs=len(history),
                    init=str(record.get("init") or ""), cases=list(record.get("cases") or []),
                    created=str(record.get("created") or "").replace("T", " ")[:16])


def model_rows(dataset) -> list:
    """The dataset's versioned models (newest first): those with a model file or a record."""
    rows = []
    for version in reversed(_versions(dataset)):
        path = model_path(dataset, version)
        if path.is_file() or record_path(path).is_file():
            rows.append(model_row(path))
    return rows


def resumable_model(dataset) -> Optional[Path]:
    """The newest version whose training stopped before its end (it has a checkpoint and is not done), or None."""
    for row in model_rows(dataset):
        if checkpoint_path(row.path).is_file() and row.state in ("training", "stopped", "failed"):
            return Path(row.path)
    return None


# --- fine-tuning --------------------------------------------------------------------------------------------------------
def finetune_arguments(dataset, init_model, out, *, val=None, resume: bool = False, **flags) -> list:
    """``femurunet train`` arguments of a fine-tune: ``DATASET --out OUT --init MODEL --recipe finetune``, then
    ``--val``, ``--resume`` and ``flags`` by TrainConfig field name (e.g. ``epochs=2`` -> ``--epochs 2``: given
    flags win over the recipe)."""
    arguments = [str(dataset), "--out", str(out), "--init", str(init_model or DEFAULT_MODEL_PATH),
                 "--recipe", "finetune"]
    if val:
        arguments += ["--val", str(val)]
    if resume:
        arguments.append("--resume")
    known = TrainConfig.__dataclass_fields__
    for name, value in flags.items():
        flag = known[name].metadata.get("flag", "") if name in known else ""
        if not flag.startswith("--") or name in ("out", "init", "resume", "val"):
            raise FemurUNetError(f"fine-tune: {name!r} is not a training option that can be given here")
        if isinstance(known[name].default, bool):
            arguments += [flag] if value is not None and bool(value) != known[name].default else []
        elif value is not None:
            arguments += [flag, str(value)]
    return arguments


def finetune_run(arguments: list, out, resume: bool = False, python: Optional[str] = None, env=None):
    """A not yet started ``process.TrainingRun`` of ``femurunet train ARGUMENTS`` (``begin_finetune``'s)."""
    from .process import TrainingRun
    return TrainingRun(TrainConfig(data=str(arguments[0]), out=str(out), resume=resume), python=python, env=env,
                       arguments=arguments)


def validation_cases(cases: int) -> int:
    """Cases a fine-tune holds out for validation (and early stopping) when no validation folder is given:
    none below 3 cases (each one is needed for training), else a fifth, at least one."""
    return 0 if cases < 3 else max(1, round(cases / 5))


def begin_finetune(dataset, init_model=None, *, val=None, resume: bool = False, **flags) -> tuple:
    """Prepare a fine-tune of the active dataset: (arguments, model path). The model is the next free version
    (``resume``: the newest stopped one, which must exist); its record ``vN.json`` notes the start model, the
    dataset's cases and the arguments (state "training"). Nothing is trained here: run the arguments with
    ``process.TrainingRun`` (Slicer, in the background) or ``femurunet train``; then ``finish_finetune``."""
    manifest = _manifest(dataset)
    if not manifest["cases"]:
        raise FemurUNetError(f"{Path(dataset)}: the dataset has no cases yet; add a corrected case first")
    init = os.path.abspath(os.fspath(init_model)) if init_model else str(DEFAULT_MODEL_PATH)
    if not os.path.isfile(init):
        raise FemurUNetError(f"{init}: model file not found (the model to fine-tune from)")
    if resume:
        out = resumable_model(dataset)
        if out is None:
            raise FemurUNetError(f"{models_folder(dataset)}: no stopped fine-tune to resume")
        record = dict(read_record(out), state="training")
        init = record.get("init") or init
    else:
        out = next_model_path(dataset)
        record = {"format": RECORD_FORMAT, "version": int(out.stem[1:]), "model": out.name, "state": "training",
                  "created": time.strftime("%Y-%m-%dT%H:%M:%S"), "dataset": str(Path(dataset).resolve()),
                  "init": init, "cases": sorted(manifest["cases"]), "recipe": "finetune"}
    held = validation_cases(len(record["cases"]))
    if val is None and held and "val_cases" not in flags:
        flags["val_cases"] = held
    arguments = finetune_arguments(dataset, init, out, val=val, resume=resume, **flags)
    record["arguments"] = arguments
    out.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(record, indent=1)
    atomic_write(record_path(out), lambda tmp: Path(tmp).write_text(text))
    return arguments, out


def finish_finetune(model, succeeded: bool, stopped: bool = False) -> ModelRow:
    """Close a fine-tune's record: state done / stopped / failed, the best epoch's Dice; returns its ModelRow."""
    model = Path(model)
    record = read_record(model)
    if not record:
        raise FemurUNetError(f"{record_path(model)}: no fine-tune record")
    row = model_row(model)
    record.update(state="done" if succeeded else "stopped" if stopped else "failed",
                  finished=time.strftime("%Y-%m-%dT%H:%M:%S"), best_epoch=row.best_epoch, epochs=row.epochs,
                  dice=row.dice, val_dice=row.val_dice)
    text = json.dumps(record, indent=1)
    atomic_write(record_path(model), lambda tmp: Path(tmp).write_text(text))
    return model_row(model)
