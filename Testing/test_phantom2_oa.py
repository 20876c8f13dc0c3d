"""Phantom v2's osteoarthritic hips (phantom2_oa): drawn within their ranges from the seed's own stream, dense bone
and cysts where the femoral head meets the acetabulum, never a change to the label or to a case made without it."""
from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import ndimage

from FemurUNetLib import phantom2
from FemurUNetLib.phantom2 import _streams, generate_case
from FemurUNetLib.phantom2_anatomy import SIDES
from FemurUNetLib.phantom2_oa import (CONE_DEG, CYST_HU, CYST_RADIUS_MM, DEPTH_MM, MAX_CYSTS, SCLEROSIS_HU,
                                      draw_osteoarthritis, load_axis)
from FemurUNetTrainLib import cli

SEED = 98486        # a pelvis with a 5.5 mm cyst in the left femoral head (checked below)
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
        assert len(now) == 11
        assert [g.bit_generator.state for g in now[:10]] == [g.bit_generator.state for g in before]


def test_osteoarthritis_changes_bone_values_at_the_hips_only_and_never_the_label(pair):
    plain, oa = pair
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


def test_the_sample_command_forces_it_on_phantom_2_only(tmp_path, monkeypatch, capsys):
    asked = []
    monkeypatch.setattr(phantom2, "generate_case", lambda seed, **kw: asked.append(kw) or generate_case(
        seed, shape=(8, 32, 32), **kw))
    assert cli.main(["sample", str(tmp_path / "out"), "--seed", "3", "--oa", "--coverage", "pelvis"]) == 0
    assert asked == [{"coverage": "pelvis", "oa": True}] and "osteoarthritic hips" in capsys.readouterr().out
    assert cli.main(["sample", str(tmp_path / "v1"), "--phantom", "1", "--oa"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--oa needs --phantom 2" in err and not (tmp_path / "v1").exists()
