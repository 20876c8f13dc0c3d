"""Phantom v2: exact labels on any grid, anatomy in place, tissue HU, coverages, determinism and ``sample``.

Cases are rendered on coarse grids (spacing override) so each takes about a second. The grid of a case is
drawn again from the seed's grid stream (``make_grid``) to know each voxel centre in the scanner (LPS) and
anatomical frames: ``scanner = R @ anatomical`` with R the scanner rotation ``make_grid`` returns.
"""
from __future__ import annotations

import itertools
import shutil
import subprocess
import sys
from functools import lru_cache
from types import SimpleNamespace

import numpy as np
import pytest
import SimpleITK as sitk
from hypothesis import HealthCheck, Phase, given, settings, strategies as st

from FemurUNetLib import phantom2, phantom2_native, phantom2_scene
from FemurUNetTrainLib import cli
from FemurUNetLib.errors import FemurUNetError
from FemurUNetLib.geometry import Geometry, Reorientation
from FemurUNetLib.phantom import HU_MAX, HU_MIN
from FemurUNetLib.phantom2 import (ALL_COVERAGES, BELOW_KNEE, COVERAGES, FEMUR_FREE, femur_truth, generate_case,
                                   make_grid, make_scene)
from FemurUNetLib.phantom2_anatomy import BODIES, NARROWED_HIP_P, SIDES, hip_joint_space, load_body
from FemurUNetLib.phantom2_metal import METAL_HU, ParallelBeam, add_metal_artefacts, computed_rows
from FemurUNetLib.phantom2_native import draw_native, native_factors, native_grid, resampled
from FemurUNetLib.phantom2_body import (SKIN_PARTS, body_parts_bounds, cavity_distance, draw_hu, fat_thickness,
                                        septa_distance, skin_distance)
from FemurUNetLib.sdf import _rotation as sdf_rotation, ramp_width

COARSE = (4.0, 4.0, 4.0)
VERY_COARSE = (5.0, 5.0, 5.0)
SEEDS = tuple(range(20))


def _rotation(rx, ry, rz):
    """Rotation from angles in degrees."""
    return sdf_rotation(*np.radians([rx, ry, rz]))


def _signed_permutations():
    for perm in itertools.permutations(range(3)):
        for signs in itertools.product((1.0, -1.0), repeat=3):
            yield np.eye(3)[:, list(perm)] * np.array(signs)


SIGNED_PERMUTATIONS = list(_signed_permutations())


@lru_cache(maxsize=None)
def _scene(seed):
    """The seed's scene (read only: shared between tests)."""
    return make_scene(seed)


@lru_cache(maxsize=12)
def _case(seed, coverage, spacing=COARSE, direction=None):
    """A coarse case, shared between tests (read only); ``direction`` as a flat tuple so it can be cached."""
    d = None if direction is None else np.reshape(direction, (3, 3))
    return generate_case(seed, spacing=spacing, coverage=coverage, direction=d)


def _grid(seed, coverage, spacing=None, direction=None):
    """(geometry, shape, scanner rotation, fov) of the seed's case, drawn again from its grid stream."""
    streams = phantom2._streams(seed)
    hip = phantom2.draw_hip_field(streams[7], coverage)
    return make_grid(streams[1], make_scene(seed), coverage, spacing, direction, hip=hip)


def _centres(geometry, shape, rotation):
    """Scanner (LPS) and anatomical coordinates (mm, float64, (k, j, i, 3)) of every voxel centre."""
    lps = geometry.physical_points(shape)
    return lps, lps @ rotation            # anatomical = R^T scanner, row vectors


def _q(points):
    """(x, y, z) float32 arrays of an (..., 3) point array, the form the distance functions take."""
    p = np.asarray(points, np.float64)
    return tuple(np.ascontiguousarray(p[..., a], dtype=np.float32) for a in range(3))


def _in_fov(geometry, shape, lps, fov, margin=0.0):
    """Voxel centres within ``fov / 2 - margin`` of the scan axis (scanner z through the grid centre)."""
    centre = geometry.ijk_to_lps()[:3, :3] @ ((np.asarray(shape[::-1], float) - 1) / 2) + np.asarray(geometry.origin)
    rr = (lps[..., 0] - centre[0]) ** 2 + (lps[..., 1] - centre[1]) ** 2
    return rr <= (fov / 2 - margin) ** 2


def _point(p):
    return _q(np.asarray(p, float)[None])


def _box(centre, half, step):
    axes = [np.arange(c - half, c + half + 1e-6, step) for c in centre]
    return _q(np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, 3))


def _ray(ind, bone, centre, direction, r):
    """Distances of ``bone`` along the ray centre + r * direction."""
    return ind.bone_distance(bone, _q(np.asarray(centre) + r[:, None] * np.asarray(direction)))

@pytest.fixture
def rendered_directly(monkeypatch):
    """Coarse grids rendered straight at their spacing, as before session 21: for the tests of anatomy and tissue
    values, which do not depend on how a grid was made (native rendering has its own tests below) and run 10-30x
    faster so."""
    monkeypatch.setattr(phantom2_native, "NATIVE_P", 0.0)



# --- 1. the label is exact on any grid ---------------------------------------------------------------------
@st.composite
def _grids(draw):
    seed = draw(st.sampled_from([3, 11, 24]))
    coverage = draw(st.sampled_from(["pelvis", "knee_to_ankle"]))
    spacing = tuple(draw(st.floats(2.5, 6.0)) for _ in range(3))
    direction = SIGNED_PERMUTATIONS[draw(st.integers(0, len(SIGNED_PERMUTATIONS) - 1))]
    if draw(st.booleans()):
        direction = _rotation(*draw(st.tuples(*[st.floats(-20.0, 20.0)] * 3))) @ direction
    return seed, coverage, spacing, direction


@pytest.mark.slow
@settings(max_examples=6, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow],
          phases=[Phase.explicit, Phase.generate])   # seconds per example: report it, do not shrink
@pytest.mark.slow
@given(_grids())
def test_label_is_the_femur_truth_at_every_voxel_centre_of_any_grid(grid):
    """label == femur_truth(seed, anatomical voxel centres) on random spacings, flips, permutations, obliquity."""
    seed, coverage, spacing, direction = grid
    case = generate_case(seed, spacing=spacing, direction=direction, coverage=coverage)
    geometry, shape, rotation, fov = _grid(seed, coverage, spacing, direction)
    assert case.geometry == geometry and case.label.shape == shape and case.ct.shape == shape
    assert np.allclose(case.geometry.spacing, spacing) and np.allclose(case.geometry.direction, direction)
    lps, anat = _centres(geometry, shape, rotation)
    q = _q(anat)
    truth = femur_truth(seed, q)
    inside = _in_fov(geometry, shape, lps, fov, margin=2 * max(spacing))  # whatever happens outside the FOV
    assert truth[inside].any(), "no femur in the scan: the check would be empty"
    wrong = (case.label != truth) & inside
    if wrong.any():   # only a voxel centre on the surface itself (float rounding) may differ
        ind = _scene(seed).ind
        d = np.minimum(*(np.abs(ind.bone_distance(f"femur_{s}", tuple(c[wrong] for c in q))) for s in SIDES))
        assert d.max() < 1e-3, f"{int(wrong.sum())} voxels differ from the truth, up to {d.max():.2f} mm inside"
    assert set(np.unique(case.label[inside])) <= {0, 1, 2}


@pytest.mark.parametrize("direction", [np.diag([-1.0, -1.0, 1.0]), np.eye(3)[:, [1, 2, 0]] * [1, -1, -1]],
                         ids=["flipped", "permuted"])
