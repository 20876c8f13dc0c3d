"""Phantom v2 scene: the compact structures (bones, organs, bowel, vessels, spine, ribs, arms, implants) as
``Item``s with bounds, a distance function and a material, drawn per case."""
from __future__ import annotations

import math

import numpy as np

from .phantom2_anatomy import LABEL, SIDES, Individual
from .phantom2_arthroplasty import scene_arthroplasty
from .phantom2_body import Item, Scene, _box_of, _polyline, _u, draw_body, draw_hu, ellipse_distance, leg_distance
from .phantom2_feet import bone_parts, draw_feet
from .sdf import _capsule, _ellipsoid, _sphere

IMPLANT_P = {"hip": 0.12, "knee": 0.06, "screws": 0.06, "spine": 0.05, "valve": 0.15}


def build_scene(rng, ind: Individual) -> Scene:
    scene = Scene(ind, draw_hu(rng), draw_body(rng, ind))
    _knees(rng, scene)
    _bones(scene)
    _pelvic_organs(rng, scene)
    _abdomen(rng, scene)
    _vessels(rng, scene)
    _spine(rng, scene)
    _chest(rng, scene)
    _arms(rng, scene)
    _implants(rng, scene)
    return scene


def with_feet(scene, rng) -> Scene:
    """``scene`` with both feet (``phantom2_feet``, drawn from ``rng``): their soft tissue joins the calves, their bones
    are painted last (negatives)."""
    scene.body["feet"] = draw_feet(rng, scene.ind)
    for side in SIDES:
        for name, lo, hi, distance in bone_parts(scene.ind, scene.body["feet"][side], side):
            scene.items.append(Item(name, lo, hi, distance, "bone:foot"))
    return scene


def _bone_item(ind, name, label=0):
    lo, hi = ind.bone_bounds(name)
    return Item(name, lo, hi, lambda q, n=name: ind.bone_distance(n, q), f"bone:{name}", label)


def _bones(scene) -> None:
    ind = scene.ind
    for name in ("hip_left", "hip_right", "sacrum", "coccyx", "tibia_left", "tibia_right", "fibula_left",
                 "fibula_right", "patella_left", "patella_right"):
        scene.items.append(_bone_item(ind, name))
    for side in SIDES:
        scene.items.append(_bone_item(ind, f"femur_{side}", LABEL[side]))


def _in_leg(ind, body, side, distance, inset=2.5):
    """``distance`` kept inside the leg's skin (by ``inset`` mm): fat and tendon never paint into the air."""
    return lambda q: np.maximum(distance(q), leg_distance(q, ind, body, side) + inset)


def _band(a, b, radius, half_width):
    """A flat tendon from ``a`` down to ``b``: ``2 * radius`` thick (front-back), ``2 * half_width`` wide."""
    def distance(q):
        t = np.clip((q[2] - a[2]) / (b[2] - a[2]), 0.0, 1.0)
        x = a[0] + t * (b[0] - a[0])
        return np.maximum(_capsule((x, q[1], q[2]), a, b, radius), np.abs(q[0] - x) - half_width)
    return distance


def _knee_fat(rng, knee, patella, half, front) -> list:
    """(centre, semi-axes) of the fat around a knee joint (its size sets how much muscle stays behind it), the
    infrapatellar (Hoffa), suprapatellar and popliteal fat; ``front`` points from the knee centre to the patella."""
    u = lambda a, b: _u(rng, a, b)
    return [(knee + front * u(10, 30) + (0.0, 0.0, u(-10, 5)), (u(40, 65), u(25, 50), u(15, 35))),
            (patella + (0.0, 0.0, -half - 12.0) - front * 14.0, (u(16, 26), u(8, 13), u(12, 20))),
            (patella + (0.0, 0.0, half + 25.0) - front * 12.0, (u(14, 22), u(5, 9), u(15, 25))),
            (knee - front * u(25, 40), (u(15, 28), u(12, 20), u(35, 60)))]


