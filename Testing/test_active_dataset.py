"""The active dataset loop's Lib (issue 16 items 1-4) against real MRML (slicer-core): add the current case (append,
replace only when asked, provenance), the table of cases, remove a case all or nothing, versioned fine-tuned models
with their records, the active model and dataset, and a real fine-tune of one step through the button's arguments."""
import json
import time
from pathlib import Path

import numpy as np
import pytest
import slicer
import torch

from conftest import threshold_unet
from FemurUNetLib import UNet2D, mrml
from FemurUNetLib.errors import FemurUNetError
from FemurUNetLib.geometry import Geometry
from FemurUNetLib.modelfile import load_model, save_model
from FemurUNetLib.paths import DEFAULT_MODEL_PATH
from FemurUNetTrainLib import active_dataset as ad
from FemurUNetTrainLib import mrml as training_mrml
from FemurUNetTrainLib.manifest import read_manifest


class Settings:
    """What qt.QSettings offers the Lib: value(key) and setValue(key, value)."""

    def __init__(self):
        self.values = {}

    def value(self, key, default=None):
        return self.values.get(key, default)

    def setValue(self, key, value):
        self.values[key] = value


def phantom(scene, name="Knee CT", shape=(10, 48, 48)):
    """A CT volume node with two bone rods (> 300 HU) in soft tissue."""
    k, j, i = np.meshgrid(*(np.arange(n) for n in shape), indexing="ij")
    ct = np.full(shape, 40, np.int16)
    for centre in (0.3 * shape[2], 0.7 * shape[2]):
        ct[(i - centre) ** 2 + (j - shape[1] / 2) ** 2 < 16] = 1200
    ct[k < 2] = 40                                        # two slices without femur
    return mrml.array_to_volume_node(scene, ct, Geometry(spacing=(1.0, 1.0, 2.0)), name)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return save_model(threshold_unet(input_size=48), tmp_path_factory.mktemp("model") / "threshold.pt")


@pytest.fixture
def segmented(model):
    """A scene with a CT and its femur segments as FemurUNet's Segment button leaves them (the labelmap its model
    gives, imported and recorded by the functions ``segment_and_import`` calls)."""
    scene = slicer.vtkMRMLScene()
    volume = phantom(scene)
    labelmap = (mrml.volume_node_to_array(volume)[0] > 300).astype(np.uint8)
    labels = [{"value": 1, "name": "Femur"}]
    node, ids = mrml.import_labelmap(volume, labelmap, labels, closed_surface=False)
    mrml.record_segment_sources(node, str(model), labelmap, labels)
    return scene, volume, node, ids, model


def test_segment_and_import_records_the_model_and_what_it_wrote(model):
    """The real Segment button path: the model file and each segment's digest go on the segmentation node."""
    scene = slicer.vtkMRMLScene()
    volume = phantom(scene)
    node, result, ids = mrml.segment_and_import(volume, str(model), device="cpu", closed_surface=False,
                                                autocast=False, batch_size=16)
    assert np.array_equal(result.labelmap, mrml.volume_node_to_array(volume)[0] > 300)
    assert mrml.segment_sources(node) == {"Femur": {"model": str(model), "digest": mrml.mask_digest(result.labelmap)}}
    assert mrml.segments_provenance(node, ids, volume) == {"models": [str(model)], "edited": False}
    hand_edit(volume, node, ids)
    assert mrml.segments_provenance(node, ids, volume) == {"models": [str(model)], "edited": True}


def files(folder):
    return sorted(str(p.relative_to(folder)) for p in Path(folder).rglob("*") if p.is_file())


def hand_edit(volume, node, ids):
    """The user corrects the femur: a few voxels more in the first segment (same name, same ID)."""
    label = mrml.segments_to_labelmap(node, ids, volume)
    label[5, 3:6, 3:6] = 1
    labels = [{"value": n + 1, "name": node.GetSegmentation().GetSegment(sid).GetName()} for n, sid in enumerate(ids)]
    mrml.import_labelmap(volume, label, labels, node, closed_surface=False)