def test_the_same_voxel_centre_gets_the_same_label_in_two_grids(direction):
    reference = _case(24, "pelvis", VERY_COARSE, tuple(np.eye(3).ravel()))
    case = _case(24, "pelvis", VERY_COARSE, tuple(direction.ravel()))
    r = Reorientation.for_geometry(case.geometry)
    assert not r.is_identity
    pts = case.geometry.physical_points(case.label.shape)
    pts = np.stack([r.to_canonical(pts[..., a]) for a in range(3)], axis=-1)
    assert np.allclose(pts, reference.geometry.physical_points(reference.label.shape), atol=1e-6)
    label = r.to_canonical(case.label)
    assert np.array_equal(label, reference.label)
    assert set(np.unique(label)) == {0, 1, 2}


@pytest.mark.slow
def test_femur_volume_is_the_same_at_two_spacings():
    """The individual depends on the seed only: partial-volume-free labels give the same femur volumes."""
    a, b = _case(24, "pelvis", COARSE), _case(24, "pelvis", (3.0, 5.0, 2.5))
    assert a.label.shape != b.label.shape
    for value in (1, 2):
        va = (a.label == value).sum() * np.prod(a.geometry.spacing) / 1000
        vb = (b.label == value).sum() * np.prod(b.geometry.spacing) / 1000
        assert va > 50, va                               # ml: head, neck and upper shaft
        assert abs(va - vb) < 0.05 * va, (value, va, vb)


# --- 2. anatomy in position --------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", SEEDS)
def test_femoral_head_sits_in_the_acetabulum_with_a_joint_space(seed):
    ind = _scene(seed).ind
    for side, sign in SIDES.items():
        centre = ind.marks[f"head_{side}"]
        femur, hip = f"femur_{side}", f"hip_{side}"
        assert ind.bone_distance(femur, _point(centre))[0] < -15.0          # deep inside the head
        assert ind.bone_distance(hip, _point(centre))[0] > 10.0             # the acetabulum is carved out
        assert ind.bone_distance(f"femur_{'right' if side == 'left' else 'left'}", _point(centre))[0] > 30.0
        # toward the acetabular roof (superomedial): femur, then a joint space, then the hip bone
        u = np.array([-sign * 0.5, 0.0, 0.86])
        u /= np.linalg.norm(u)
        r = np.arange(0.0, 50.0, 0.25)
        f, h = _ray(ind, femur, centre, u, r), _ray(ind, hip, centre, u, r)
        end = int(np.argmax(f >= 0))                     # first sample out of the femur
        assert end > 0 and (f[:end] < 0).all() and (h[:end] > 0).all()
        assert abs(r[end] - ind.head_radius) < 6.0, (side, r[end], ind.head_radius)
        assert (h < 0).any(), "no acetabular roof above the head"
        start = int(np.argmax(h < 0))                    # first sample in the hip bone
        assert start > end and (f[end:start] > 0).all() and (h[end:start] > 0).all()
        assert 0.5 <= r[start] - r[end] <= 10.0, (side, r[end], r[start])   # the joint space, mm


def test_hip_joint_space_is_narrowed_in_a_share_of_hips_and_drawn_per_side():
    rng = np.random.default_rng(0)
    gaps = np.array([hip_joint_space(rng) for _ in range(4000)])
    assert 0.2 <= gaps.min() and gaps.max() <= 4.0
    narrowed = (gaps < 1.0).mean()
    assert abs(narrowed - NARROWED_HIP_P) < 0.03, narrowed          # binomial sd 0.007
    assert abs(np.median(gaps[gaps >= 1.0]) - 2.5) < 0.15           # uniform 1-4 mm otherwise
    sides = np.array([[_scene(seed).ind.hip_gap[s] for s in SIDES] for seed in SEEDS])
    assert (np.abs(sides[:, 0] - sides[:, 1]) > 1.0).any()          # left and right differ
    assert (sides < 1.0).any() and (sides >= 1.0).any()


@pytest.mark.parametrize("seed", SEEDS[:8])
def test_hip_joints_sit_in_muscle_beside_the_lesser_pelvis(seed):
    scene = _scene(seed)
    ind, body = scene.ind, scene.body
    for side, sign in SIDES.items():
        head = ind.marks[f"head_{side}"]
        for dx in (-ind.head_radius - 8.0, 0.0, ind.head_radius + 8.0):    # medial, centre, lateral
            assert cavity_distance(_point(head + (sign * dx, 0.0, 0.0)), body)[0] > 0, (side, dx)
    middle = 0.5 * (ind.marks["head_left"] + ind.marks["head_right"])
    for dx, inside in ((-body["true_pelvis"] + 10.0, True), (10.0, True), (body["true_pelvis"] + 5.0, False)):
        d = cavity_distance(_point((body["cx"] + dx, body["cy"] - 15.0, middle[2])), body)[0]
        assert (d < 0) == inside, (dx, d)                          # the lesser pelvis between the hip joints


@pytest.mark.parametrize("seed", SEEDS[:6])
def test_hip_and_knee_bones_never_overlap_and_meet_at_thin_joints(seed):
    ind = _scene(seed).ind
    for side in SIDES:
        q = _box(ind.marks[f"head_{side}"], 45.0, 2.0)
        f, h = ind.bone_distance(f"femur_{side}", q), ind.bone_distance(f"hip_{side}", q)
        both = np.maximum(f, h)
        assert both.min() > -0.5, f"femoral head and hip bone overlap by {-both.min():.2f} mm"
        assert both.min() < 4.0                                             # the hip joint is thin
        q = _box(ind.marks[f"knee_{side}"], 60.0, 2.0)
        f, t = ind.bone_distance(f"femur_{side}", q), ind.bone_distance(f"tibia_{side}", q)
        assert not ((f < 0) & (t < 0)).any(), "femur and tibia overlap"
        assert np.maximum(f, t).min() < 10.0                                 # they come close at the knee
        zf, zt = q[2][f < 0], q[2][t < 0]
        assert zf.size > 1000 and zt.size > 1000
        assert np.median(zt) < ind.marks[f"knee_{side}"][2] < np.median(zf)  # tibia below, femur above
        assert np.median(zt) < np.median(zf) - 30.0


@pytest.mark.parametrize("seed", SEEDS[:5])
def test_left_is_plus_x_and_the_sacrum_sits_between_the_hips(seed):
    ind = _scene(seed).ind
    m = ind.marks
    assert m["head_left"][0] > 40.0 and m["head_right"][0] < -40.0          # LPS: patient left is +x
    assert m["knee_left"][0] > m["knee_right"][0] and m["ankle_left"][0] > m["ankle_right"][0]
    for side in SIDES:
        other = "right" if side == "left" else "left"
        assert ind.bone_distance(f"femur_{side}", _point(m[f"head_{side}"]))[0] < 0
        assert ind.bone_distance(f"hip_{side}", _point(m[f"head_{other}"]))[0] > 0
    q = _box((0.0, 40.0, 70.0), 150.0, 4.0)
    sacrum = ind.bone_distance("sacrum", q) < 0
    x, y, z = (c[sacrum] for c in q)
    assert x.size > 500
    assert m["head_right"][0] < x.min() and x.max() < m["head_left"][0]
    assert abs(np.median(x) - 0.5 * (m["head_left"][0] + m["head_right"][0])) < 20.0
    assert np.median(y) > m["head_left"][1] + 20.0                            # posterior to the hip joints
    assert np.median(z) > m["head_left"][2]                                   # above them
    for side in SIDES:                                                        # the hip bones flank it
        xh = q[0][ind.bone_distance(f"hip_{side}", q) < 0]
        assert np.sign(np.median(xh)) == SIDES[side]