def _knees(rng, scene) -> None:
    """Soft tissue around each knee joint, painted before the bones: fat (``_knee_fat``) and the patellar and
    quadriceps tendons."""
    ind, body = scene.ind, scene.body
    for side in SIDES:
        knee = ind.marks[f"knee_{side}"]
        lo, hi = ind.bone_bounds(f"patella_{side}")
        patella, half = 0.5 * (lo + hi), 0.5 * float(hi[2] - lo[2])
        reach = max(float(np.linalg.norm(patella - knee)), 1.0)
        front = (patella - knee) / reach
        for n, (centre, semi) in enumerate(_knee_fat(rng, knee, patella, half, front)):
            semi = np.asarray(semi)
            ellipsoid = lambda q, c=centre, e=semi: _ellipsoid(q, c, e)
            scene.items.append(Item(f"knee_fat{n}_{side}", centre - semi, centre + semi,
                                    _in_leg(ind, body, side, ellipsoid), "fat"))
        tuberosity = knee + front * 0.75 * reach + (0.0, 0.0, -_u(rng, 25, 40))
        tendons = (("patellar_tendon", patella + (0.0, 0.0, -0.7 * half), tuberosity, 3.0, _u(rng, 9, 14)),
                   ("quadriceps_tendon", patella + (0.0, 0.0, 0.7 * half),
                    patella + (0.0, 0.0, half + 50.0) - front * 6.0, 3.5, _u(rng, 12, 18)))
        for name, a, b, r, w in tendons:
            scene.items.append(Item(f"{name}_{side}", *_box_of([a, b], w + r),
                                    _in_leg(ind, body, side, _band(a, b, r, w)), "tendon"))


def _organ(name, centre, semi, material):
    c, s = np.asarray(centre, float), np.asarray(semi, float)
    return Item(name, c - s, c + s, lambda q: _ellipsoid(q, c, s), material)


def _pelvic_organs(rng, scene) -> None:
    m = scene.ind.marks
    pubis_y = float(scene.ind.bone_bounds("hip_left")[0][1]) + 30.0
    semi = (_u(rng, 30, 60), _u(rng, 25, 45), _u(rng, 20, 45))
    scene.items.append(_organ("bladder", (0.0, pubis_y + semi[1] + 5, _u(rng, -5, 25) + semi[2] * 0.5), semi,
                              "urine"))
    s1 = m["s1"]
    top, bottom = (s1[0], s1[1] - 25.0, s1[2] - 40.0), (0.0, s1[1] - 35.0, -45.0)
    r = _u(rng, 10, 20)
    scene.items.append(Item("rectum", *_box_of([top, bottom], r), _polyline([top, bottom], [r, r]), "stool"))
    for n in range(int(rng.integers(0, 4))):
        c = np.array([_u(rng, -20, 20), _u(rng, s1[1] - 50, s1[1] - 25), _u(rng, -40, 40)])
        rad = _u(rng, 3, 12)
        scene.items.append(Item("rectal_gas", c - rad, c + rad, lambda q, c=c, rad=rad: _sphere(q, c, rad), "air"))


def _abdomen(rng, scene) -> None:
    body = scene.body
    crest, dia = body["crest"], body["diaphragm"]
    for n in range(int(rng.integers(6, 22))):
        c = np.array([_u(rng, -110, 110), _u(rng, -80, 20), _u(rng, 0, dia - 60)])
        semi = np.array([_u(rng, 10, 28), _u(rng, 10, 25), _u(rng, 10, 30)])
        content = rng.choice(["air", "fluid", "oral", "stool"], p=[0.3, 0.3, 0.15, 0.25])
        scene.items.append(_organ(f"bowel{n}", c, semi + 2.5, "bowel_wall"))
        scene.items.append(_organ(f"bowel{n}_lumen", c, semi, str(content)))
    scene.items.append(_organ("liver", (-_u(rng, 50, 80), _u(rng, -30, 10), dia - _u(rng, 60, 90)),
                              (_u(rng, 70, 95), _u(rng, 60, 80), _u(rng, 70, 95)), "organ"))
    scene.items.append(_organ("spleen", (_u(rng, 80, 100), _u(rng, 30, 50), dia - _u(rng, 50, 80)),
                              (_u(rng, 30, 45), _u(rng, 25, 40), _u(rng, 40, 60)), "organ"))
    for sign in (-1, 1):
        scene.items.append(_organ(f"kidney{sign}", (sign * _u(rng, 55, 75), _u(rng, 50, 70), crest + _u(rng, 60, 110)),
                                  (_u(rng, 25, 32), _u(rng, 20, 28), _u(rng, 50, 62)), "kidney"))


