"""FemurUNetLib.cleanup: pieces detached from each side's femur are removed, the femurs and their large pieces
kept; through segment_volume by default and not with keep_all_pieces."""
import numpy as np
import pytest

from FemurUNetLib import segment_volume
from FemurUNetLib.cleanup import BELOW_FEMUR_MM, KEEP_FRACTION, femur_level, remove_detached_pieces
from FemurUNetLib.geometry import Geometry
from conftest import threshold_unet
from test_plausibility import SIDED, add_bone, flip_x, two_femurs


def shin_case():
    """Two femurs over slices 20-59; on the left a detached 'tibia' (slices 0-7, 15 % of the femur's volume) and
    a fleck (slice 17); on the right a detached piece of 30 % of the femur (kept: above KEEP_FRACTION)."""
    hu, label, g = two_femurs(slices=60)
    label[:20] = 0
    hu[:20][hu[:20] > 100] = 40
    add_bone(hu, label, g, 90.0, 0, 8, radius=12.0)                  # left "tibia": 15 % of the femur
    add_bone(hu, label, g, 90.0, 17, 18, radius=4.0)                 # a fleck between them
    add_bone(hu, label, g, -90.0, 0, 12, radius=14.0)                # right: 12 of 40 slices = 30 %
    return hu, label, g


def test_detached_pieces_are_removed_per_side_and_large_ones_kept():
    hu, label, g = shin_case()
    femurs = label.copy()
    femurs[:18, :, 64:] = 0                                          # +x (left) is high i on this grid
    removed = remove_detached_pieces(label, hu, g)
    assert KEEP_FRACTION < 12 / 40
    assert np.array_equal(label, femurs)                             # in place: left tibia and fleck gone
    assert removed == np.count_nonzero(shin_case()[1]) - np.count_nonzero(femurs)


def test_sides_come_from_the_labels_when_the_model_has_them_and_any_grid_gives_the_same_result():
    hu, label, g = shin_case()
    expected = label.copy()
    remove_detached_pieces(expected, hu, g)
    sided = label * np.where(np.arange(label.shape[2]) >= 64, 1, 2).astype(np.uint8)   # 1 = left, 2 = right
    remove_detached_pieces(sided, hu, g, SIDED)
    assert np.array_equal(sided > 0, expected > 0) and set(np.unique(sided)) == {0, 1, 2}
    (hu_f, label_f), g_f = flip_x([hu, label], g)
    remove_detached_pieces(label_f, hu_f, g_f)
    assert np.array_equal(label_f[:, :, ::-1], expected)


def test_diagonal_contact_joins_pieces_and_nothing_happens_to_one_piece_or_none():
    hu, label, g = two_femurs(slices=10)
    label[:] = 0
    label[2:8, 40:44, 40:44] = 1
    label[8, 44, 44] = 1                                             # touches by a corner only: the same piece
    before = label.copy()
    assert remove_detached_pieces(label, hu, g) == 0 and np.array_equal(label, before)
    empty = np.zeros_like(label)
    assert remove_detached_pieces(empty, hu, g) == 0 and not empty.any()
    with pytest.raises(ValueError, match=r"keep_fraction must be within \[0, 1\], got 1.5"):
        remove_detached_pieces(label, hu, g, keep_fraction=1.5)


def test_segment_volume_removes_detached_pieces_unless_asked_to_keep_them():
    hu, truth, g = shin_case()
    net = threshold_unet(300.0)
    cleaned = segment_volume(hu, g, net, device="cpu", autocast=False)
    kept = segment_volume(hu, g, net, device="cpu", autocast=False, keep_all_pieces=True)
    assert kept.labelmap[:8, :, 64:].any() and kept.labelmap[17, :, 64:].any()   # the network labels every piece
    expected = kept.labelmap.copy()
    removed = remove_detached_pieces(expected, hu, g)
    assert removed > 0 and np.array_equal(cleaned.labelmap, expected)
    assert cleaned.stats["detached_voxels_removed"] == removed and kept.stats["detached_voxels_removed"] == 0


def leg_case():
    """Slices 5 mm apart (k toward superior). Femurs over slices 60-99; on the left a 'talus' at slices 0-9 (25 %
    of the femur: kept by the fraction), on the right the femur's distal end parted at slices 40-54."""
    hu, label, g = two_femurs(slices=100)
    label[:60] = 0
    hu[:60][hu[:60] > 100] = 40
    add_bone(hu, label, g, 90.0, 0, 10)
    add_bone(hu, label, g, -90.0, 40, 55)
    return hu, label, g


def test_pieces_far_below_both_femurs_go_and_a_femur_parted_near_its_end_stays():
    hu, label, g = leg_case()
    assert BELOW_FEMUR_MM < (60 - 9) * 5.0 and BELOW_FEMUR_MM > (60 - 54) * 5.0
    expected = label.copy()
    expected[:10] = 0
    assert remove_detached_pieces(label, hu, g) == np.count_nonzero(leg_case()[1][:10])
    assert np.array_equal(label, expected)
    kept = leg_case()[1]
    remove_detached_pieces(kept, hu, g, below_mm=300.0)
    assert np.array_equal(kept, leg_case()[1])


def test_the_reference_is_the_lowest_of_both_sides_largest_pieces_and_any_grid_direction_agrees():
    """Left: a femoral head alone at slices 90-99 and the left distal femur at slices 10-19 (its shaft fell to the
    other side); right: a femur over slices 10-99. The left distal piece is far below the head, not below the right."""
    hu, label, g = two_femurs(slices=100)
    label[:, :, 64:] = 0
    add_bone(hu, label, g, 90.0, 90, 100)
    add_bone(hu, label, g, 90.0, 10, 20)
    label[:10] = 0
    before = label.copy()
    assert remove_detached_pieces(label, hu, g) == 0 and np.array_equal(label, before)
    hu2, label2, g2 = leg_case()
    down = Geometry(g2.spacing, (g2.origin[0], g2.origin[1], 99 * 5.0), np.diag([1.0, 1.0, -1.0]))
    flipped = label2[::-1].copy()                                      # k now runs toward the feet
    remove_detached_pieces(flipped, hu2[::-1].copy(), down)
    remove_detached_pieces(label2, hu2, g2)
    assert np.array_equal(flipped[::-1], label2) and not label2[:10].any()


def test_a_side_whose_largest_piece_lies_far_below_the_other_femur_is_no_femur():
    """Left: a femur over slices 60-99. Right: its femur parted at slices 85-99 and a larger 'ankle' piece at slices
    0-24, wholly far below the left femur: that piece goes, and the right femur's piece is the reference."""
    hu, label, g = two_femurs(slices=100)
    label[:60] = 0
    label[:, :, :64] = 0
    add_bone(hu, label, g, -90.0, 85, 100)
    add_bone(hu, label, g, -90.0, 0, 25)
    expected = label.copy()
    expected[:25] = 0
    assert femur_level({"left": (300.0, 495.0), "right": (0.0, 120.0)}) == 300.0
    assert femur_level({"left": (300.0, 495.0), "right": (0.0, 160.0)}) == 0.0
    assert remove_detached_pieces(label, hu, g) > 0 and np.array_equal(label, expected)