def test_poses_vary_within_sane_ranges():
    rows = []
    for seed in SEEDS:
        ind = _scene(seed).ind
        m = ind.marks
        for side, sign in SIDES.items():
            head, knee, ankle = m[f"head_{side}"], m[f"knee_{side}"], m[f"ankle_{side}"]
            rows.append((np.linalg.norm(knee - head), head[2] - knee[2], knee[2] - ankle[2],
                         np.linalg.norm(ankle - knee), sign * (knee[0] - head[0]), knee[1] - head[1]))
        assert 150.0 < m["head_left"][0] - m["head_right"][0] < 260.0          # head centres apart, mm
    femur, drop, shin_drop, shin, lateral, forward = np.array(rows).T
    assert ((femur > 300) & (femur < 560)).all(), femur                        # femur length (head-knee)
    assert (drop > 250).all() and np.median(drop) > 340, drop                   # knee below head (flexion)
    assert ((shin > 270) & (shin < 470)).all() and (shin_drop > 250).all(), shin
    assert ((lateral > -80) & (lateral < 170)).all(), lateral                  # abduction/adduction
    assert ((forward > -320) & (forward < 80)).all(), forward                  # hip flexion
    assert forward.std() > 20 and lateral.std() > 15                           # the poses vary
    assert (forward < -10).mean() > 0.4                                        # mostly some flexion
    assert {_scene(s).ind.body for s in SEEDS} == set(BODIES)


def test_landmarks_follow_the_deformed_bones():
    """The head and knee marks are where the atlas landmarks end up: same bone distance as in the atlas."""
    worst = 0.0
    for seed in SEEDS[:10]:
        ind = _scene(seed).ind
        atlas_marks = load_body(ind.body)[1]
        for side in SIDES:
            for mark in ("head", "knee"):
                expected = ind.bones[f"femur_{side}"].distance(_point(atlas_marks[f"{mark}_{side}"]))[0]
                got = ind.bone_distance(f"femur_{side}", _point(ind.marks[f"{mark}_{side}"]))[0]
                worst = max(worst, abs(got - expected))
    assert worst < 0.5, f"a landmark is {worst:.1f} mm (in bone distance) off its bone"


# --- 3. tissue HU ------------------------------------------------------------------------------------------
def test_drawn_tissue_values_are_physiological():
    rng = np.random.default_rng(0)
    draws = [draw_hu(rng) for _ in range(3000)]

    def values(key, where=lambda h: True):
        return np.array([h[key] for h in draws if where(h)])

    assert (values("air") == -1000).all()
    for key, lo, hi in [("fat", -125, -80), ("muscle", 30, 65), ("skin", 20, 60), ("visceral", -115, -70),
                        ("lung", -900, -780), ("canal", -90, 30), ("cortex", 650, 1850), ("trabecular", 60, 400), ("head_density", 1.0, 1.5),
                        ("metal", 2500, HU_MAX), ("disc", 70, 110), ("csf", 0, 20), ("fluid", 0, 25),
                        ("stool", -60, 40), ("urine", 0, 900), ("table_core", -950, -750),
                        ("tendon", 65, 110)]:
        v = values(key)
        assert v.min() >= lo and v.max() <= hi, key
        assert v.max() - v.min() > 0.8 * (hi - lo) * (0.5 if key == "urine" else 1.0), key   # spans its range
    normal, porotic = (lambda h: not h["porotic"]), (lambda h: h["porotic"])
    assert values("cortex", normal).min() >= 900 and values("cortex", porotic).max() <= 1200
    assert values("trabecular", normal).min() >= 150 and values("trabecular", porotic).max() <= 150
    assert 0.2 < len(values("cortex", porotic)) / len(draws) < 0.3
    assert all(h["cortex"] > h["trabecular"] * h["head_density"] + 250 and min(h["trabecular"], h["muscle"]) > h["fat"] + 100
               and h["metal"] > h["cortex"] + 600 for h in draws)
    phases = np.array([h["phase"] for h in draws])
    for phase, p in (("none", 0.4), ("arterial", 0.3), ("venous", 0.3)):
        assert abs(np.mean(phases == phase) - p) < 0.04, phase
    assert (values("artery", lambda h: h["phase"] == "arterial") > 219).all()
    assert all(h["artery"] > h["vein"] for h in draws if h["phase"] == "arterial")
    plain = [h for h in draws if h["phase"] == "none"]
    assert all(35 <= h["artery"] <= 55 and 35 <= h["vein"] <= 55 and h["kidney"] <= 45 for h in plain)


@pytest.mark.slow
def test_a_thin_subchondral_cortex_makes_the_femoral_head_rim_fainter(monkeypatch, rendered_directly):
    """The end cortex is drawn per individual; at 3 mm voxels a 0.35 mm plate leaves a faint rim, a 1.3 mm one a
    bright ring, and the head's interior (beyond the partial volume) is the same."""
    seed, coverage, spacing = 3, "pelvis", (3.0, 3.0, 3.0)
    drawn = phantom2_scene.draw_body
    rims, interiors = {}, {}
    for end in (0.35, 1.3):
        monkeypatch.setattr(phantom2_scene, "draw_body", lambda rng, ind: {**drawn(rng, ind), "end_cortex": end})
        case = generate_case(seed, spacing=spacing, coverage=coverage)
        geometry, shape, rotation, fov = _grid(seed, coverage, spacing)
        lps, anat = _centres(geometry, shape, rotation)
        q, ind = _q(anat), _scene(seed).ind
        head = np.zeros(shape, bool)
        d = np.full(shape, np.inf, np.float32)
        for side in SIDES:
            d_side = ind.bone_distance(f"femur_{side}", q)
            near = np.linalg.norm(anat - ind.marks[f"head_{side}"], axis=-1) < 30.0
            head |= near
            d = np.where(near, d_side, d)
        inside = head & _in_fov(geometry, shape, lps, fov, margin=10.0)
        rims[end] = float(case.ct[inside & (d > -1.5) & (d <= 0.0)].mean())
        interiors[end] = float(case.ct[inside & (d < -6.0)].mean())
    assert rims[0.35] < rims[1.3] - 50, (rims, interiors)
    assert abs(interiors[0.35] - interiors[1.3]) < 5, interiors


def test_fixed_tissue_values_change_the_ct_only():
    seed, coverage, spacing = 3, "pelvis", (8.0, 8.0, 8.0)
    drawn = {k: v for k, v in _scene(seed).hu.items() if isinstance(v, float)}
    plain = generate_case(seed, spacing=spacing, coverage=coverage)
    same = generate_case(seed, spacing=spacing, coverage=coverage, tissue=drawn)     # the same bits
    faint = generate_case(seed, spacing=spacing, coverage=coverage, tissue={"cortex": 300.0, "trabecular": 100.0})
    assert np.array_equal(plain.ct, same.ct) and np.array_equal(plain.label, faint.label)
    femur = plain.label > 0
    assert faint.ct[femur].mean() < plain.ct[femur].mean() - 80       # 8 mm voxels: mostly partial volume
    with pytest.raises(FemurUNetError, match="unknown tissue setting.*known: .*cortex"):
        generate_case(seed, spacing=spacing, coverage=coverage, tissue={"bone": 1.0})
    with pytest.raises(FemurUNetError, match="tissue setting cortex must be a finite number, got nan"):
        generate_case(seed, spacing=spacing, coverage=coverage, tissue={"cortex": float("nan")})


def test_the_femoral_head_is_denser_than_the_neck_by_the_drawn_factor(rendered_directly):
    """The head's trabecular bone is ``head_density`` x the drawn trabecular value; the neck's and the hip bone's
    stay as drawn (textured and noisy, so compared as means of many voxels)."""
    seed, coverage, spacing = 3, "pelvis", (2.0, 2.0, 2.0)
    geometry, shape, rotation, fov = _grid(seed, coverage, spacing)
    lps, anat = _centres(geometry, shape, rotation)
    q, ind = _q(anat), _scene(seed).ind
    head, neck, hip = (np.zeros(shape, bool) for _ in range(3))
    for side in SIDES:
        r = np.linalg.norm(anat - ind.marks[f"head_{side}"], axis=-1)
        femur = ind.bone_distance(f"femur_{side}", q) < -3.0
        head |= femur & (r < ind.head_radius - 6.0)
        neck |= femur & (r > ind.head_radius + 8.0) & (r < ind.head_radius + 20.0)
        hip |= ind.bone_distance(f"hip_{side}", q) < -3.0
    inside = _in_fov(geometry, shape, lps, fov, margin=10.0)
    means = {}
    for factor in (1.0, 1.5):
        tissue = {"trabecular": 300.0, "head_density": factor}
        ct = generate_case(seed, spacing=spacing, coverage=coverage, tissue=tissue).ct.astype(float)
        means[factor] = [ct[region & inside].mean() for region in (head, neck, hip)]
    (head1, neck1, hip1), (head15, neck15, hip15) = means[1.0], means[1.5]
    assert head.sum() > 300 and neck.sum() > 300
    assert 0.4 * 300 < head15 - head1 < 0.6 * 300, means
    assert abs(neck15 - neck1) < 5 and abs(hip15 - hip1) < 1, means