def _vessels(rng, scene) -> None:
    m, body = scene.ind.marks, scene.body
    s1, crest = m["s1"], body["crest"]
    bifurcation = np.array([_u(rng, -8, 8), s1[1] - 55.0, crest + _u(rng, 0, 40)])
    top = bifurcation + (5.0, 10.0, 500.0)
    ra = _u(rng, 8, 13)
    scene.items.append(Item("aorta", *_box_of([top, bifurcation], ra), _polyline([top, bifurcation], [ra, ra]),
                            "artery"))
    ivc = [bifurcation + (-28.0, 5.0, 500.0), bifurcation + (-22.0, 15.0, -30.0)]
    scene.items.append(Item("ivc", *_box_of(ivc, 13.0), _polyline(ivc, [12.0, 12.0]), "vein"))
    for side, sign in SIDES.items():
        head, knee, ankle = m[f"head_{side}"], m[f"knee_{side}"], m[f"ankle_{side}"]
        path = [bifurcation, bifurcation + (sign * 35.0, 10.0, -50.0), head + (-sign * 10.0, -35.0, 25.0),
                head + (-sign * 15.0, -32.0, -40.0), knee + (-sign * 15.0, 5.0, 140.0), knee + (0.0, 30.0, 0.0),
                knee + (0.0, 30.0, -60.0), ankle + (-sign * 15.0, 20.0, 20.0)]
        radii = [ra * 0.6, 5.5, 4.8, 4.2, 3.5, 3.2, 2.5, 1.8]
        scene.items.append(Item(f"artery_{side}", *_box_of(path, 7.0), _polyline(path, radii), "artery"))
        vpath = [p + (-sign * 12.0, 8.0, 0.0) for p in path[1:]]
        scene.items.append(Item(f"vein_{side}", *_box_of(vpath, 9.0), _polyline(vpath, [r * 1.4 for r in radii[1:]]),
                                "vein"))
    if rng.random() < 0.3:
        for n in range(int(rng.integers(2, 8))):
            p = bifurcation + (_u(rng, -40, 40), _u(rng, -5, 5), _u(rng, -150, 200))
            r = _u(rng, 1.5, 3.5)
            scene.items.append(Item("calcification", p - r, p + r, lambda q, p=p, r=r: _sphere(q, p, r), "cortex"))


def _spine(rng, scene) -> None:
    s1 = scene.ind.marks["s1"]
    z, y = s1[2] + _u(rng, 6, 10), s1[1]
    lordosis = _u(rng, 10, 30)
    for level in range(17):
        lumbar = level < 5
        h = (_u(rng, 24, 30) if lumbar else _u(rng, 18, 24)) * scene.ind.marks["scale"][2]
        w, dep = (_u(rng, 22, 27), _u(rng, 15, 19)) if lumbar else (_u(rng, 14, 20), _u(rng, 12, 16))
        t = level / 4.0
        yc = y - lordosis * math.sin(math.pi * min(t, 1.0)) + max(0.0, level - 6) * 2.5
        centre = np.array([0.0, yc, z + h / 2])
        _vertebra(scene, level, centre, w, dep, h, lumbar)
        z += h + (_u(rng, 8, 11) if lumbar else _u(rng, 4, 6))


