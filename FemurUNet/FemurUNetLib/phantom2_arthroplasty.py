"""Total hip arthroplasty for phantom v2: the femoral head and neck resected, a metal femoral component (ball, neck,
stem in the canal) and an acetabular cup (metal shell, polyethylene liner) in their place.

The femur is cut by a plane across the neck (28-38 mm from the head's centre; the greater trochanter, farther from
the head, stays), the ball sits at the old head centre in a liner inside the cup, and nothing but soft tissue is left
where the head and neck were (neck screws on that side go too). The femoral component belongs to the femur: its label
is the cut femur and the component (ball, neck, stem), as a reference that labels the implant with the bone
(TotalSegmentator's masks do) has it; the cup and the liner are not femur. A scene draws one in 12 % of cases
(``phantom2_scene._implants``; since session 46, before which that implant kept the whole bony head around its ball);
on request (``generate_case(seed, tha=True)``; ``femurunet sample --tha``; training: ``phantom_stream --tha-hips
SHARE``) one drawn from the seed's twelfth stream takes the place of the scene's own.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from .phantom2_anatomy import SIDES
from .phantom2_body import Item, _box_of, _polyline
from .sdf import _hemishell, _plane, _sphere

BALL_MM = (14.0, 18.0)          # radius of the prosthetic head (28-36 mm balls)
CUP_EXTRA_MM = (2.0, 5.0)       # cup's outer radius beyond the native head's
SHELL_MM = (3.0, 5.0)           # metal shell of the cup
CUT_MM = (28.0, 38.0)           # neck resection: its plane's distance from the head centre along the neck
SPARED_MM = 15.0                # bone beyond the head's radius + this from its centre stays (greater trochanter)
STEM_REACH = (0.3, 0.45)        # the stem's tip: this share of the way from the head down to the knee
NECK_MM = 6.0                   # radius of the component's neck
SHOULDER_MM = 45.0              # the stem's shoulder: the femur's middle this far below the head centre


@dataclass(frozen=True)
class Arthroplasty:
    side: str
    ball: float
    cup: float                  # outer radius minus the native head's radius
    shell: float
    cut: float
    reach: float


def draw_arthroplasty(rng) -> Arthroplasty:
    """One hip's arthroplasty: the side and the sizes (a fixed number of draws)."""
    side = "left" if rng.random() < 0.5 else "right"
    return Arthroplasty(side, *(float(rng.uniform(*r)) for r in (BALL_MM, CUP_EXTRA_MM, SHELL_MM, CUT_MM,
                                                                  STEM_REACH)))


def scene_arthroplasty(rng) -> Arthroplasty:
    """The one a scene draws: side, reach, ball and cup as its implant drew them before session 46 (four draws, so
    the scene's later draws stay), the shell 4 mm as that cup's, the cut in the middle of its range."""
    side = "left" if rng.random() < 0.5 else "right"
    reach, ball, cup = (float(rng.uniform(*r)) for r in (STEM_REACH, BALL_MM, CUP_EXTRA_MM))
    return Arthroplasty(side, ball, cup, 4.0, float(np.mean(CUT_MM)), reach)


def component_points(ind, tha: Arthroplasty) -> tuple:
    """(head centre, the stem's shoulder, its middle and its tip: the femur's middle at those heights, unit vector
    from the neck's base to the head) in the anatomical frame."""
    head, knee = ind.marks[f"head_{tha.side}"], ind.marks[f"knee_{tha.side}"]
    base = ind.marks[f"thigh_top_{tha.side}"] + (0.0, 0.0, 10.0)
    axis = (head - base) / np.linalg.norm(head - base)
    depth = float(head[2] - knee[2]) * tha.reach
    centres = [_middle(ind, f"femur_{tha.side}", head + (knee - head) * (z / float(head[2] - knee[2])))
               for z in (SHOULDER_MM, 0.5 * (SHOULDER_MM + depth), depth)]
    return (head, *centres, axis)


def _middle(ind, bone, near, half=40.0, step=1.5) -> np.ndarray:
    """The centroid of ``bone``'s cross-section (anatomical z of ``near``) within ``half`` mm of ``near``."""
    axes = np.arange(-half, half + step / 2, step)
    x, y = np.meshgrid(near[0] + axes, near[1] + axes, indexing="ij")
    q = (x.astype(np.float32), y.astype(np.float32), np.full(x.shape, near[2], np.float32))
    inside = ind.bone_distance(bone, q) < 0
    return np.array([x[inside].mean(), y[inside].mean(), near[2]]) if inside.any() else np.asarray(near, float)


def with_arthroplasty(scene, tha: Arthroplasty) -> None:
    """Puts ``tha`` into ``scene``: neck screws on its side go, the femur item is cut and joined by the component (its
    label with it), the component, liner and cup are painted after everything else."""
    side, point = scene.flags.get("screws", (None, None))
    if side == tha.side:                    # the resected neck held them
        scene.items = [i for i in scene.items if not i.name.startswith("screw")]
        scene.metal_points = [p for p in scene.metal_points if p is not point]
        del scene.flags["screws"]
    ind = scene.ind
    head, shoulder, middle, tip, axis = component_points(ind, tha)
    plane = head - tha.cut * axis
    stem = _polyline([head, shoulder, middle, tip], [NECK_MM, 9.0, 7.0, 4.5])
    component = lambda q: np.minimum(_sphere(q, head, tha.ball), stem(q))
    at = scene.item_at(f"femur_{tha.side}")
    femur = scene.items[at]

    def cut_femur(q, d=femur.distance):     # removed: the head's side of the plane, near the head
        removed = np.minimum(_plane(q, plane, axis), -_sphere(q, head, ind.head_radius + SPARED_MM))
        return np.minimum(np.maximum(d(q), removed), component(q))
    scene.items[at] = replace(femur, distance=cut_femur)
    outer = ind.head_radius + tha.cup
    inward = np.array([-SIDES[tha.side] * 0.5, 0.0, 0.86])
    liner = lambda q: _hemishell(q, head, tha.ball, outer - tha.shell, inward)
    cup = lambda q: _hemishell(q, head, outer - tha.shell, outer, inward)
    scene.items += [Item("tha_liner", head - outer, head + outer, liner, "fat"),
                    Item("tha_cup", head - outer, head + outer, cup, "metal"),
                    Item("tha_component", *_box_of([head, shoulder, middle, tip], tha.ball), component, "metal")]
    scene.metal_points += [head, tip]