@pytest.mark.slow
def test_measured_ct_values_of_bone_fat_and_air(rendered_directly):
    """Median HU deep in the shaft cortex, in the marrow canal, in subcutaneous fat and in the air around."""
    seed, coverage, spacing = 2, "hip_to_knee", (3.0, 3.0, 4.0)
    case = _case(seed, coverage, spacing)
    assert case.ct.dtype == np.int16 and case.label.dtype == np.uint8
    assert HU_MIN <= case.ct.min() and case.ct.max() <= HU_MAX
    geometry, shape, rotation, fov = _grid(seed, coverage, spacing)
    assert geometry == case.geometry
    lps, anat = _centres(geometry, shape, rotation)
    q = _q(anat)
    scene = _scene(seed)
    ind, m, hu, body = scene.ind, scene.ind.marks, scene.hu, scene.body
    in_fov = _in_fov(geometry, shape, lps, fov, margin=10.0)
    thickness = 1.2 + body["shaft_cortex"]
    for side in SIDES:
        d = ind.bone_distance(f"femur_{side}", q)
        top, bottom = m[f"head_{side}"], m[f"knee_{side}"]
        t = (q[2] - bottom[2]) / (top[2] - bottom[2])
        middle = (t > 0.35) & (t < 0.6) & in_fov
        cortex = middle & (d <= -1.5) & (d >= -(thickness - 1.5))
        canal = middle & (d < -(thickness + 3.0))
        assert cortex.sum() > 200 and canal.sum() > 50
        c = float(np.median(case.ct[cortex]))
        assert c > 700 and 0.7 * hu["cortex"] < c < 1.3 * hu["cortex"], (side, c, hu["cortex"])
        assert float(np.median(case.ct[canal])) < 0.25 * c                 # fatty marrow, dark
    d_skin = skin_distance(q, ind, body)
    assert body["fat"] > 30                                                 # a thick fat layer to sample
    fat = (d_skin < -6.0) & (d_skin > -(fat_thickness(q, body) - 6.0)) & (q[2] > body["crotch"] + 50) & in_fov
    assert fat.sum() > 1000
    f = float(np.median(case.ct[fat]))
    assert hu["fat"] - 45 < f < hu["fat"] + 15 and -170 < f < -60, (f, hu["fat"])   # cupping lowers it a little
    air = (d_skin > 15.0) & in_fov
    if body["table"] is not None:
        air &= np.abs(q[1] - body["table"]) > 25.0
    for item in scene.items:
        if item.name.startswith("arm"):
            air &= item.distance(q) > 15.0
    assert air.sum() > 10000
    assert abs(float(np.median(case.ct[air])) + 1000) <= 10
    assert np.percentile(case.ct[air], 99) < -800


def _side_items(scene, side):
    """The bones, vessels and tendons of one leg (items whose distance matters at its knee)."""
    return [it for it in scene.items if it.name.endswith(f"_{side}") and not it.name.startswith("knee_fat")]


@pytest.mark.slow
def test_knee_joint_sits_in_fat_with_its_tendons(rendered_directly):
    """Around the knee joint (within 12 mm of its height, 6 mm inside the skin, 4 mm from bones, vessels and
    tendons) the CT is mostly fat, as in patients; the patellar tendon has tendon values; neither fat pads nor
    tendons paint outside the skin."""
    seed, coverage, spacing = 7, "knee_to_ankle", (2.0, 2.0, 3.0)
    case = _case(seed, coverage, spacing, tuple(np.eye(3).ravel()))
    geometry, shape, rotation, fov = _grid(seed, coverage, spacing, np.eye(3))
    lps, anat = _centres(geometry, shape, rotation)
    scene = _scene(seed)
    ind, body, hu = scene.ind, scene.body, scene.hu
    in_fov = _in_fov(geometry, shape, lps, fov, margin=10.0)
    for side in SIDES:
        knee = ind.marks[f"knee_{side}"]
        band = (np.abs(anat[..., 2] - knee[2]) < 12) & (np.hypot(*(anat[..., :2] - knee[:2]).T).T < 80) & in_fov
        q, ct = _q(anat[band]), case.ct[band]
        soft = skin_distance(q, ind, body) < -6.0
        for item in _side_items(scene, side):
            soft &= item.distance(q) > 4.0
        assert soft.sum() > 2000, side
        assert np.median(ct[soft]) < -40 and np.mean(ct[soft] < -30) > 0.5, (side, np.median(ct[soft]))
        tendon = next(it for it in scene.items if it.name == f"patellar_tendon_{side}")
        q_all = _q(anat[in_fov])
        inside = tendon.distance(q_all) < -1.5
        assert inside.sum() > 10
        assert abs(np.median(case.ct[in_fov][inside]) - hu["tendon"]) < 45, side     # partial volume with fat
        box = _box(knee, 90.0, 4.0)
        for item in (it for it in scene.items if it.name.startswith(("knee_fat", "patellar", "quadriceps"))):
            assert (skin_distance(box, ind, body)[item.distance(box) < 0] < -2.0).all(), item.name


# --- 4. coverages ------------------------------------------------------------------------------------------
def _scanner_z(rotation, point):
    return float((rotation @ np.asarray(point, float))[2])


@pytest.mark.parametrize("coverage", ALL_COVERAGES)
def test_each_coverage_scans_its_range(coverage):
    seed = 3
    case = _case(seed, coverage, VERY_COARSE)
    assert case.coverage == coverage and case.body in BODIES
    geometry, shape, rotation, fov = _grid(seed, coverage, VERY_COARSE)
    assert geometry == case.geometry
    lps, _ = _centres(geometry, shape, rotation)
    z0, z1 = float(lps[..., 2].min()), float(lps[..., 2].max())
    m = _scene(seed).ind.marks
    head = max(_scanner_z(rotation, m[f"head_{s}"]) for s in SIDES)
    knee = min(_scanner_z(rotation, m[f"knee_{s}"]) for s in SIDES)
    ankle = min(_scanner_z(rotation, m[f"ankle_{s}"]) for s in SIDES)

    def scanned(z, tolerance=25.0):
        return z0 - tolerance <= z <= z1 + tolerance
    values = set(np.unique(case.label))
    if coverage == "lower_leg":                                # a shin: from under both knees into the ankles
        assert values == {0} and z1 < knee - BELOW_KNEE + 10 and scanned(ankle)
    elif coverage in FEMUR_FREE:
        assert values == {0} and z0 > head + 100
    elif coverage == "knee_to_ankle":
        assert values in ({0, 1}, {0, 2}, {0, 1, 2}) and z1 < head - 100
        assert scanned(knee) and scanned(ankle)
        z_label = lps[..., 2][case.label > 0]
        assert z_label.min() > 0.5 * (z0 + z1)                 # the distal femur only, at the top
        assert z1 - z_label.max() < 2 * VERY_COARSE[2] + 140   # up to the top of the scan
    else:
        assert values == {0, 1, 2} and scanned(head)
        assert scanned(knee) == (coverage in ("hip_to_knee", "whole_leg"))
        assert scanned(ankle) == (coverage == "whole_leg")
        if coverage == "pelvis":
            assert z1 > head + 60                              # iliac crests above the heads


