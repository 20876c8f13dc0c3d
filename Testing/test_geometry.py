import itertools

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from scipy.spatial.transform import Rotation

from FemurUNetLib.geometry import Geometry, Reorientation


def signed_permutations():
    for perm in itertools.permutations(range(3)):
        for signs in itertools.product((1, -1), repeat=3):
            d = np.zeros((3, 3))
            for col, row in enumerate(perm):
                d[row, col] = signs[col]
            yield d


def assert_canonical(geometry, shape):
    """In the canonical view, x (L), y (P) and z (S) grow along numpy axes 2, 1, 0."""
    r = Reorientation.for_geometry(geometry)
    pts = geometry.physical_points(shape)
    for world, axis in ((0, 2), (1, 1), (2, 0)):
        coord = r.to_canonical(pts[..., world])
        assert (np.diff(coord, axis=axis) > 0).all()


@pytest.mark.parametrize("direction", list(signed_permutations()))
def test_every_axis_permutation_and_flip_reaches_lps(direction):
    g = Geometry((0.7, 1.1, 2.5), (3.0, -4.0, 5.0), direction)
    assert_canonical(g, (4, 5, 6))
    r = Reorientation.for_geometry(g)
    a = np.arange(120).reshape(4, 5, 6)
    assert np.array_equal(r.from_canonical(r.to_canonical(a)), a)
    assert r.is_identity == np.allclose(direction, np.eye(3))


@settings(max_examples=60, deadline=None)
@given(st.sampled_from(list(signed_permutations())),
       st.lists(st.floats(-20, 20), min_size=3, max_size=3),
       st.lists(st.floats(0.3, 4.0), min_size=3, max_size=3))
def test_oblique_directions_map_to_the_nearest_canonical_axes(perm, angles, spacing):
    direction = Rotation.from_euler("xyz", angles, degrees=True).as_matrix() @ perm
    g = Geometry(spacing, (0, 0, 0), direction)
    assert_canonical(g, (3, 4, 5))
    r = Reorientation.for_geometry(g)
    # canonical spacing is the original spacing of the axes it came from
    cs = r.canonical_spacing(g)
    assert sorted(cs) == pytest.approx(sorted(g.spacing))


def test_canonical_view_writes_through_to_the_original_grid():
    g = Geometry(direction=np.array([[0, 0, -1], [1, 0, 0], [0, -1, 0]]))
    out = np.zeros((3, 4, 5), np.uint8)
    view = Reorientation.for_geometry(g).to_canonical(out)
    view[0] = 7
    assert out.sum() == 7 * view[0].size and np.shares_memory(view, out)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.floats(-30, 30), min_size=3, max_size=3),
       st.lists(st.floats(0.3, 4.0), min_size=3, max_size=3),
       st.lists(st.floats(-300, 300), min_size=3, max_size=3))
def test_ijk_to_ras_round_trip(angles, spacing, origin):
    g = Geometry(spacing, origin, Rotation.from_euler("zyx", angles, degrees=True).as_matrix())
    m = g.ijk_to_ras()
    assert Geometry.from_ijk_to_ras(m) == g
    # RAS = LPS with x and y negated
    ijk = np.array([2.0, 3.0, 4.0, 1.0])
    assert np.allclose((m @ ijk)[:3] * [-1, -1, 1], (g.ijk_to_lps() @ ijk)[:3])


def test_lps_coordinates_of_voxel_indices_are_the_voxel_centres():
    turned = Rotation.from_euler("zyx", (20, -35, 10), degrees=True).as_matrix()
    g = Geometry((0.7, 1.1, 2.5), (-40.0, 12.0, 300.0), turned)
    k, j, i = np.indices((3, 4, 5))
    centres = g.physical_points((3, 4, 5))
    for axis in range(3):
        assert np.allclose(g.lps_coordinate(axis, k, j, i), centres[..., axis])
    assert g.lps_coordinate(2, 0, 0, 0) == 300.0


def test_geometry_rejects_bad_values():
    with pytest.raises(ValueError, match="spacing"):
        Geometry((1, 0, 1))
    with pytest.raises(ValueError, match="orthonormal"):
        Geometry(direction=np.diag([1, 2, 1]))
