"""Phantom v2's real proximal femurs (LibHip): loaded, seated on both atlas bodies, blended into one bone,
drawn for a share of individuals, and the atlas femurs untouched otherwise."""
from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from FemurUNetLib.phantom2 import make_scene
from FemurUNetLib.phantom2_anatomy import BODIES, SIDES, load_body
from FemurUNetLib.phantom2_libhip import BLEND, LIBHIP_P, load_real_femurs, real_femurs, subjects


def _point(p):
    return tuple(np.array([c], np.float32) for c in p)


def _grid_around(centre, lo, hi, step=1.0):
    axes = [np.arange(c + a, c + b, step, dtype=np.float32) for c, a, b in zip(centre, lo, hi)]
    z, y, x = np.meshgrid(axes[2], axes[1], axes[0], indexing="ij")
    return x, y, z


def test_seven_femurs_of_four_men():
    femurs = load_real_femurs()
    assert sorted(femurs) == ["m3_left", "m3_right", "m4_left", "m4_right", "m7_left", "m7_right", "m8_left"]
    assert subjects() == ["m3", "m4", "m7", "m8"]
    for f in femurs.values():
        assert sorted(f.to_body) == sorted(BODIES)
        assert (f.bone.sdf < 0).sum() / 1000 > 120               # ml: head, neck, trochanters at least


@pytest.mark.parametrize("body", BODIES)
@pytest.mark.parametrize("subject", ["m3", "m4", "m7", "m8"])
def test_each_mans_femoral_heads_sit_where_the_atlas_heads_were(body, subject):
    bones, marks = load_body(body)
    radius = float(marks["head_radius"])
    for side, femur in real_femurs(subject, body, bones).items():
        head = marks[f"head_{side[6:]}"]
        assert femur.distance(_point(head))[0] < -0.75 * radius          # the head's centre, deep in bone (atlas: -0.8)
        # along the six axes from the centre the surface is within a few mm of the atlas head's radius
        for axis in np.vstack([np.eye(3), -np.eye(3)]):
            if axis[2] < 0 or axis[0] * SIDES[side[6:]] > 0:
                continue                                                 # the neck's side: not a sphere
            r = np.arange(0.0, 45.0, 0.25)
            ray = femur.distance(tuple((head[c] + r * axis[c]).astype(np.float32) for c in range(3)))
            assert abs(r[int(np.argmax(ray >= 0))] - radius) < 4.0, (side, axis)


@pytest.mark.parametrize("subject", ["m3", "m7"])         # the longest and the shortest femurs
def test_the_blended_femur_is_one_bone_whose_shaft_narrows_smoothly_through_the_blend(subject):
    bones, marks = load_body("vh_female")
    femur = real_femurs(subject, "vh_female", bones)["femur_left"]
    x, y, z = _grid_around(marks["head_left"], (-50, -50, -260), (70, 50, 35))
    inside = femur.distance((x, y, z)) < 0
    assert ndimage.label(inside)[1] == 1
    area = inside.sum(axis=(1, 2)).astype(float)                 # per 1 mm slice, mm^2
    shaft = area[:150]                                           # well below the lesser trochanter
    assert shaft.min() > 300
    assert np.max(np.abs(np.diff(shaft)) / shaft[1:]) < 0.03     # no step where they meet (m3 switched: 0.055)


def test_below_the_blend_the_atlas_femur_above_it_the_real_one():
    bones, marks = load_body("vh_male")
    femur = real_femurs("m4", "vh_male", bones)["femur_right"]
    pts = _grid_around(marks["head_right"], (-60, -40, -220), (60, 40, 30), step=3.0)
    got = femur.distance(pts)
    m = femur.to_real
    height = m[2, 0] * pts[0] + m[2, 1] * pts[1] + m[2, 2] * pts[2] + m[2, 3] - femur.cut
    below, above = height < BLEND[0], height > BLEND[1]
    assert below.sum() > 1000 and above.sum() > 1000
    np.testing.assert_array_equal(got[below], femur.atlas.distance([c[below] for c in pts]))
    own = [m[r, 0] * pts[0] + m[r, 1] * pts[1] + m[r, 2] * pts[2] + m[r, 3] for r in range(3)]
    np.testing.assert_allclose(got[above], femur.real.distance([c[above].astype(np.float32) for c in own]),
                               atol=1e-3)
    assert np.abs(got[above] - femur.atlas.distance([c[above] for c in pts])).max() > 3.0   # another shape


def test_a_share_of_individuals_get_one_mans_femurs_the_rest_keep_the_atlas_femurs():
    drawn = []
    for seed in range(300):
        ind = make_scene(seed).ind
        drawn.append(ind.femurs)
        left, right = ind.bones["femur_left"], ind.bones["femur_right"]
        if ind.femurs == "atlas":
            assert left is load_body(ind.body)[0]["femur_left"] and right is load_body(ind.body)[0]["femur_right"]
        else:
            assert left.name.startswith(ind.femurs) and right.name.startswith(ind.femurs)   # one man, both sides
    share = np.mean([d != "atlas" for d in drawn])
    assert abs(share - LIBHIP_P) < 4.5 * np.sqrt(LIBHIP_P * (1 - LIBHIP_P) / 300), share
    assert set(drawn) == {"atlas", *subjects()}