def test_drawn_coverages_follow_the_coverage_probabilities(monkeypatch):
    """generate_case's own coverage draw, stopped before any rendering (anatomy and grid stubbed out)."""
    class Drawn(Exception):
        pass

    def stop(rng, scene, coverage, *grid):
        raise Drawn(coverage)
    monkeypatch.setattr(phantom2, "_scene", lambda *streams, hips=None: SimpleNamespace(flags={}))
    monkeypatch.setattr(phantom2, "make_grid", stop)
    n, drawn = 4000, []
    for seed in range(n):
        with pytest.raises(Drawn) as info:
            generate_case(seed)
        drawn.append(info.value.args[0])
    assert abs(sum(COVERAGES.values()) - 1.0) < 1e-9
    assert set(drawn) == set(COVERAGES)
    for coverage, p in COVERAGES.items():
        f = drawn.count(coverage) / n
        assert abs(f - p) < 4.5 * np.sqrt(p * (1 - p) / n), (coverage, f, p)


def test_scan_fields_cut_crop_and_resample_at_their_rates():
    """Trunk scans: a field narrower than the body (sides cut), a rectangular (cropped) field, isotropic
    1.5-3 mm voxels, each at its stated rate (2000 draws on one scene); leg-only scans are never cropped."""
    scene, n = _scene(3), 2000
    width = 2 * scene.body["sx"][1]
    for coverage in ("pelvis", "knee_to_ankle"):
        scans = [phantom2._draw_scan(np.random.default_rng(s), scene, coverage) for s in range(n)]
        fov, fov_y = np.array([s["fov"] for s in scans]), np.array([s["fov_y"] for s in scans])
        s_xy, s_z = fov / np.array([s["n_xy"] for s in scans]), np.array([s["s_z"] for s in scans])
        iso = np.array([s["resampled"] for s in scans])
        assert abs(iso.mean() - phantom2.RESAMPLED_P) < 4.5 * np.sqrt(0.09 / n), coverage
        assert (s_z[iso] >= 1.5).all() and (s_z[iso] <= 3.0 + 1e-9).all()
        assert (np.abs(s_xy[iso] / s_z[iso] - 1) < 0.02).all()                # isotropic voxels
        cropped = fov_y < fov
        if coverage == "knee_to_ankle":
            assert not cropped.any()
            continue
        assert abs(cropped.mean() - phantom2.CROPPED_P) < 4.5 * np.sqrt(0.16 / n)
        assert (fov_y[cropped] >= 0.65 * fov[cropped] - 1e-6).all()
        cut = fov < width
        assert abs(cut.mean() - phantom2.BODY_CUT_P) < 4.5 * np.sqrt(0.09 / n)
        assert (fov[cut] >= np.maximum(300.0, 0.85 * width) - 1e-6).all()


def test_a_cropped_field_gives_a_rectangular_grid_of_its_extent():
    scene = _scene(3)
    seed = next(s for s in range(200) if (lambda d: d["fov_y"] < 0.8 * d["fov"])(
        phantom2._draw_scan(np.random.default_rng(s), scene, "pelvis")))
    scan = phantom2._draw_scan(np.random.default_rng(seed), scene, "pelvis")
    geometry, shape, _, fov = phantom2.make_grid(np.random.default_rng(seed), scene, "pelvis", COARSE, np.eye(3))
    assert fov == scan["fov"]
    assert shape[2] == round(scan["fov"] / COARSE[0]) and shape[1] == round(scan["fov_y"] / COARSE[1])


@pytest.mark.slow
def test_no_femur_label_outside_the_field_of_view():
    seed, coverage = 3, "whole_leg"
    case = _case(seed, coverage, COARSE)
    geometry, shape, rotation, fov = _grid(seed, coverage, COARSE)
    lps, _ = _centres(geometry, shape, rotation)
    outside = ~_in_fov(geometry, shape, lps, fov)
    assert (case.ct[outside] == HU_MIN).all()                  # the cut-off itself
    assert (case.label > 0).sum() > 1000
    assert not (case.label[outside] > 0).any(), f"{int((case.label[outside] > 0).sum())} femur voxels in the cut"


@pytest.mark.slow
def test_leg_scans_hold_the_legs_they_aim_at():
    """knee_to_ankle: a one-leg (small) field of view holds that leg's tibia; a two-leg one half of each."""
    failures = []
    for seed in range(30):
        scene = _scene(seed)
        geometry, shape, rotation, fov = _grid(seed, "knee_to_ankle", VERY_COARSE)
        centre = geometry.ijk_to_lps()[:3, :3] @ ((np.asarray(shape[::-1], float) - 1) / 2) + np.asarray(geometry.origin)
        z = [geometry.origin[2], (geometry.ijk_to_lps() @ np.append(np.asarray(shape[::-1], float) - 1, 1))[2]]
        shares = []
        for side in SIDES:
            lo, hi = scene.ind.bone_bounds(f"tibia_{side}")
            axes = [np.arange(a, b, 4.0) for a, b in zip(lo, hi)]
            pts = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, 3)
            tibia = pts[scene.ind.bone_distance(f"tibia_{side}", _q(pts)) < 0] @ rotation.T   # scanner frame
            tibia = tibia[(tibia[:, 2] >= min(z)) & (tibia[:, 2] <= max(z))]
            shares.append(np.mean((tibia[:, 0] - centre[0]) ** 2 + (tibia[:, 1] - centre[1]) ** 2 <= (fov / 2) ** 2))
        one_leg = fov <= 260.0
        if (one_leg and max(shares) < 0.95) or (not one_leg and min(shares) < 0.5):
            failures.append((seed, round(fov), [round(float(s), 2) for s in shares]))
    assert not failures, failures


def test_targeted_hip_fields_are_drawn_for_pelvis_and_hip_to_knee_scans_only():
    assert _case(3, "pelvis").hip_field == "" and phantom2.draw_hip_field(phantom2._streams(3)[7], "pelvis") is None
    n = 4000
    for coverage in COVERAGES:
        fields = [phantom2.draw_hip_field(np.random.default_rng(s), coverage) for s in range(n)]
        drawn = [f for f in fields if f is not None]
        if coverage not in phantom2.HIP_FIELD_COVERAGES:
            assert not drawn, coverage
            continue
        p = phantom2.HIP_FIELD_P
        assert abs(len(drawn) / n - p) < 4.5 * np.sqrt(p * (1 - p) / n), coverage
        fov = np.array([f["fov"] for f in drawn])
        assert fov.min() >= 150.0 and fov.max() <= 250.0 and np.ptp(fov) > 80.0
        assert abs(np.mean([f["side"] == "left" for f in drawn]) - 0.5) < 0.1


@pytest.mark.parametrize("coverage", ["pelvis", "hip_to_knee"])
def test_a_targeted_hip_field_holds_that_hip_only_with_its_exact_label(coverage):
    """The field (150-250 mm) holds the aimed femoral head; the other femur is outside; the label is exact."""
    seed = next(s for s in range(200) if phantom2.draw_hip_field(phantom2._streams(s)[7], coverage))
    side = phantom2.draw_hip_field(phantom2._streams(seed)[7], coverage)["side"]
    case = generate_case(seed, spacing=COARSE, coverage=coverage, direction=np.eye(3))
    geometry, shape, rotation, fov = _grid(seed, coverage, COARSE, np.eye(3))
    assert 150.0 <= fov <= 250.0 and case.label.shape == shape and case.hip_field == side
    head = rotation @ _scene(seed).ind.marks[f"head_{side}"]
    assert _in_fov(geometry, shape, head[None], fov, margin=30.0)[0], "the aimed femoral head is not in the field"
    lps, anat = _centres(geometry, shape, rotation)
    truth = femur_truth(seed, _q(anat))
    inside = _in_fov(geometry, shape, lps, fov, margin=2 * max(COARSE))
    assert (truth[inside] == phantom2.LABEL[side]).sum() > 100
    other = "right" if side == "left" else "left"
    assert not (case.label == phantom2.LABEL[other]).any(), "the other femur is labelled"
    wrong = (case.label != truth) & inside
    assert not wrong.any(), f"{int(wrong.sum())} voxels differ from the truth"


