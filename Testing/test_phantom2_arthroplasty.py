"""Phantom v2's total hip arthroplasty (phantom2_arthroplasty): drawn within its ranges in 12 % of scenes or asked
for from the seed's own stream, the head and neck gone (with any neck screws) and the greater trochanter kept, metal
ball in a liner and cup, the component labelled femur and the label exact on any grid."""
from __future__ import annotations

import numpy as np
import pytest

from FemurUNetLib import phantom2, phantom2_scene
from FemurUNetLib.phantom2 import _streams, femur_truth, generate_case, make_scene
from FemurUNetLib.phantom2_arthroplasty import (BALL_MM, CUP_EXTRA_MM, CUT_MM, SHELL_MM, SPARED_MM, STEM_REACH,
                                                component_points, draw_arthroplasty, scene_arthroplasty)
from FemurUNetTrainLib import cli
from test_phantom2 import _centres, _grid, _in_fov, _q

SEED = 98558        # a pelvis whose scene draws an arthroplasty (checked below)
PLAIN = 98559       # one whose scene draws none
GRID = {"coverage": "pelvis", "spacing": (1.5, 2.5, 2.0), "direction": np.eye(3)}     # rendered directly: fast


@pytest.fixture(scope="module")
def pair():
    return generate_case(PLAIN, **GRID), generate_case(PLAIN, tha=True, **GRID)


def test_the_draws_stay_in_their_ranges_and_the_twelfth_stream_leaves_the_others():
    draws = [draw_arthroplasty(np.random.default_rng(n)) for n in range(300)]
    for values, (lo, hi) in (([d.ball for d in draws], BALL_MM), ([d.cup for d in draws], CUP_EXTRA_MM),
                             ([d.shell for d in draws], SHELL_MM), ([d.cut for d in draws], CUT_MM),
                             ([d.reach for d in draws], STEM_REACH)):
        assert lo <= min(values) and max(values) <= hi and max(values) - min(values) > 0.9 * (hi - lo)
    assert 0.4 < np.mean([d.side == "left" for d in draws]) < 0.6
    for seed in (0, SEED):
        before, now = np.random.default_rng([seed, 2]).spawn(11), _streams(seed)
        assert len(now) == 12 and [g.bit_generator.state for g in now[:11]] == [g.bit_generator.state for g in before]


def test_a_scenes_own_takes_the_four_draws_its_implant_took_before():
    rng, same = np.random.default_rng(5), np.random.default_rng(5)
    own = scene_arthroplasty(rng)
    same.random(4)                                      # so the scene's later draws (knee, screws, valve) stay
    assert rng.bit_generator.state == same.bit_generator.state and own.shell == 4.0 and own.cut == np.mean(CUT_MM)
    assert BALL_MM[0] <= own.ball <= BALL_MM[1] and STEM_REACH[0] <= own.reach <= STEM_REACH[1]


def test_scenes_draw_one_in_about_an_eighth_and_an_asked_one_takes_its_place():
    drawn = [n for n in range(200) if "arthroplasty" in make_scene(n).flags]
    assert 10 <= len(drawn) <= 40                                       # IMPLANT_P["hip"] 0.12: 24 expected
    own, asked, plain = make_scene(SEED), make_scene(SEED, tha=True), make_scene(PLAIN)
    names = lambda scene: [i.name for i in scene.items]
    assert names(own).count("tha_component") == names(asked).count("tha_component") == 1
    assert "arthroplasty" not in plain.flags and "tha_component" not in names(plain)
    assert asked.flags["arthroplasty"] == draw_arthroplasty(_streams(SEED)[11]) != own.flags["arthroplasty"]
    assert len(asked.metal_points) == len(own.metal_points)            # one arthroplasty's two


def test_neck_screws_on_its_side_go_with_the_neck():
    plain, asked = make_scene(13), make_scene(13, tha=True)            # left neck screws, the left hip replaced
    screws = lambda scene: [i for i in scene.items if i.name.startswith("screw")]
    assert screws(plain) and not screws(asked)
    assert len(asked.metal_points) == len(plain.metal_points) + 1       # the screws' point went, two came


