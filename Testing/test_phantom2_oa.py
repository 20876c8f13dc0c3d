"""Phantom v2's osteoarthritic hips (phantom2_oa): drawn within their ranges from the seed's own stream, dense bone,
cysts and osteophytes where the femoral head meets the acetabulum, the label grown by the femur's osteophytes only
and exact on any grid, never a change to a case made without it."""
from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import ndimage

from FemurUNetLib import phantom2
from FemurUNetLib.phantom2 import _scene, _streams, femur_truth, generate_case, make_scene
from FemurUNetLib.phantom2_anatomy import SIDES
from FemurUNetLib.phantom2_oa import (BEAD_RADIUS_MM, CONE_DEG, CYST_HU, CYST_RADIUS_MM, DEPTH_MM, MAX_BEADS,
                                      MAX_CYSTS, OSTEOPHYTE_P, SCLEROSIS_HU, draw_osteoarthritis, draw_osteophytes,
                                      load_axis)
from test_phantom2 import _centres, _grid, _in_fov, _q

SEED = 98486        # a pelvis with a 5.5 mm cyst in the left femoral head, osteophytes at both rims only (checked)
GROWN = 13          # osteophytes on both femoral heads and at both rims (checked)
GRID = {"coverage": "pelvis", "spacing": (2.5, 2.5, 2.5), "direction": np.eye(3)}


@pytest.fixture(scope="module")
def pair():
    return generate_case(SEED, **GRID), generate_case(SEED, oa=True, **GRID)


def test_the_draws_stay_in_their_ranges_and_the_cysts_in_the_weight_bearing_zone():
    rng = np.random.default_rng(0)
    draws = [draw_osteoarthritis(rng) for _ in range(300)]
    hips = [d[side] for d in draws for side in SIDES]
    for values, (lo, hi) in (([h.depth for h in hips], DEPTH_MM), ([h.hu for h in hips], SCLEROSIS_HU),
                             ([h.cone_deg for h in hips], CONE_DEG)):
        assert lo <= min(values) and max(values) <= hi and max(values) - min(values) > 0.9 * (hi - lo)
    counts = [len(h.cysts) for h in hips]
    assert set(counts) == set(range(MAX_CYSTS + 1)) and abs(np.mean(counts) - MAX_CYSTS / 2) < 0.2
    for d in draws:
        for side, hip in d.items():
            for cyst in hip.cysts:
                angle = math.degrees(math.acos(np.clip(np.dot(cyst.direction, load_axis(side)), -1, 1)))
                assert angle <= 0.8 * hip.cone_deg + 1e-6
                assert CYST_RADIUS_MM[0] <= cyst.radius <= CYST_RADIUS_MM[1] and CYST_HU[0] <= cyst.hu <= CYST_HU[1]
    assert load_axis("left")[0] > 0 > load_axis("right")[0] and load_axis("left")[2] > 0.9   # up, tilted lateral


def test_the_new_stream_leaves_the_earlier_ten_as_they_were():
    for seed in (0, 9000, SEED):
        before = np.random.default_rng([seed, 2]).spawn(10)
        now = _streams(seed)
        assert len(now) >= 11       # the eleventh: osteoarthritis (later ones: test_phantom2_arthroplasty)
        assert [g.bit_generator.state for g in now[:10]] == [g.bit_generator.state for g in before]


def test_osteoarthritis_changes_bone_values_at_the_hips_only_and_rim_osteophytes_not_the_label(pair):
    plain, oa = pair
    beads = [b.bone for hip in make_scene(SEED, oa=True).oa.values() for b in hip.osteophytes]
    assert beads and all(b.startswith("hip_") for b in beads)
    assert not plain.oa and oa.oa and np.array_equal(plain.label, oa.label)
    assert np.array_equal(generate_case(SEED, oa=False, **GRID).ct, plain.ct)
    diff = oa.ct.astype(np.int32) - plain.ct
    changed = np.abs(diff) > 50
    assert changed.sum() * 2.5 ** 3 / 1000 > 10                              # ml: both hips
    femur = plain.label > 0
    near = ndimage.distance_transform_edt(~femur, sampling=2.5) <= 25.0     # depth <= 15 mm beyond the head, blur
    assert not (changed & ~near).any()
    top = np.nonzero(femur.any(axis=(1, 2)))[0].max()                       # k grows superior (identity direction)
    assert np.nonzero(changed.any(axis=(1, 2)))[0].min() >= top - 90 / 2.5  # the heads, not the shafts or knees
    for value in (1, 2):
        side = oa.label == value
        assert diff[side & changed].mean() > 150                            # sclerosis: denser bone in each head


def test_a_cyst_is_a_hole_of_fluid_in_the_dense_bone(pair):
    plain, oa = pair
    drawn = draw_osteoarthritis(_streams(SEED)[10])
    assert any(c.in_femur and c.radius > 5.0 for c in drawn["left"].cysts)
    diff = oa.ct.astype(np.int32) - plain.ct
    hole = (oa.label == 1) & (diff < -150)
    assert hole.sum() > 0 and oa.ct[hole].mean() < plain.ct[hole].mean() - 150


