"""Damaged input is refused with one line naming the file, usable oddities warned about (issue 15 items 1, 7).

The reproductions of the issue: a truncated .nii.gz (``head -c 3000``), NRRD/MetaImage with short or missing
data files, DICOM folders with damaged, missing or duplicated slices, uneven spacing, several series, and an
empty folder whose ITK warning used to print before the error."""
from __future__ import annotations

import shutil
import warnings

import numpy as np
import pytest
import SimpleITK as sitk

from FemurUNetLib.errors import FemurUNetError, FemurUNetWarning
from FemurUNetLib.library_output import kept_locale
from FemurUNetLib.volume_io import read_volume
from FemurUNetTrainLib.cli import main

from conftest import expected_threshold_labels, threshold_unet
from FemurUNetLib.modelfile import save_model

UID = "1.2.826.0.1.3680043.2.1125.77"


def ct_array(shape=(3, 32, 32)) -> np.ndarray:
    """Air around a soft-tissue disc with a bone core: both threshold classes present on every slice."""
    k, j, i = np.mgrid[:shape[0], :shape[1], :shape[2]]
    r2 = (j - shape[1] / 2) ** 2 + (i - shape[2] / 2) ** 2
    return np.where(r2 < 30, 900 + 20 * k, np.where(r2 < 150, 40, -1000)).astype(np.int16)


def ct_image(array=None) -> sitk.Image:
    image = sitk.GetImageFromArray(ct_array() if array is None else array)
    image.SetSpacing((0.8, 0.8, 2.5))
    image.SetOrigin((-12.0, 7.0, 30.0))
    return image


def write_dicom_series(folder, positions, uid=UID, prefix="s", array=None):
    """A CT series written by SimpleITK: one file per slice at the given z positions (mm)."""
    folder.mkdir(parents=True, exist_ok=True)
    array = ct_array((len(positions), 32, 32)) if array is None else array
    for n, z in enumerate(positions):
        image = sitk.GetImageFromArray(array[n])
        image.SetSpacing((0.8, 0.8))
        tags = {"0008|0060": "CT", "0020|000d": "1.2.3.4", "0020|000e": uid, "0020|0013": str(n + 1),
                "0020|0032": f"-12\\7\\{z}", "0020|0037": "1\\0\\0\\0\\1\\0", "0028|0030": "0.8\\0.8",
                "0008|0016": "1.2.840.10008.5.1.4.1.1.2", "0008|0018": f"{uid}.{prefix}{n + 1}".replace("s", "9"),
                "0010|0020": "FUZZ"}
        for key, value in tags.items():
            image.SetMetaData(key, value)
        writer = sitk.ImageFileWriter()
        writer.KeepOriginalImageUIDOn()
        writer.SetFileName(str(folder / f"{prefix}{n:03d}.dcm"))
        with kept_locale():              # GDCM's writer would leave the process in the "C" locale
            writer.Execute(image)
    return folder


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    """A threshold U-Net (HU > 300) at the slices' own size: its labelmap is exact, voxel by voxel."""
    net = threshold_unet(base_filters=2, input_size=32)
    return save_model(net, tmp_path_factory.mktemp("model") / "threshold32.pt")


def segment(capfd, *argv):
    code = main(["segment", *map(str, argv)])
    out, err = capfd.readouterr()
    return code, out, err


def assert_refused(capfd, tmp_path, source, model_file, *words):
    """Exit 2, stderr exactly one line naming ``source`` and each of ``words``, no output file."""
    out = tmp_path / "out" / "seg.nii.gz"
    out.parent.mkdir(exist_ok=True)
    code, _, err = segment(capfd, source, out, "--model", model_file, "--quiet")
    assert code == 2, err
    assert err.endswith("\n") and err.count("\n") == 1, err
    assert err.startswith("femurunet segment: error: ") and str(source) in err, err
    for word in words:
        assert word in err, err
    assert list(out.parent.iterdir()) == []
    return err