def test_field_of_view_is_a_scanner_axial_disc_on_a_permuted_grid():
    seed, coverage = 3, "hip_to_knee"
    direction = np.eye(3)[:, [1, 2, 0]]                            # k along x: sagittal slices
    case = _case(seed, coverage, VERY_COARSE, tuple(direction.ravel()))
    geometry, shape, rotation, fov = _grid(seed, coverage, VERY_COARSE, direction)
    lps, _ = _centres(geometry, shape, rotation)
    inside = _in_fov(geometry, shape, lps, fov, margin=10.0)
    femur = (case.label > 0) & inside
    assert femur.sum() > 1000
    assert not (case.ct[femur] == HU_MIN).any(), f"{int((case.ct[femur] == HU_MIN).sum())} femur voxels cut away"
    assert (case.ct[~_in_fov(geometry, shape, lps, fov)] == HU_MIN).all()


# --- 5. determinism ----------------------------------------------------------------------------------------
def test_same_seed_same_case_other_seed_other_case():
    a = generate_case(5, spacing=VERY_COARSE, coverage="pelvis")
    b = generate_case(5, spacing=VERY_COARSE, coverage="pelvis")
    assert np.array_equal(a.ct, b.ct) and np.array_equal(a.label, b.label) and a.geometry == b.geometry
    assert (a.name, a.coverage, a.body, a.metal, a.arms) == (b.name, b.coverage, b.body, b.metal, b.arms)
    assert a.name == "phantom0005" and a.label.any()
    c = generate_case(6, spacing=VERY_COARSE, coverage="pelvis")
    assert a.ct.shape != c.ct.shape or not np.array_equal(a.ct, c.ct)
    assert a.label.shape != c.label.shape or not np.array_equal(a.label, c.label)
    d, e = generate_case(7, spacing=VERY_COARSE), generate_case(7, spacing=VERY_COARSE)   # drawn coverage too
    assert d.coverage == e.coverage and np.array_equal(d.ct, e.ct) and np.array_equal(d.label, e.label)


def test_the_individual_depends_on_the_seed_only():
    points = _box((0.0, 0.0, -150.0), 150.0, 10.0)
    a = femur_truth(9, points)
    assert np.array_equal(a, femur_truth(9, points)) and set(np.unique(a)) == {0, 1, 2}
    assert not np.array_equal(a, femur_truth(10, points))
    s, t = make_scene(9), make_scene(9)
    assert s.ind.body == t.ind.body and s.hu == t.hu
    assert all(np.array_equal(s.ind.marks[k], t.ind.marks[k]) for k in s.ind.marks)
    assert not np.allclose(s.ind.marks["knee_left"], make_scene(10).ind.marks["knee_left"])


def test_bad_arguments_are_one_line_errors():
    for kwargs, words in [({"coverage": "feet"}, "coverage"), ({"shape": (10, 0, 10)}, "shape"),
                          ({"spacing": (1.0, 0.0, 1.0)}, "spacing"), ({"direction": np.ones((3, 3))}, "direction")]:
        with pytest.raises(FemurUNetError, match=words):
            generate_case(1, **kwargs)
    with pytest.raises(FemurUNetError, match="seed"):
        generate_case(-1)