def _voxel(geometry, rotation, point) -> tuple:
    """(k, j, i) of the voxel nearest the anatomical ``point`` on an identity-direction grid."""
    i, j, k = np.rint((rotation @ np.asarray(point) - np.asarray(geometry.origin)) / geometry.spacing).astype(int)
    return k, j, i


def test_rim_osteophytes_are_bone_where_there_was_none(pair):
    plain, oa = pair
    geometry, _, rotation, _ = _grid(SEED, "pelvis", GRID["spacing"], GRID["direction"])
    beads = [b for hip in make_scene(SEED, oa=True).oa.values() for b in hip.osteophytes if b.radius >= 3.0]
    at = [_voxel(geometry, rotation, b.centre) for b in beads]
    before, after = (np.array([c.ct[v] for v in at], float) for c in (plain, oa))
    assert len(beads) >= 6 and before.mean() < 600 and after.mean() > before.mean() + 400 and after.min() > 700


def test_the_osteophyte_draws_stay_in_their_ranges_and_on_the_joint():
    ind = make_scene(GROWN).ind
    draws = [draw_osteophytes(np.random.default_rng(n), ind) for n in range(150)]
    for where, kind in (("head", "femur_"), ("rim", "hip_")):
        with_them = np.mean([any(b.bone == kind + side for b in d) for d in draws for side in SIDES])
        counts = [sum(b.bone == kind + side for b in d) for d in draws for side in SIDES]
        assert OSTEOPHYTE_P[where] - 0.15 < with_them <= OSTEOPHYTE_P[where] + 0.1 and max(counts) <= MAX_BEADS
    for bead in (b for d in draws for b in d):
        side = bead.bone.split("_")[1]
        assert BEAD_RADIUS_MM[0] <= bead.radius <= BEAD_RADIUS_MM[1]
        r = np.linalg.norm(np.subtract(bead.centre, ind.marks[f"head_{side}"]))
        to_bone = ind.bone_distance(bead.bone, _q(np.asarray(bead.centre)[None]))[0]
        if bead.bone.startswith("femur"):     # standing out of the head's surface
            assert ind.head_radius - 8.0 - bead.radius < r < ind.head_radius + 15.0 and to_bone < bead.radius
        else:                                 # beyond the joint space, at the hip bone's rim
            assert r - bead.radius >= ind.head_radius + ind.hip_gap[side] and to_bone < bead.radius + 5.0


def test_femur_osteophytes_do_not_depend_on_the_hip_bones_shape():
    """generate_case(hips=...) forces a hip shape; femur_truth does not know it, so the femur's beads must not."""
    streams = [_streams(GROWN) for _ in range(2)]
    scenes = [_scene(s[0], s[5], s[8], s[9], hips) for s, hips in zip(streams, ("atlas", "mri2psm"))]
    for scene, s in zip(scenes, streams):
        phantom2.osteoarthritic(scene, s[10])
    femur = [[b for hip in sc.oa.values() for b in hip.osteophytes if b.bone.startswith("femur")] for sc in scenes]
    assert femur[0] and femur[0] == femur[1]


def test_femur_osteophytes_grow_the_label_exactly_as_the_truth_on_an_oblique_grid():
    spacing, direction = (2.0, 2.5, 1.5), np.array([[0.96, -0.28, 0.0], [0.28, 0.96, 0.0], [0.0, 0.0, 1.0]])
    plain, oa = (generate_case(GROWN, coverage="pelvis", spacing=spacing, direction=direction, oa=v)
                 for v in (False, True))
    geometry, shape, rotation, fov = _grid(GROWN, "pelvis", spacing, direction)
    lps, anat = _centres(geometry, shape, rotation)
    inside = _in_fov(geometry, shape, lps, fov, margin=2 * max(spacing))
    grown = (oa.label > 0) & (plain.label == 0)
    assert not ((plain.label > 0) & (oa.label != plain.label)).any()
    assert grown.sum() * np.prod(spacing) / 1000 > 0.3                      # ml, both heads
    scene = make_scene(GROWN, oa=True)
    for value, side in ((1, "left"), (2, "right")):
        far = np.linalg.norm(anat - scene.ind.marks[f"head_{side}"], axis=-1) > scene.ind.head_radius + 15.0
        assert (grown & (oa.label == value)).any() and not (grown & (oa.label == value) & far).any()
    truth = femur_truth(GROWN, _q(anat), oa=True)
    wrong = (oa.label != truth) & inside
    assert (truth[inside] > 0).sum() > (femur_truth(GROWN, _q(anat))[inside] > 0).sum()
    assert not wrong.any(), f"{int(wrong.sum())} voxels differ from the truth with osteophytes"