def test_truncated_nii_gz_from_the_issue_is_refused(tmp_path, capfd, model_file):
    good = tmp_path / "ct.nii.gz"
    sitk.WriteImage(ct_image(ct_array((40, 64, 64))), str(good), True)
    assert good.stat().st_size > 3000
    cut = tmp_path / "t.nii.gz"
    cut.write_bytes(good.read_bytes()[:3000])
    assert_refused(capfd, tmp_path, cut, model_file, "truncated")
    cut.write_bytes(good.read_bytes()[:-1])            # even the last byte of the gzip trailer
    assert_refused(capfd, tmp_path, cut, model_file, "truncated")


@pytest.mark.parametrize("name, compress", [("v.nii", False), ("v.nrrd", True), ("v.nrrd", False),
                                            ("v.mha", False), ("v.mha", True)])
def test_truncated_single_files_are_refused(tmp_path, capfd, model_file, name, compress):
    good = tmp_path / name
    sitk.WriteImage(ct_image(), str(good), compress)
    cut = tmp_path / f"cut_{name}"
    cut.write_bytes(good.read_bytes()[:good.stat().st_size - 7])
    assert_refused(capfd, tmp_path, cut, model_file, "truncated")


@pytest.mark.parametrize("header, compress", [("v.mhd", False), ("v.mhd", True), ("v.nhdr", False),
                                              ("v.nhdr", True)])
def test_detached_data_file_short_or_missing_is_refused(tmp_path, capfd, model_file, header, compress):
    sitk.WriteImage(ct_image(), str(tmp_path / header), compress)
    data = next(p for p in tmp_path.iterdir() if p.name != header)
    whole = data.read_bytes()
    data.write_bytes(whole[:len(whole) // 2])
    err = assert_refused(capfd, tmp_path, tmp_path / header, model_file, "truncated")
    assert data.name in err                            # the file that is short
    data.unlink()
    assert_refused(capfd, tmp_path, tmp_path / header, model_file, data.name, "not found")


def test_intact_files_of_every_format_segment_exactly(tmp_path, capfd, model_file):
    expected = expected_threshold_labels(ct_array())
    for name, compress in [("a.nii", False), ("b.nii.gz", True), ("c.nrrd", True), ("d.nhdr", False),
                           ("e.mha", True), ("f.mhd", False)]:
        sitk.WriteImage(ct_image(), str(tmp_path / name), compress)
        out = tmp_path / f"seg_{name}.nrrd"
        code, _, err = segment(capfd, tmp_path / name, out, "--model", model_file, "--quiet")
        assert code == 0 and err == "", err
        assert np.array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(out))), expected), name


def test_dicom_series_reads_exactly(tmp_path, capfd, model_file):
    folder = write_dicom_series(tmp_path / "dicom", [30.0, 32.5, 35.0])
    volume, geometry = read_volume(folder)
    assert np.array_equal(volume, ct_array()) and geometry.spacing == pytest.approx((0.8, 0.8, 2.5))
    out = tmp_path / "seg.nii.gz"
    code, _, err = segment(capfd, folder, out, "--model", model_file, "--quiet")
    assert code == 0 and err == "", err
    assert np.array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(out))), expected_threshold_labels(ct_array()))


def test_dicom_missing_slice_is_refused(tmp_path, capfd, model_file):
    folder = write_dicom_series(tmp_path / "dicom", [30.0, 32.5, 35.0, 37.5])
    (folder / "s002.dcm").unlink()                      # the slice at 35.0 mm
    assert_refused(capfd, tmp_path, folder, model_file, "missing slices", "s001.dcm", "s003.dcm")


def test_dicom_duplicated_slice_is_refused(tmp_path, capfd, model_file):
    folder = write_dicom_series(tmp_path / "dicom", [30.0, 32.5, 35.0])
    shutil.copy(folder / "s001.dcm", folder / "s001_copy.dcm")
    assert_refused(capfd, tmp_path, folder, model_file, "duplicated slices")