def _vertebra(scene, level, c, w, dep, h, lumbar) -> None:
    arch = c + (0.0, dep + 14.0, 0.0)
    spine_tip = arch + (0.0, 28.0 if lumbar else 24.0, -12.0)
    reach = 28.0 if lumbar else 18.0

    def distance(q):
        d = _ellipsoid(q, c, (w, dep, h / 2))
        d = np.minimum(d, np.maximum(_ellipsoid(q, arch, (16.0, 12.0, h / 2.5)),
                                     -_ellipsoid(q, arch, (10.0, 8.0, h))))
        d = np.minimum(d, _capsule(q, arch + (0.0, 8.0, 0.0), spine_tip, 4.0, 3.0))
        for s in (-1, 1):
            d = np.minimum(d, _capsule(q, arch + (s * 8.0, -4.0, 0.0), arch + (s * (8.0 + reach), 0.0, 2.0), 4.0, 3.0))
        return d
    lo, hi = _box_of([c, spine_tip, arch], w + reach)
    scene.items.append(Item(f"vertebra{level}", lo, hi, distance, "bone:vertebra"))
    disc = c + (0.0, 0.0, h / 2 + 4.0)
    scene.items.append(Item(f"disc{level}", disc - (w, dep, 5.0), disc + (w, dep, 5.0),
                            lambda q: _ellipsoid(q, disc, (w * 0.95, dep * 0.95, 4.5)), "disc"))


def _chest(rng, scene) -> None:
    body = scene.body
    dia = body["diaphragm"]
    for sign in (-1, 1):
        c = np.array([sign * _u(rng, 55, 80), _u(rng, -10, 20), dia + 120.0])
        semi = np.array([_u(rng, 55, 75), _u(rng, 60, 80), _u(rng, 110, 140)])
        scene.items.append(_organ(f"lung{sign}", c, semi, "lung"))
    heart = np.array([_u(rng, 10, 35), _u(rng, -55, -30), dia + _u(rng, 30, 60)])
    scene.items.append(_organ("heart", heart, (_u(rng, 55, 70), _u(rng, 45, 55), _u(rng, 50, 65)), "organ"))
    scene.items.append(_organ("heart_blood", heart, (40.0, 30.0, 38.0), "artery"))
    scene.flags["heart"] = heart
    first, pitch = dia - _u(rng, 60, 100), _u(rng, 22, 30)
    slope = _u(rng, 0.3, 0.6)
    cy, bx, by = body["cy"], body["sx"][-1] - body["fat"] - 18.0, body["sy"][-1] - body["fat"] - 15.0

    def ribs(q):
        shell = np.abs(ellipse_distance(q[0], q[1] - cy, bx, by)) - 4.0
        zz = q[2] - first + slope * (q[1] - cy - by)
        phase = np.mod(zz, pitch)
        band = np.abs(phase - pitch / 2) - 6.0
        d = np.maximum(np.maximum(shell, band), first - q[2])
        return np.maximum(d, 25.0 - np.abs(q[0]))
    lo, hi = np.array([-bx - 10, cy - by - 10, first - 10]), np.array([bx + 10, cy + by + 10, first + 400])
    scene.items.append(Item("ribs", lo, hi, ribs, "bone:rib"))
    sternum = [np.array([0.0, cy - by + 8, dia - 20.0]), np.array([0.0, cy - by + 12, dia + 180.0])]
    scene.items.append(Item("sternum", *_box_of(sternum, 14.0), _polyline(sternum, [9.0, 9.0]), "bone:rib"))