def test_add_case_appends_replaces_only_when_asked_and_records_where_it_came_from(segmented, tmp_path):
    scene, volume, node, ids, model = segmented
    data = tmp_path / "data"
    first = training_mrml.add_case(volume, node, ids, data)
    assert first["case"] == "Knee_CT" and first["positive"] == 8
    assert first["provenance"]["model"] == str(model) and first["provenance"]["edited"] is False
    assert first["provenance"]["corrected"] is False                    # FemurUNet's output as it was written
    before = (files(data), (data / "dataset.json").read_text())

    with pytest.raises(FemurUNetError, match=r"case 'Knee_CT' is already in the dataset; replace it"):
        training_mrml.add_case(volume, node, ids, data)
    assert (files(data), (data / "dataset.json").read_text()) == before   # refused: nothing changed

    hand_edit(volume, node, ids)
    replaced = training_mrml.add_case(volume, node, ids, data, replace=True)
    assert replaced["provenance"]["edited"] is True and replaced["provenance"]["corrected"] is True
    assert replaced["positive"] == 8 and list(read_manifest(data)["cases"]) == ["Knee_CT"]
    source = read_manifest(data)["cases"]["Knee_CT"]["source"]
    assert source["volume"] == "Knee CT" and source["model"] == str(model) and source["corrected"] is True

    other = phantom(scene, "Hip CT", shape=(6, 48, 48))
    seg, seg_ids = mrml.import_labelmap(other, (mrml.volume_node_to_array(other)[0] > 300).astype(np.uint8),
                                        [{"value": 1, "name": "Femur"}], closed_surface=False)
    added = training_mrml.add_case(other, seg, seg_ids, data, case="hip", corrected=True)
    assert added["provenance"] == dict(added["provenance"], model=None, edited=None, corrected=True)

    rows = ad.case_rows(data)
    assert [(r.case, r.femur_slices, r.slices) for r in rows] == [("Knee_CT", 8, 8), ("hip", 4, 4)]
    assert rows[0].source == f"Knee CT / {node.GetName()} (Femur); from threshold.pt, corrected by hand"
    assert rows[1].source == f"Hip CT / {seg.GetName()} (Femur), corrected by hand"
    assert rows[0].date == time.strftime("%Y-%m-%d %H:%M") or rows[0].date[:10] == time.strftime("%Y-%m-%d")


def test_a_case_exported_on_the_command_line_shows_its_files_and_date(tmp_path):
    from FemurUNetTrainLib.export import export_files
    import SimpleITK as sitk
    ct = np.full((4, 20, 20), 40, np.int16)
    ct[:, 8:12, 8:12] = 1200
    sitk.WriteImage(sitk.GetImageFromArray(ct), str(tmp_path / "leg.nrrd"))
    sitk.WriteImage(sitk.GetImageFromArray((ct > 300).astype(np.uint8)), str(tmp_path / "leg-label.nrrd"))
    export_files(tmp_path / "leg.nrrd", tmp_path / "leg-label.nrrd", tmp_path / "data")
    [row] = ad.case_rows(tmp_path / "data")
    assert (row.case, row.femur_slices, row.source) == ("leg", 4, "leg.nrrd + leg-label.nrrd")
    assert row.date[:10] == time.strftime("%Y-%m-%d")