def test_dicom_damaged_slice_is_refused_not_dropped(tmp_path, capfd, model_file):
    folder = write_dicom_series(tmp_path / "dicom", [30.0, 32.5, 35.0])
    last = folder / "s002.dcm"                          # cutting the last slice would just shorten the series
    last.write_bytes(last.read_bytes()[:-100])
    assert_refused(capfd, tmp_path, folder, model_file, "s002.dcm", "damaged DICOM file")


def test_dicom_uneven_spacing_is_read_with_a_one_line_warning(tmp_path, capfd, model_file):
    folder = write_dicom_series(tmp_path / "dicom", [30.0, 32.5, 35.2, 37.5])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _, geometry = read_volume(folder)
    assert [w.category for w in caught] == [FemurUNetWarning] and "uneven slice spacing" in str(caught[0].message)
    assert geometry.spacing[2] == pytest.approx(2.5)   # mean spacing: first to last slice over 3 gaps
    assert "Non uniform sampling" in capfd.readouterr().err   # outside the CLI, ITK speaks as it always did
    code, _, err = segment(capfd, folder, tmp_path / "seg.nii.gz", "--model", model_file, "--quiet")
    assert code == 0
    assert err.count("\n") == 1 and err.startswith("warning: ") and str(folder) in err, err


def test_several_series_are_listed_and_one_can_be_chosen(tmp_path, capfd, model_file):
    folder = write_dicom_series(tmp_path / "dicom", [30.0, 32.5, 35.0])
    other = f"{UID}.2"
    write_dicom_series(folder, [0.0, 5.0], uid=other, prefix="t", array=ct_array((2, 32, 32)) + 100)
    assert_refused(capfd, tmp_path, folder, model_file, "2 DICOM series", UID + " (3 files)",
                   other + " (2 files)", "--series")
    out = tmp_path / "seg.nii.gz"
    code, _, err = segment(capfd, folder, out, "--model", model_file, "--quiet", "--series", other)
    assert code == 0, err
    assert sitk.ReadImage(str(out)).GetSize() == (32, 32, 2)
    code, _, err = segment(capfd, folder, tmp_path / "x.nii.gz", "--model", model_file, "--series", "1.2.3")
    assert code == 2 and err.count("\n") == 1 and "no DICOM series 1.2.3" in err


def test_empty_folder_error_is_exactly_one_line_and_verbose_shows_itk(tmp_path, capfd, model_file):
    empty = tmp_path / "emptydir"
    empty.mkdir()
    assert_refused(capfd, tmp_path, empty, model_file, "no DICOM series")
    code, _, err = segment(capfd, "--verbose", empty, tmp_path / "x.nii.gz", "--model", model_file)
    assert code == 2 and "No Series were found" in err and err.splitlines()[-1].startswith("femurunet segment: error")
    code, _, err = segment(capfd, empty, tmp_path / "x.nii.gz", "--model", model_file)
    assert code == 2 and err.count("\n") == 1, err      # --verbose did not stick to the next command


def test_library_default_is_untouched_after_the_cli(tmp_path, capfd, model_file):
    """The CLI silences ITK only while it runs: a host (Slicer) keeps ITK's own warning display."""
    main(["segment", str(tmp_path), str(tmp_path / "x.nii.gz"), "--model", str(model_file)])
    capfd.readouterr()
    assert sitk.ProcessObject.GetGlobalWarningDisplay()


def test_non_finite_voxels_and_geometry_are_refused(tmp_path, capfd, model_file):
    array = ct_array().astype(np.float32)
    array[1, 5, 5] = np.nan
    sitk.WriteImage(ct_image(array), str(tmp_path / "nan.nrrd"))
    assert_refused(capfd, tmp_path, tmp_path / "nan.nrrd", model_file, "NaN")
    with pytest.raises(FemurUNetError, match="no such file"):
        read_volume(tmp_path / "absent.nii.gz")
    with pytest.raises(FemurUNetError, match="picks a series in a DICOM folder"):
        read_volume(tmp_path / "nan.nrrd", series_uid="1.2")
