"""Phantom v2's third hip bone shape (MRI2PSM): loaded, seated round the femoral heads of both atlas bodies, a
mirrored pair that meets at the symphysis, drawn for a share of individuals, forced on request, and never a
change to the femur label."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from conftest import REPO

from FemurUNetLib.errors import FemurUNetError
from FemurUNetLib.phantom2 import _scene, _streams, femur_truth, generate_case, make_scene
from FemurUNetLib.phantom2_anatomy import ATLAS_DIR, BODIES, LABEL, SIDES, load_body, make_individual
from FemurUNetLib.phantom2_hips import HIP_SHAPES, MRI_HIP_P, mri2psm_hips, with_hip_shape


def _grid(lo, hi, step=1.0):
    axes = [np.arange(a, b, step, dtype=np.float32) for a, b in zip(lo, hi)]
    z, y, x = np.meshgrid(axes[2], axes[1], axes[0], indexing="ij")
    return x, y, z


def _ray(origin, direction, length=60.0):
    r = np.arange(0.0, length, 0.25)
    return r, tuple((origin[c] + r * direction[c]).astype(np.float32) for c in range(3))


def test_the_hip_bone_is_thinner_than_the_atlas_hips():
    for body in BODIES:
        atlas, _ = load_body(body)
        hips = mri2psm_hips(body)
        x, y, z = _grid(*hips["hip_right"].bounds)
        mri_ml = (hips["hip_right"].distance((x, y, z)) < 0).sum() / 1000
        atlas_ml = (atlas["hip_right"].sdf < 0).sum() / 1000
        assert 300 < mri_ml < 420 and atlas_ml > 450, (body, mri_ml, atlas_ml)


@pytest.mark.parametrize("body", BODIES)
def test_the_socket_surrounds_each_femoral_head_from_above_and_from_the_pelvis(body):
    _, marks = load_body(body)
    radius = float(marks["head_radius"])
    hips = mri2psm_hips(body)
    for side, sign in SIDES.items():
        head = marks[f"head_{side}"]
        hip = hips[f"hip_{side}"]
        assert hip.distance(tuple(np.array([c], np.float32) for c in head))[0] > 0.5 * radius   # the head is free
        for direction in ((0, 0, 1), (-sign, 0, 0), (-sign * 0.7, 0, 0.7)):                     # roof, floor
            r, ray = _ray(head, np.asarray(direction, float) / np.linalg.norm(direction))
            inside = hip.distance(ray) < 0
            assert inside.any(), (side, direction)
            assert abs(r[int(np.argmax(inside))] - radius) < 5.0, (side, direction)              # the socket's wall


@pytest.mark.parametrize("body", BODIES)
def test_the_left_hip_mirrors_the_right_and_they_meet_at_the_symphysis(body):
    hips = mri2psm_hips(body)
    x, y, z = _grid((-20, -120, -120), (21, 120, 40))
    left, right = hips["hip_left"].distance((x, y, z)), hips["hip_right"].distance((-x, y, z))
    np.testing.assert_allclose(left, right, atol=1e-4)
    right = hips["hip_right"].distance((x, y, z))
    assert not ((left < 0) & (right < 0)).any()                        # no overlap
    gap = np.abs(x[(left < 0)]).min() + np.abs(x[(right < 0)]).min()
    assert 2.0 <= gap <= 7.0                   # a 4 mm symphysis disc (voxel centres of a 1 mm grid), not 17 mm


def test_a_third_of_individuals_draw_the_mri2psm_hips_from_their_own_stream():
    drawn = [with_hip_shape(make_individual(_streams(s)[0]), _streams(s)[8]).hips for s in range(300)]
    share = drawn.count("mri2psm") / len(drawn)
    assert abs(share - MRI_HIP_P) < 3 * np.sqrt(MRI_HIP_P * (1 - MRI_HIP_P) / len(drawn))
    ind = make_scene(next(s for s, h in enumerate(drawn) if h == "mri2psm")).ind
    assert ind.hips == "mri2psm" and type(ind.bones["hip_left"]).__name__ == "PlacedBone"


def test_a_forced_shape_changes_the_hips_not_the_femur_label():
    seed = 9001
    atlas = generate_case(seed, coverage="pelvis", spacing=(4.0, 4.0, 4.0), hips="atlas")
    mri = generate_case(seed, coverage="pelvis", spacing=(4.0, 4.0, 4.0), hips="mri2psm")
    assert (atlas.hips, mri.hips) == ("atlas", "mri2psm") and atlas.body == mri.body
    assert not np.array_equal(atlas.ct, mri.ct)
    points = _grid((-140, -80, -120), (141, 80, 60), 3.0)
    scenes = {h: _scene(*(_streams(seed)[i] for i in (0, 5, 8, 9)), hips=h) for h in HIP_SHAPES}
    truth = femur_truth(seed, points)                                  # the seed's own draw
    for side in SIDES:
        femurs = [scenes[h].ind.bone_distance(f"femur_{side}", points) for h in HIP_SHAPES]
        assert np.array_equal(*femurs) and (femurs[0] < 0).sum() > 1000
        assert np.array_equal(truth == LABEL[side], femurs[0] < 0)
    hips = [scenes[h].ind.bone_distance("hip_left", points) for h in HIP_SHAPES]
    assert not np.allclose(*hips, atol=2.0)


def test_an_unknown_hip_shape_is_refused_with_the_choices():
    with pytest.raises(FemurUNetError, match="hips must be one of atlas, mri2psm, got 'bony'"):
        generate_case(9001, hips="bony")
    assert HIP_SHAPES == ("atlas", "mri2psm")


def test_the_shipped_file_is_what_the_build_script_makes_from_the_meshes(tmp_path, bone_meshes):
    script = REPO / "FemurUNet" / "Scripts" / "build_mri2psm_hip.py"
    done = subprocess.run([sys.executable, str(script), str(bone_meshes), str(tmp_path)], capture_output=True, text=True,
                          cwd=script.parent)
    assert done.returncode == 0, done.stderr
    shipped = ATLAS_DIR / "mri2psm_hip.npz"
    with np.load(tmp_path / "mri2psm_hip.npz") as built, np.load(shipped) as z:
        assert sorted(built.files) == sorted(z.files) == ["box_vh_female", "box_vh_male", "origin", "sdf",
                                                           "to_vh_female", "to_vh_male"]
        for key in z.files:
            np.testing.assert_allclose(built[key], z[key], atol=1e-3, err_msg=key)
    assert (tmp_path / "LICENSE_mri2psm_zlib.txt").read_bytes() == (ATLAS_DIR / "LICENSE_mri2psm_zlib.txt").read_bytes()