def test_remove_case_takes_its_slices_and_entry_all_or_nothing(segmented, tmp_path, monkeypatch):
    scene, volume, node, ids, _ = segmented
    data = tmp_path / "data"
    training_mrml.add_case(volume, node, ids, data, case="a")
    training_mrml.add_case(volume, node, ids, data, case="b")
    kept = [f for f in files(data) if "/a_" in f]

    def full_disk(path, write):
        raise OSError(28, "No space left on device")
    before = (files(data), (data / "dataset.json").read_text())
    with monkeypatch.context() as m:
        m.setattr(ad, "atomic_write", full_disk)
        with pytest.raises(FemurUNetError, match=r"cannot remove case 'b': No space left on device; nothing was"):
            ad.remove_case(data, "b")
    assert (files(data), (data / "dataset.json").read_text()) == before

    entry = ad.remove_case(data, "b")
    assert entry["positive"] == 8 and list(read_manifest(data)["cases"]) == ["a"]
    assert [f for f in files(data) if f != "dataset.json"] == kept
    with pytest.raises(FemurUNetError, match=r"dataset\.json: no case 'b' in this dataset"):
        ad.remove_case(data, "b")


def test_dataset_folder_is_remembered_in_the_scene_and_in_settings(tmp_path):
    scene, settings = slicer.vtkMRMLScene(), Settings()
    assert training_mrml.active_dataset_folder(scene, settings) == ""
    assert training_mrml.set_active_dataset_folder(scene, tmp_path / "data", settings) == str(tmp_path / "data")
    assert training_mrml.active_dataset_folder(scene) == str(tmp_path / "data")
    assert settings.values == {ad.SETTINGS_KEY: str(tmp_path / "data")}
    later = slicer.vtkMRMLScene()                       # next session: the remembered folder
    assert training_mrml.active_dataset_folder(later, settings) == str(tmp_path / "data")
    (tmp_path / "file").write_text("")
    with pytest.raises(FemurUNetError, match=r"^The dataset folder is a file: .*file$"):
        training_mrml.set_active_dataset_folder(scene, tmp_path / "file", settings)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "dataset.json").write_text("{}")
    assert "not a FemurUNet dataset manifest" in ad.dataset_problem(tmp_path / "other")


def test_active_model_is_femurunets_model_parameter(tmp_path):
    scene = slicer.vtkMRMLScene()
    assert training_mrml.active_model(scene) == str(DEFAULT_MODEL_PATH)
    model = save_model(threshold_unet(), tmp_path / "m.pt")
    assert training_mrml.set_active_model(scene, model) == str(model)
    node = scene.GetSingletonNode("FemurUNet", "vtkMRMLScriptedModuleNode")
    assert node.GetParameter("modelPath") == str(model) and training_mrml.active_model(scene) == str(model)
    with pytest.raises(FemurUNetError, match=r"missing\.pt: model file not found$"):
        training_mrml.set_active_model(scene, tmp_path / "missing.pt")
    assert training_mrml.set_active_model(scene, None) == str(DEFAULT_MODEL_PATH) and node.GetParameter("modelPath") == ""


def test_current_case_is_femurunets_input_and_the_segments_it_wrote(segmented):
    scene, volume, node, ids, _ = segmented
    assert training_mrml.current_case(scene) == (None, None, [])
    p = training_mrml.module_parameter_node(scene, "FemurUNet")
    p.SetNodeReferenceID("inputVolume", volume.GetID())
    p.SetNodeReferenceID("outputSegmentation", node.GetID())
    node.GetSegmentation().AddEmptySegment("", "Notes")
    assert training_mrml.current_case(scene) == (volume, node, ids)


