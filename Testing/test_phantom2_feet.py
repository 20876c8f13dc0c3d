"""Phantom v2 feet (phantom2_feet): drawn ranges, bones inside the skin and apart at the ankle joint, leg scans that
run into the foot show its bones unlabelled, and nothing changes above the feet."""
from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import pytest

from FemurUNetLib import phantom2
from FemurUNetLib.phantom2 import generate_case, make_grid, make_scene
from FemurUNetLib.phantom2_body import skin_distance
from FemurUNetLib.phantom2_feet import FOOT_BELOW_P, bone_parts, draw_feet

SEEDS = (90000, 90004, 90007, 90010)


@lru_cache(maxsize=None)
def _scene(seed):
    return make_scene(seed)


def _grid(lo, hi, step):
    axes = [np.arange(a, b + step / 2, step) for a, b in zip(lo, hi)]
    return tuple(c.ravel().astype(np.float32) for c in np.meshgrid(*axes, indexing="ij"))


def _leg_frame(ind, side):
    """(ankle mark, leg axis toward the knee, anterior, lateral) of the unturned leg."""
    knee, ankle = ind.marks[f"knee_{side}"], ind.marks[f"ankle_{side}"]
    leg = (knee - ankle) / np.linalg.norm(knee - ankle)
    front = np.array([0.0, -1.0, 0.0]) + leg[1] * leg
    front /= np.linalg.norm(front)
    return ankle, leg, front, (1 if side == "left" else -1) * np.cross(leg, front)


def _pose(foot, ind, side):
    """(plantar flexion, external rotation) in degrees, read back from the foot's axes."""
    _, leg, front, lateral = _leg_frame(ind, side)
    toes = foot.axes[0]
    flex = math.asin(-float(toes @ leg))
    turned = (toes + math.sin(flex) * leg) / math.cos(flex)
    return math.degrees(flex), math.degrees(math.atan2(turned @ lateral, turned @ front))


def test_drawn_feet_stay_in_their_stated_ranges():
    ind = _scene(SEEDS[0]).ind
    draws = [draw_feet(np.random.default_rng(n), ind) for n in range(400)]
    below = np.array([d["below"] for d in draws])
    share = float(np.mean(below > 0))
    assert abs(share - FOOT_BELOW_P) < 4 * math.sqrt(FOOT_BELOW_P * (1 - FOOT_BELOW_P) / len(draws)), share
    assert 20 <= below[below > 0].min() and below.max() <= 130
    scale = float(np.mean(ind.marks["scale"]))
    for side in ("left", "right"):
        feet = [d[side] for d in draws]
        poses = np.array([_pose(f, ind, side) for f in feet])
        assert 0 <= poses[:, 0].min() < 3 and 32 < poses[:, 0].max() <= 35.001, poses[:, 0]
        assert -5.001 <= poses[:, 1].min() < -3 and 27 < poses[:, 1].max() <= 30.001, poses[:, 1]
        sizes = np.array([f.size for f in feet]) / scale
        assert 0.93 <= sizes.min() < 0.95 and 1.05 < sizes.max() <= 1.07
        gaps = np.array([f.gap for f in feet])
        assert 1.5 <= gaps.min() < 1.6 and 2.9 < gaps.max() <= 3.0
        ankle, leg, front, lateral = _leg_frame(ind, side)
        for f in feet:                                   # the foot turns about the talar dome, under the tibia
            assert np.allclose(f.axes @ f.axes.T, np.eye(3), atol=1e-9)
            assert np.allclose(f.origin, ankle + 10.0 * lateral - 3.0 * front + 4.0 * leg, atol=1e-9)


@pytest.mark.parametrize("seed", SEEDS)
def test_foot_bones_lie_in_their_boxes_inside_the_skin_and_apart_at_the_ankle(seed):
    scene = _scene(seed)
    ind, feet = scene.ind, scene.body["feet"]
    for side in ("left", "right"):
        foot = feet[side]
        for name, lo, hi, distance in bone_parts(ind, foot, side):
            q = _grid(lo, hi, 1.5)
            d = distance(q)
            inside = d < 0
            assert inside.sum() * 1.5 ** 3 > 2000, name                          # mm3: a bone, not a speck
            faces = np.isclose(q[0], q[0].min()) | np.isclose(q[0], q[0].max()) | np.isclose(q[1], q[1].min()) | \
                np.isclose(q[1], q[1].max()) | np.isclose(q[2], q[2].min()) | np.isclose(q[2], q[2].max())
            assert d[faces].min() > 0, name                                     # the box holds the bone
            bone = tuple(c[inside] for c in q)
            assert skin_distance(bone, ind, scene.body).max() < -1.0, name       # under the skin
            assert (bone[2] < ind.marks[f"ankle_{side}"][2] + 25).all(), name
            if name.endswith("talus"):
                for other in (f"tibia_{side}", f"fibula_{side}"):
                    assert ind.bone_distance(other, bone).min() >= foot.gap - 1e-3, other


def test_a_leg_scan_into_the_foot_shows_its_bones_unlabelled_and_marks_them():
    seed = next(s for s in range(90000, 90100) if make_scene(s).body["feet"]["below"] > 80)
    spacing = (1.5, 1.5, 3.0)
    case = generate_case(seed, coverage="knee_to_ankle", spacing=spacing, direction=np.eye(3))
    scene = make_scene(seed)
    rotation = make_grid(phantom2._streams(seed)[1], scene, "knee_to_ankle", spacing, np.eye(3))[2]
    anatomical_z = (case.geometry.physical_points(case.ct.shape) @ rotation)[..., 2]
    ankle = min(scene.ind.marks[f"ankle_{s}"][2] for s in ("left", "right"))
    assert np.array_equal(case.feet, anatomical_z < ankle - phantom2.FEET_MARGIN)
    assert case.feet.sum() * np.prod(spacing) > 1e6                      # mm3: the scan runs on into the feet
    assert (case.ct[case.feet] > 400).sum() * np.prod(spacing) > 10_000  # foot bone
    assert case.label[case.feet].sum() == 0 and case.label.sum() > 0     # unlabelled; the distal femur above
    assert generate_case(seed, coverage="pelvis", shape=(8, 32, 32)).feet is None


@pytest.mark.parametrize("coverage", ["pelvis", "hip_to_knee"])
def test_scans_that_end_above_the_feet_are_the_same_without_them(monkeypatch, coverage):
    shape = (24, 48, 48)
    with_feet = generate_case(30083, coverage=coverage, shape=shape)
    monkeypatch.setattr(phantom2, "with_feet", lambda scene, rng: scene)
    without = generate_case(30083, coverage=coverage, shape=shape)
    assert np.array_equal(with_feet.ct, without.ct) and np.array_equal(with_feet.label, without.label)
