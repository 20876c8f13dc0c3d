"""QC pictures (femurunet segment --qc) and the extension's pictures: sizes as stated, outline exactly on the labels."""
import re
from pathlib import Path

import numpy as np
from PIL import Image
from skimage.segmentation import find_boundaries

from FemurUNetLib.geometry import Geometry
from FemurUNetLib.qc import DPI, FIGURE_SIZE, OUTLINE_RGB, overlay, panels, write_qc
from FemurUNetTrainLib.cli import main

REPO = Path(__file__).resolve().parents[1]


def cube_case(shape=(20, 40, 40)):
    ct = np.full(shape, -100, np.int16)
    label = np.zeros(shape, np.uint8)
    label[5:15, 10:20, 24:34] = 1          # on the patient's left (i -> left in LPS)
    ct[label > 0] = 800
    return ct, label


def test_outline_pixels_are_exactly_the_inner_boundary_of_the_labels():
    ct, label = cube_case()
    rgb = overlay(ct[10], label[10] > 0)
    coloured = np.all(np.isclose(rgb, OUTLINE_RGB), axis=2)
    assert np.array_equal(coloured, find_boundaries(label[10] > 0, mode="inner"))
    assert coloured.any() and not coloured[label[10] == 0].any()


def test_panels_cut_through_the_labels_with_the_spacing_as_aspect():
    ct, label = cube_case()
    geometry = Geometry(spacing=(0.5, 0.5, 2.0))
    views = {name: (rgb, aspect) for name, rgb, aspect in panels(ct, label, geometry)}
    assert set(views) == {"axial", "coronal", "sagittal (left)"}
    assert views["axial"][1] == 1.0 and views["coronal"][1] == 4.0 and views["sagittal (left)"][1] == 4.0
    for rgb, _ in views.values():
        assert np.all(np.isclose(rgb, OUTLINE_RGB), axis=2).any()       # every panel shows the outline


def test_qc_png_has_the_stated_size(tmp_path):
    ct, label = cube_case()
    path = write_qc(tmp_path / "qc.png", ct, label, Geometry(spacing=(1.0, 1.0, 2.0)), "cube")
    with Image.open(path) as im:
        assert im.size == (int(FIGURE_SIZE[0] * DPI), int(FIGURE_SIZE[1] * DPI))
    assert [p.name for p in tmp_path.iterdir()] == ["qc.png"]


def test_segment_writes_the_qc_picture_and_refuses_another_suffix(tmp_path, capsys, threshold_model_file):
    import SimpleITK as sitk
    ct, _ = cube_case()
    sitk.WriteImage(sitk.GetImageFromArray(ct), str(tmp_path / "ct.nii.gz"))
    code = main(["segment", str(tmp_path / "ct.nii.gz"), str(tmp_path / "out.nii.gz"), "--model",
                 str(threshold_model_file), "--qc", str(tmp_path / "qc.png"), "--quiet"])
    assert code == 0 and (tmp_path / "qc.png").is_file()
    code = main(["segment", str(tmp_path / "ct.nii.gz"), str(tmp_path / "out2.nii.gz"), "--qc", str(tmp_path / "qc.jpg")])
    assert code == 2 and "name it *.png" in capsys.readouterr().err and not (tmp_path / "out2.nii.gz").exists()


def test_the_extension_page_pictures_exist():
    urls = re.search(r'EXTENSION_SCREENSHOTURLS "([^"]+)"', (REPO / "CMakeLists.txt").read_text()).group(1).split()
    assert urls
    for url in urls:
        path = REPO / url.split("/main/", 1)[1]
        with Image.open(path) as im:
            assert im.format == "PNG" and min(im.size) >= 300, path