def _arms(rng, scene) -> None:
    if rng.random() > 0.45:
        return
    body = scene.body
    elbow = body["crest"] + _u(rng, 60, 160)
    for sign in (-1, 1):
        x = sign * (body["sx"][1] + _u(rng, 10, 40) + 40.0)
        y = body["cy"] + _u(rng, -30, 20)
        sh = np.array([x, y, elbow + 300.0])
        el = np.array([x + sign * _u(rng, -10, 10), y + _u(rng, -10, 10), elbow])
        wr = np.array([x + sign * _u(rng, 0, 30), y - _u(rng, 0, 40), elbow - _u(rng, 240, 280)])
        hand = wr + (0.0, -10.0, -150.0)
        skin = _polyline([sh, el, wr, hand], [_u(rng, 40, 55), 36.0, 28.0, 22.0])
        scene.items.append(Item(f"arm{sign}", *_box_of([sh, el, wr, hand], 60.0), skin, "muscle"))
        bones = [(_polyline([sh, el + (0, 0, 5)], [12.0, 10.0]), [sh, el])]
        for off in (-8.0, 8.0):
            p = [el + (sign * off, 0.0, -10.0), wr + (sign * off * 1.2, 0.0, 0.0)]
            bones.append((_polyline(p, [7.0, 6.0]), p))
        for n, (d, pts) in enumerate(bones):
            scene.items.append(Item(f"arm{sign}_bone{n}", *_box_of(pts, 14.0), d, "bone:arm"))


def _implants(rng, scene) -> None:
    if rng.random() < IMPLANT_P["hip"]:
        scene.flags["arthroplasty"] = scene_arthroplasty(rng)    # put in by phantom2.make_scene, after the options
    _knee_and_screws(rng, scene)
    if rng.random() < IMPLANT_P["valve"] and "heart" in scene.flags:
        c = scene.flags["heart"] + (_u(rng, -15, 5), 10.0, 15.0)
        ring = lambda q, c=c: np.maximum(np.abs(_sphere(q, c, 12.0)) - 1.5, np.abs(q[2] - c[2]) - 4.0)
        scene.items.append(Item("valve", c - 15.0, c + 15.0, ring, "metal"))
        scene.metal_points.append(c)


def _knee_and_screws(rng, scene) -> None:
    ind, m = scene.ind, scene.ind.marks
    if rng.random() < IMPLANT_P["knee"]:
        side = "left" if rng.random() < 0.5 else "right"
        knee = m[f"knee_{side}"]
        femur = f"femur_{side}"

        def shell(q, knee=knee, femur=femur):
            d = ind.bone_distance(femur, q)
            return np.maximum(np.maximum(d - 2.5, -d - 0.5), q[2] - knee[2] - 30.0)
        scene.items.append(Item("knee_femoral", knee - 60.0, knee + 60.0, shell, "metal"))
        tray = knee + (0.0, 0.0, -12.0)
        scene.items.append(Item("knee_tray", tray - 45.0, tray + 45.0,
                                lambda q, t=tray: _ellipsoid(q, t, (35.0, 25.0, 3.5)), "metal"))
        scene.metal_points.append(knee)
    if rng.random() < IMPLANT_P["screws"]:
        side = "left" if rng.random() < 0.5 else "right"
        head, top = m[f"head_{side}"], m[f"thigh_top_{side}"]
        for n in range(int(rng.integers(1, 4))):
            off = np.array([0.0, _u(rng, -8, 8), _u(rng, -8, 8)])
            p = [top + off + (SIDES[side] * 10.0, 0.0, 0.0), head + off * 0.8]
            scene.items.append(Item(f"screw{n}", *_box_of(p, 5.0), _polyline(p, [3.2, 3.2]), "metal"))
        scene.metal_points.append(0.5 * (head + top))
        scene.flags["screws"] = (side, scene.metal_points[-1])      # phantom2_arthroplasty may take them out
    if rng.random() < IMPLANT_P["spine"]:
        s1 = m["s1"]
        for level in range(int(rng.integers(1, 3))):
            for s in (-1, 1):
                p = [s1 + (s * 25.0, 45.0, 40.0 + 35 * level), s1 + (s * 12.0, 0.0, 35.0 + 35 * level)]
                scene.items.append(Item(f"pedicle{level}{s}", *_box_of(p, 5.0), _polyline(p, [3.0, 3.0]), "metal"))
        scene.metal_points.append(s1 + (0.0, 20.0, 50.0))