def test_versions_are_numbered_next_to_the_dataset_with_their_records(segmented, tmp_path):
    scene, volume, node, ids, model = segmented
    data = tmp_path / "data"
    with pytest.raises(FemurUNetError, match=r"the dataset has no cases yet"):
        ad.begin_finetune(data, model)
    training_mrml.add_case(volume, node, ids, data)
    assert ad.next_model_path(data) == data / "models" / "v1.pt" and ad.model_rows(data) == []
    arguments, out = ad.begin_finetune(data, model, epochs=3, device="cpu")
    assert out == data / "models" / "v1.pt"
    assert arguments == [str(data), "--out", str(out), "--init", str(model), "--recipe", "finetune",
                         "--epochs", "3", "--device", "cpu"]
    record = json.loads((data / "models" / "v1.json").read_text())
    assert (record["version"], record["state"], record["init"], record["cases"]) == (1, "training", str(model),
                                                                                    ["Knee_CT"])
    assert ad.next_model_path(data).name == "v2.pt"         # the record reserves v1
    (data / "models" / "v9.log.jsonl").write_text("")
    assert ad.next_model_path(data).name == "v10.pt"
    with pytest.raises(FemurUNetError, match=r"missing\.pt: model file not found"):
        ad.begin_finetune(data, tmp_path / "missing.pt")
    for wrong in ({"data": "elsewhere"}, {"augment": None}, {"resume_from": 3}):
        with pytest.raises(FemurUNetError, match=r"^fine-tune: '\w+' is not a training option that can be given"):
            ad.begin_finetune(data, model, **wrong)
    with pytest.raises(FemurUNetError, match=r"no stopped fine-tune to resume"):
        ad.begin_finetune(data, model, resume=True)         # v1 has no checkpoint
    assert ad.finetune_arguments(data, None, out)[4] == str(DEFAULT_MODEL_PATH)
    (data / "models" / "v1.checkpoint.pt").write_bytes(b"")         # v1 stopped after an epoch: resume it
    assert ad.finish_finetune(out, succeeded=False, stopped=True).state == "stopped"
    assert ad.resumable_model(data) == out
    arguments, again = ad.begin_finetune(data, model, resume=True)
    assert again == out and arguments[-1] == "--resume" and arguments[4] == str(model)
    assert json.loads((data / "models" / "v1.json").read_text())["state"] == "training"


def test_a_fine_tune_of_three_or_more_cases_holds_out_a_fifth_for_validation(segmented, tmp_path):
    scene, volume, node, ids, model = segmented
    assert [ad.validation_cases(n) for n in (1, 2, 3, 7, 8, 20)] == [0, 0, 1, 1, 2, 4]
    data = tmp_path / "data"
    for case in ("a", "b", "c"):
        training_mrml.add_case(volume, node, ids, data, case=case)
    arguments, _ = ad.begin_finetune(data, model)
    assert arguments[-2:] == ["--val-cases", "1"]
    arguments, _ = ad.begin_finetune(data, model, val=tmp_path / "val")      # a validation folder: no hold-out
    assert "--val-cases" not in arguments and arguments[-2:] == ["--val", str(tmp_path / "val")]


@pytest.mark.slow      # a real training process: Python, PyTorch and matplotlib start (3-10 s on 2 busy cores)
def test_fine_tune_of_one_step_through_the_buttons_arguments_becomes_the_active_model(segmented, tmp_path):
    scene, volume, node, ids, _ = segmented
    data = tmp_path / "data"
    training_mrml.add_case(volume, node, ids, data)
    torch.manual_seed(0)
    init = save_model(UNet2D(base_filters=4), tmp_path / "start.pt", input_size=32)
    arguments, out = ad.begin_finetune(data, init, epochs=1, steps_per_epoch=1, batch_size=2, device="cpu",
                                       threads=1)
    run = ad.finetune_run(arguments, out).start()
    deadline = time.monotonic() + 60
    while run.running and time.monotonic() < deadline:
        time.sleep(0.1)
    status = run.poll()
    assert run.succeeded, run.process.output_tail()
    assert "--recipe" in run.process.command and len(status.records) == 1
    run.close()
    row = ad.finish_finetune(out, succeeded=True)
    assert (row.version, row.state, row.best_epoch, row.epochs, row.init) == (1, "done", 1, 1, str(init))
    assert row.dice is not None and row.describe_dice().endswith("(training)") and row.cases == ["Knee_CT"]
    training = load_model(out).metadata["training"]
    assert training["init"] == str(init) and training["cases"] == ["Knee_CT"] and training["lr_schedule"] == "cosine"
    assert [r.name for r in ad.model_rows(data)] == ["v1.pt"] and ad.next_model_path(data).name == "v2.pt"
    assert training_mrml.set_active_model(scene, row.path) == str(out) == training_mrml.active_model(scene)