# --- 6. the sample command ---------------------------------------------------------------------------------
@pytest.mark.slow
def test_sample_command_writes_a_pelvis_case(tmp_path):
    out = tmp_path / "phantoms"
    exe = shutil.which("femurunet")
    command = [exe] if exe else [sys.executable, "-m", "FemurUNetTrainLib.cli"]
    run = subprocess.run(command + ["sample", str(out), "--phantom", "2", "--coverage", "pelvis", "--seed", "7"],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith("phantom0007") and "pelvis" in run.stdout
    assert "femurs of LibHip m3" in run.stdout                          # seed 7: a LibHip man's proximal femurs
    assert sorted(p.name for p in out.iterdir()) == ["phantom0007_ct.nii.gz", "phantom0007_femur.nii.gz"]
    ct_image = sitk.ReadImage(str(out / "phantom0007_ct.nii.gz"))
    label_image = sitk.ReadImage(str(out / "phantom0007_femur.nii.gz"))
    assert ct_image.GetPixelID() == sitk.sitkInt16 and label_image.GetPixelID() == sitk.sitkUInt8
    geometry = Geometry.from_sitk(label_image)
    assert Geometry.from_sitk(ct_image) == geometry and ct_image.GetSize() == label_image.GetSize()
    expected, shape, rotation, _ = _grid(7, "pelvis")                    # the drawn full-resolution grid
    assert geometry == expected
    label = sitk.GetArrayFromImage(label_image)
    ct = sitk.GetArrayFromImage(ct_image)
    assert label.shape == shape == ct.shape
    assert set(np.unique(label)) == {0, 1, 2}
    assert HU_MIN <= ct.min() and ct.max() <= HU_MAX
    k = np.arange(0, shape[0], 7)                                        # every 7th slice: exact truth there
    kk, jj, ii = np.meshgrid(k, np.arange(shape[1]), np.arange(shape[2]), indexing="ij")
    lps = np.stack([ii, jj, kk], axis=-1) @ geometry.ijk_to_lps()[:3, :3].T + np.asarray(geometry.origin)
    assert np.array_equal(label[k], femur_truth(7, _q(lps @ rotation)))


def test_sample_rejects_an_unknown_coverage(tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["sample", str(tmp_path / "x"), "--phantom", "2", "--coverage", "feet"])
    assert info.value.code == 2
    assert "--coverage" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_sample_makes_the_hip_shape_asked_for_and_names_it(tmp_path, capsys, monkeypatch):
    asked = []

    def small_case(seed, **kw):
        asked.append(kw)
        return generate_case(seed, spacing=(6.0, 6.0, 6.0), **kw)
    monkeypatch.setattr(phantom2, "generate_case", small_case)
    assert cli.main(["sample", str(tmp_path / "x"), "--seed", "9001", "--coverage", "pelvis", "--hips", "mri2psm"]) == 0
    assert asked == [{"coverage": "pelvis", "hips": "mri2psm"}]
    assert "hip bones of MRI2PSM" in capsys.readouterr().out
    assert cli.main(["sample", str(tmp_path / "y"), "--seed", "9001", "--coverage", "pelvis"]) == 0
    assert asked[-1] == {"coverage": "pelvis"} and "MRI2PSM" not in capsys.readouterr().out   # 9001 draws the atlas's
    assert cli.main(["sample", str(tmp_path / "z"), "--phantom", "1", "--hips", "mri2psm"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--hips needs --phantom 2" in err and not (tmp_path / "z").exists()


def test_sample_rejects_a_coverage_for_phantom_v1(tmp_path, capsys):
    assert cli.main(["sample", str(tmp_path / "x"), "--phantom", "1", "--coverage", "pelvis"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--coverage" in err
    assert not (tmp_path / "x").exists()


def test_parallel_slabs_give_the_same_bits():
    one = generate_case(4, spacing=(4.0, 4.0, 4.0), coverage="pelvis", jobs=1)
    two = generate_case(4, spacing=(4.0, 4.0, 4.0), coverage="pelvis", jobs=2)
    assert np.array_equal(one.ct, two.ct) and np.array_equal(one.label, two.label)
    assert one.geometry == two.geometry


@pytest.mark.parametrize("seed, coverage, spacing, direction", [
    (9000, "pelvis", (4.0, 4.0, 4.0), SIGNED_PERMUTATIONS[13]),
    (5, "whole_leg", (6.0, 6.0, 6.0), _rotation(8, -12, 25))])
def test_slabs_of_any_size_and_the_painted_boxes_give_the_same_bits(monkeypatch, seed, coverage, spacing, direction):
    """Textures and noise are drawn row by row, and each body part and capsule is painted within its own box:
    rows grouped one by one or all at once, and boxes as wide as the grid, give the very same case."""
    def case(**patch):
        with monkeypatch.context() as m:
            for name, value in patch.items():
                m.setattr(phantom2, name, value)
            return generate_case(seed, spacing=spacing, direction=direction, coverage=coverage, jobs=1)
    default = case()
    for other in (case(SLAB_VOXELS=1), case(SLAB_VOXELS=10**9), case(BODY_MARGIN=5000.0)):
        assert np.array_equal(default.ct, other.ct) and np.array_equal(default.label, other.label)


@pytest.mark.parametrize("seed", SEEDS[:6])
def test_skin_septa_and_cavity_lie_inside_their_parts_boxes(seed):
    """What lets the renderer skip the voxels beyond BODY_MARGIN of a body part's box: there each distance is
    far above the widest partial-volume ramp."""
    scene = _scene(seed)
    ind, body = scene.ind, scene.body
    parts = body_parts_bounds(ind, body)
    rng = np.random.default_rng(seed)
    q = tuple(rng.uniform(lo, hi, 400_000).astype(np.float32) for lo, hi in ((-400, 400), (-350, 350), (-1000, 900)))
    margin = phantom2.BODY_MARGIN

    def outside(names):
        out = np.ones(q[0].shape, bool)
        for name in names:
            lo, hi = parts[name]
            inside = np.ones(q[0].shape, bool)
            for c, a, b in zip(q, lo, hi):
                inside &= (c > a - margin) & (c < b + margin)
            out &= ~inside
        return out

    far = outside([k for k in parts if k.startswith(SKIN_PARTS)])
    assert 0.2 < far.mean() < 0.95
    assert skin_distance(tuple(c[far] for c in q), ind, body).min() > margin / 2
    for side in SIDES:
        far = outside([f"septa_{side}"])
        assert septa_distance(tuple(c[far] for c in q), ind, body, side).min() > margin / 2
    far = outside(["cavity"])
    assert cavity_distance(tuple(c[far] for c in q), body).min() > margin / 2


@pytest.mark.parametrize("shape", [(7, 9, 11), (1, 5, 6), (2, 1, 9), (5, 4, 1), (3, 2, 2)])
def test_ramp_width_is_the_voxel_extent_across_the_surface_of_any_rows(shape):
    d = (np.random.default_rng(len(shape) + shape[0]).standard_normal(shape) * 10).astype(np.float32)
    spacing = (0.8, 1.5, 3.0)
    full = np.full(shape, 0.25, np.float32)
    for axis in range(3):
        full += 0.5 * spacing[2 - axis] if shape[axis] == 1 else np.abs(np.gradient(d, axis=axis))
    assert np.array_equal(ramp_width(d, 0.25, spacing), full)
    for start in range(shape[0]):
        for stop in range(start + 1, shape[0] + 1):
            assert np.array_equal(ramp_width(d, 0.25, spacing, slice(start, stop)), full[start:stop])


# --- metal artefacts from projections --------------------------------------------------------------------------
def _water_disc(n, pixel, radius_mm, mu=0.02):
    yy, xx = np.mgrid[0:n, 0:n]
    return (np.hypot(xx - (n - 1) / 2, yy - (n - 1) / 2) * pixel < radius_mm).astype(np.float32) * mu


def test_projection_keeps_the_mass_and_filtered_backprojection_recovers_a_disc():
    beam = ParallelBeam((96, 96), 3.0, 3.0)
    disc = _water_disc(96, 3.0, 120.0)
    sinogram = beam.project(disc)
    assert np.allclose(sinogram.sum(axis=1) * beam.ds, disc.sum() * 9.0, rtol=1e-4)      # every view: all of it
    image = beam.filtered_backprojection(sinogram)
    assert abs(image[48, 48] - 0.02) < 0.001 and abs(image[48, 16] - 0.02) < 0.001        # inside: within 5 %
    assert abs(image[2, 2]) < 0.001                                                        # outside: nothing


def _hips_with_metal(left=True, right=True, n=256, pixel=1.6):
    """Three slices of a water ellipse with two bone rings (HU); metal in the heads of slice 1 (``left``,
    ``right``), in the left head of slice 2, none in slice 0."""
    yy, xx = np.mgrid[0:n, 0:n]
    x, y = (xx - (n - 1) / 2) * pixel, (yy - (n - 1) / 2) * pixel
    hu = np.full((3, n, n), -1000.0, np.float32)
    hu[:, (x / 180) ** 2 + (y / 120) ** 2 < 1] = 40.0
    for cx in (-90, 90):
        hu[:, np.hypot(x - cx, y) < 25] = 1200.0
    hu[1, np.hypot(x + 90, y) < 14] = 2800.0 if left else 1200.0
    hu[1, np.hypot(x - 90, y) < 14] = 2800.0 if right else 1200.0
    hu[2, np.hypot(x + 90, y) < 14] = 2800.0
    return hu, (x, y)


def test_metal_darkens_the_band_between_two_metal_heads_and_streaks_the_soft_tissue():
    hu, (x, y) = _hips_with_metal()
    before = hu.copy()
    assert add_metal_artefacts(hu, (1.6, 1.6, 2.0), np.random.default_rng(0), 1.0)
    change = hu - before
    between = (np.abs(y) < 4) & (np.abs(x) < 50)
    soft = before[1] == 40.0
    assert change[1][between].mean() < -150                      # a dark band along the longest metal paths
    assert change[1][soft].std() > 30 and change[1][soft].max() > 150    # bright and dark streaks
    assert change[2][between].mean() > 0.3 * change[1][between].mean()   # one head: a weaker band (interpolated)
    assert not change[0].any()                                   # no metal in the slice: untouched
    assert np.array_equal(hu[before >= METAL_HU], before[before >= METAL_HU])       # the metal itself as painted


def test_metal_artefacts_scale_with_strength_and_need_metal_to_draw():
    hu, _ = _hips_with_metal()
    weak, strong = hu.copy(), hu.copy()
    add_metal_artefacts(weak, (1.6, 1.6, 2.0), np.random.default_rng(0), 0.25)
    add_metal_artefacts(strong, (1.6, 1.6, 2.0), np.random.default_rng(0), 1.0)
    assert np.allclose(weak - hu, 0.25 * (strong - hu), atol=0.05)
    plain = hu[:1].copy()
    rng, untouched = np.random.default_rng(5), np.random.default_rng(5)
    assert not add_metal_artefacts(plain, (1.6, 1.6, 2.0), rng, 1.0)
    assert np.array_equal(plain, hu[:1]) and rng.random() == untouched.random()    # no draw: other cases unchanged


def test_metal_artefacts_give_the_same_bits_on_two_threads():
    one, _ = _hips_with_metal()
    two = one.copy()
    add_metal_artefacts(one, (1.6, 1.6, 2.0), np.random.default_rng(3), 1.0, threads=1)
    add_metal_artefacts(two, (1.6, 1.6, 2.0), np.random.default_rng(3), 1.0, threads=2)
    assert np.array_equal(one, two)


def test_metal_artefacts_are_streaks_not_stripes_a_pixel_wide():
    """Starved rays through two metal heads on a coarse (2.9 mm) grid: the artefact varies smoothly from pixel
    to pixel (a plain ramp filter or a tissue projection that skips bins made bands of alternating pixels)."""
    hu, (x, y) = _hips_with_metal(n=160, pixel=2.9)
    hu = hu[1:2].copy()
    before = hu.copy()
    add_metal_artefacts(hu, (2.9, 2.9, 3.0), np.random.default_rng(0), 1.0)
    e = (hu - before)[0]
    far = (np.hypot(x + 90, y) > 40) & (np.hypot(x - 90, y) > 40)
    rows = np.abs(e[1:-1] - 0.5 * (e[:-2] + e[2:]))[far[1:-1]].mean()
    cols = np.abs(e[:, 1:-1] - 0.5 * (e[:, :-2] + e[:, 2:]))[far[:, 1:-1]].mean()
    assert e[far].std() > 50 and max(rows, cols) < 0.3 * e[far].std()


@pytest.mark.parametrize("shape", [(2, 6, 5), (1, 1, 9), (3, 20, 300)])
def test_metal_artefacts_on_small_and_thin_slices(shape):
    hu = np.full(shape, 40.0, np.float32)
    hu[0, 0, 0] = 3000.0
    assert add_metal_artefacts(hu, (4.0, 4.0, 4.0), np.random.default_rng(0), 1.0)
    assert np.isfinite(hu).all() and hu[0, 0, 0] == 3000.0 and (hu[1:] == 40.0).all()


def test_computed_rows_are_the_ends_of_each_run_and_every_step_within():
    assert computed_rows([1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 20, 21, 30], 4) == [1, 5, 9, 10, 20, 21, 30]


@pytest.mark.slow
def test_a_hip_implant_case_keeps_the_exact_label_under_strong_artefacts(monkeypatch):
    monkeypatch.setitem(phantom2_scene.IMPLANT_P, "hip", 1.0)
    seed, coverage, spacing = 11, "pelvis", (2.5, 2.5, 3.0)
    case = generate_case(seed, spacing=spacing, coverage=coverage, scanner={"metal_artifact": 1.0})
    plain = generate_case(seed, spacing=spacing, coverage=coverage, scanner={"metal_artifact": 0.0})
    metal_rows = (case.ct >= METAL_HU).any(axis=(1, 2))
    assert case.metal and metal_rows.any()
    body = plain.ct[metal_rows] > -500                                  # the streaks inside the patient
    assert np.abs(case.ct[metal_rows].astype(float) - plain.ct[metal_rows])[body].mean() > 25
    geometry, shape, rotation, fov = _grid(seed, coverage, spacing)
    lps, anat = _centres(geometry, shape, rotation)
    inside = _in_fov(geometry, shape, lps, fov, margin=2 * max(spacing))
    truth = femur_truth(seed, _q(anat))
    assert np.count_nonzero((case.label != truth) & inside) <= 2         # dark streaks do not erase the label
    assert not case.label[~_in_fov(geometry, shape, lps, fov)].any()


# --- coarse grids rendered on a native grid, then resampled -------------------------------------------------
@pytest.mark.parametrize("spacing, direction, factors", [
    ((3.0, 3.0, 3.0), np.eye(3), (3, 3, 3)),
    ((2.0, 2.0, 5.0), np.eye(3), (1, 3, 3)),           # thick slices stay the scanner's own
    ((0.8, 0.8, 2.5), np.eye(3), None),                # a scanner's pixels: rendered directly
    ((3.5, 3.5, 3.0), np.eye(3), None),                # coarser than anything drawn: rendered directly
    ((2.5, 3.0, 1.0), np.eye(3)[:, [2, 0, 1]], (1, 3, 3)),   # permuted: i along the slices (world z), j along x
    ((2.5, 1.0, 1.0), np.eye(3)[:, [2, 0, 1]], None),        # ... and fine pixels: thin slices' spacing only
])
def test_native_rendering_is_for_resampled_in_plane_pixels_only(spacing, direction, factors):
    assert native_factors(Geometry(spacing, (0, 0, 0), direction), (10, 10, 10)) == factors


def test_a_native_grid_too_large_drops_the_slice_factor_first(monkeypatch):
    geometry = Geometry((2.5, 2.5, 2.5), (0, 0, 0), np.eye(3))
    monkeypatch.setattr(phantom2_native, "MAX_NATIVE_VOXELS", 10 * 10 * 10 * 9)
    assert native_factors(geometry, (10, 10, 10)) == (1, 3, 3)
    monkeypatch.setattr(phantom2_native, "MAX_NATIVE_VOXELS", 10 * 10 * 10 * 8)
    assert native_factors(geometry, (10, 10, 10)) is None


def test_every_coarse_voxel_centre_is_a_native_voxel_centre():
    direction = _rotation(10, -15, 25) @ np.eye(3)[:, [1, 0, 2]]
    coarse = Geometry((2.5, 3.0, 2.0), (-12.0, 40.0, 7.0), direction)
    factors = (3, 1, 3)
    fine, shape = native_grid(coarse, (4, 5, 6), factors)
    assert shape == (12, 5, 18) and np.allclose(fine.spacing, (2.5 / 3, 3.0, 2.0 / 3))
    points = fine.physical_points(shape)[1::3, :, 1::3]
    assert np.allclose(points, coarse.physical_points((4, 5, 6)), atol=1e-9)


def test_resampling_blends_the_centre_samples_with_the_block_means():
    fine = np.random.default_rng(0).normal(size=(6, 3, 9)).astype(np.float32)
    centre = fine[1::3, :, 1::3]
    mean = fine.reshape(2, 3, 3, 1, 3, 3).mean(axis=(1, 3, 5))
    assert np.array_equal(resampled(fine, (3, 1, 3), 0.0), centre)
    assert np.allclose(resampled(fine, (3, 1, 3), 1.0), mean, atol=1e-6)
    assert np.allclose(resampled(fine, (3, 1, 3), 0.25), 0.75 * centre + 0.25 * mean, atol=1e-6)


def test_native_rendering_is_drawn_for_most_cases_with_any_antialiasing():
    draws = [draw_native(phantom2._streams(seed)[6]) for seed in range(2000)]
    rate = np.mean([d["native"] for d in draws])
    antialias = np.array([d["antialias"] for d in draws])
    assert abs(rate - phantom2_native.NATIVE_P) < 4 * np.sqrt(0.21 / 2000)
    assert antialias.min() >= 0 and antialias.max() <= 1 and abs(antialias.mean() - 0.5) < 0.03


@pytest.mark.slow
def test_a_resampled_case_keeps_the_exact_label_and_looks_resampled(monkeypatch):
    seed, spacing = 24, (3.0, 3.0, 6.0)                 # slices of 6 mm: in-plane pixels rendered 3x finer only
    monkeypatch.setattr(phantom2_native, "NATIVE_P", 0.0)
    direct = generate_case(seed, spacing=spacing, coverage="pelvis")
    monkeypatch.setattr(phantom2_native, "NATIVE_P", 1.0)
    case = generate_case(seed, spacing=spacing, coverage="pelvis")
    geometry, shape, rotation, fov = _grid(seed, "pelvis", spacing)
    assert case.geometry == geometry == direct.geometry and case.ct.shape == shape
    assert np.array_equal(case.label, direct.label)
    lps, anat = _centres(geometry, shape, rotation)
    inside = _in_fov(geometry, shape, lps, fov, margin=2 * max(spacing))
    assert np.array_equal(case.label[inside], femur_truth(seed, _q(anat))[inside])
    bone = (case.label > 0) & inside
    assert bone.sum() > 500 and abs(case.ct[bone].mean() - direct.ct[bone].mean()) < 150   # the same bone
    assert np.mean(case.ct != direct.ct) > 0.5                                             # imaged another way


def test_scanner_grids_are_rendered_as_before(monkeypatch):
    spacing = (1.9, 1.9, 8.0)
    monkeypatch.setattr(phantom2_native, "NATIVE_P", 1.0)
    a = generate_case(3, spacing=spacing, coverage="knee_to_ankle")
    monkeypatch.setattr(phantom2_native, "NATIVE_P", 0.0)
    b = generate_case(3, spacing=spacing, coverage="knee_to_ankle")
    assert np.array_equal(a.ct, b.ct) and np.array_equal(a.label, b.label)