def test_the_head_and_neck_are_gone_the_trochanter_stays_and_the_ball_is_metal_in_a_liner(pair):
    plain, tha = pair
    assert not plain.tha and tha.tha and tha.metal
    geometry, shape, rotation, _ = _grid(PLAIN, "pelvis", GRID["spacing"], GRID["direction"])
    _, anat = _centres(geometry, shape, rotation)
    scene = make_scene(PLAIN, tha=True)
    drawn = draw_arthroplasty(_streams(PLAIN)[11])
    value, other = (1, 2) if drawn.side == "left" else (2, 1)
    head, *_, axis = component_points(scene.ind, drawn)
    r = np.linalg.norm(anat - head, axis=-1)
    along = (anat - head) @ axis                                        # > 0 towards the head from its centre
    assert np.array_equal(plain.label == other, tha.label == other)     # the other hip as it was
    far = r > scene.ind.head_radius + SPARED_MM + 3.0
    assert np.array_equal((plain.label == value) & far, (tha.label == value) & far)     # trochanter, shaft
    bone_head = (plain.label == value) & (r > drawn.ball + 3.0) & (r < scene.ind.head_radius - 3.0) & (along > 0)
    assert bone_head.sum() > 100 and not (tha.label[bone_head]).any()   # the head's bone around the ball: gone
    ball = r < drawn.ball - 2.0
    assert (tha.label[ball] == value).all() and tha.ct[ball].min() > 2000
    liner = (r > drawn.ball + 1.5) & (r < scene.ind.head_radius + drawn.cup - drawn.shell - 1.5) & (along > 8.0)
    assert liner.sum() > 20 and np.median(tha.ct[liner]) < 100 and not tha.label[liner].any()


@pytest.mark.parametrize("seed, tha", [(PLAIN, True), (SEED, False)], ids=["asked", "drawn"])
def test_the_component_is_labelled_as_the_truth_on_an_oblique_grid(monkeypatch, seed, tha):
    spacing, direction = (1.5, 2.5, 2.0), np.array([[0.96, 0.0, -0.28], [0.0, 1.0, 0.0], [0.28, 0.0, 0.96]])
    case = generate_case(seed, coverage="pelvis", spacing=spacing, direction=direction, tha=tha)
    geometry, shape, rotation, fov = _grid(seed, "pelvis", spacing, direction)
    lps, anat = _centres(geometry, shape, rotation)
    inside = _in_fov(geometry, shape, lps, fov, margin=2 * max(spacing))
    truth = femur_truth(seed, _q(anat), tha=tha)
    monkeypatch.setitem(phantom2_scene.IMPLANT_P, "hip", 0.0)           # the same femurs, no arthroplasty
    assert (truth[inside] > 0).sum() < (femur_truth(seed, _q(anat))[inside] > 0).sum()
    wrong = (case.label != truth) & inside
    assert not wrong.any(), f"{int(wrong.sum())} voxels differ from the truth with an arthroplasty"


@pytest.mark.parametrize("key, said", [("oa", "osteoarthritic hips"), ("tha", "a hip arthroplasty")])
def test_the_sample_command_forces_an_on_request_hip_on_phantom_2_only(tmp_path, monkeypatch, capsys, key, said):
    asked = []
    monkeypatch.setattr(phantom2, "generate_case", lambda seed, **kw: asked.append(kw) or generate_case(
        seed, shape=(8, 32, 32), **kw))
    assert cli.main(["sample", str(tmp_path / "out"), "--seed", "3", f"--{key}", "--coverage", "pelvis"]) == 0
    assert asked == [{"coverage": "pelvis", key: True}] and said in capsys.readouterr().out
    assert cli.main(["sample", str(tmp_path / "v1"), "--phantom", "1", f"--{key}"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"--{key} needs --phantom 2" in err and not (tmp_path / "v1").exists()
