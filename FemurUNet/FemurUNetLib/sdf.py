"""Signed-distance primitives (negative inside, mm) on float32 coordinate arrays ``q = (x, y, z)``, shared by
the phantom generators."""
from __future__ import annotations

import math

import numpy as np

# --------------------------------
def _v(p):
    return [float(c) for c in p]


def _sphere(q, c, r):
    c = _v(c)
    x, y, z = q[0] - c[0], q[1] - c[1], q[2] - c[2]
    return np.sqrt(x * x + y * y + z * z) - float(r)


def _capsule(q, a, b, r0, r1=None):
    """Segment a-b thickened by a radius going linearly from r0 (at a) to r1 (at b) (arithmetic in place)."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    ba = b - a
    inv = 1.0 / float(ba @ ba)
    (ax, ay, az), (bx, by, bz) = _v(a), _v(ba)
    px, py, pz = (c - o for c, o in zip(np.broadcast_arrays(*q), (ax, ay, az)))
    h = px * bx                                  # clip((px bx + py by + pz bz) inv, 0, 1)
    t = py * by
    h += t
    np.multiply(pz, bz, out=t)
    h += t
    h *= inv
    np.clip(h, 0.0, 1.0, out=h)
    for p, bc in ((px, bx), (py, by), (pz, bz)):     # p -= h bc
        np.multiply(h, bc, out=t)
        p -= t
    d = np.multiply(px, px)                      # |p|
    np.multiply(py, py, out=t)
    d += t
    np.multiply(pz, pz, out=t)
    d += t
    np.sqrt(d, out=d)
    if r1 is None or r1 == r0:
        d -= float(r0)
        return d
    h *= float(r1 - r0)
    h += float(r0)
    d -= h
    return d


def _ellipsoid(q, c, e):
    c, e = _v(c), _v(e)
    x, y, z = (q[0] - c[0]) / e[0], (q[1] - c[1]) / e[1], (q[2] - c[2]) / e[2]
    k0 = np.sqrt(x * x + y * y + z * z)
    x /= e[0]
    y /= e[1]
    z /= e[2]
    k1 = np.sqrt(x * x + y * y + z * z)
    return k0 * (k0 - 1.0) / np.maximum(k1, 1e-6)


def _ellipse_xy(q, c, e):
    """Elliptic cylinder along z."""
    c, e = _v(c), _v(e)
    x, y = (q[0] - c[0]) / e[0], (q[1] - c[1]) / e[1]
    k0 = np.sqrt(x * x + y * y)
    x /= e[0]
    y /= e[1]
    k1 = np.sqrt(x * x + y * y)
    return k0 * (k0 - 1.0) / np.maximum(k1, 1e-6)


def _box(q, c, axes, half, rounding=0.0):
    """Oriented box: ``axes`` rows are its unit axes, ``half`` its half extents; edges rounded by ``rounding``."""
    c = _v(c)
    x, y, z = q[0] - c[0], q[1] - c[1], q[2] - c[2]
    out = None
    inside = None
    for axis, h in zip(np.asarray(axes, float), half):
        ax, ay, az = _v(axis)
        a = np.abs(x * ax + y * ay + z * az) - float(h - rounding)
        pos = np.maximum(a, 0.0)
        out = pos * pos if out is None else out + pos * pos
        inside = a if inside is None else np.maximum(inside, a)
    return np.sqrt(out) + np.minimum(inside, 0.0) - float(rounding)


def _plane(q, p, n):
    """Half-space (q - p) . n < 0."""
    p, n = _v(p), _v(n)
    return (q[0] - p[0]) * n[0] + (q[1] - p[1]) * n[1] + (q[2] - p[2]) * n[2]


def _hemishell(q, c, inner, outer, n):
    """Spherical shell between radii ``inner`` and ``outer`` about ``c``, on the side of the plane through ``c``
    that ``n`` points to (an acetabular cup; centre and normal in float64, as the drawn cup has always had them)."""
    c, n = np.asarray(c, float), np.asarray(n, float)
    dist = _sphere(q, c, 0.0)
    shell = np.maximum(dist - outer, inner - dist)
    return np.maximum(shell, -((q[0] - c[0]) * n[0] + (q[1] - c[1]) * n[1] + (q[2] - c[2]) * n[2]))


def _smin(a, b, k):
    """Smooth union (polynomial smooth minimum) with blend radius k mm (arithmetic in place)."""
    h = np.subtract(b, a)                        # clip(0.5 + 0.5 (b - a) / k, 0, 1)
    h *= 0.5
    h /= k
    h += 0.5
    np.clip(h, 0.0, 1.0, out=h)
    out = np.subtract(a, b)                      # b + (a - b) h - k h (1 - h)
    out *= h
    out += b
    blend = np.subtract(1.0, h)
    h *= k
    blend *= h
    out -= blend
    return out


_PRIMITIVES = {"box": _box, "capsule": _capsule, "ellipsoid": _ellipsoid}


def _unit(v):
    v = np.asarray(v, float)
    return v / np.linalg.norm(v)


def _rotation(rx, ry, rz):
    cx, sx, cy, sy, cz, sz = math.cos(rx), math.sin(rx), math.cos(ry), math.sin(ry), math.cos(rz), math.sin(rz)
    mx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    my = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    mz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return mz @ my @ mx


def _plate(p0, p1, up, height, thickness):
    """Rounded thin plate whose bottom edge is p0-p1, rising ``height`` along ``up`` (box parameters)."""
    p0, p1 = np.asarray(p0, float), np.asarray(p1, float)
    u = _unit(p1 - p0)
    v = _unit(up - (up @ u) * u)
    n = np.cross(u, v)
    centre = (p0 + p1) / 2 + v * height / 2
    half = (np.linalg.norm(p1 - p0) / 2 + thickness / 2, height / 2, thickness / 2)
    return centre, np.stack([u, v, n]), half, thickness / 2




# --- rendering helpers shared by the phantoms ---------------------------------------------------------------
def grid_points(index_to_frame, origin, box) -> tuple:
    """float32 (x, y, z) arrays of the voxel centres over an index box ((k0, k1), (j0, j1), (i0, i1)), computed in
    float64 from a 3x3 index-to-frame matrix (columns i, j, k) and the frame position of voxel (0, 0, 0)."""
    shape = tuple(b - a for a, b in box)
    return tuple(np.ascontiguousarray(np.broadcast_to(c, shape)) for c in axis_grid_points(index_to_frame, origin, box))


def axis_grid_points(index_to_frame, origin, box) -> tuple:
    """``grid_points`` with each coordinate spanning only the index axes it depends on (broadcastable shapes:
    on a grid whose axes are the frame's, x and y are one slice and z one column); zero terms are skipped, which
    leaves every sum's bits as they are."""
    (k0, k1), (j0, j1), (i0, i1) = box
    axes = {2: np.arange(k0, k1, dtype=np.float64)[:, None, None], 1: np.arange(j0, j1, dtype=np.float64)[None, :, None],
            0: np.arange(i0, i1, dtype=np.float64)[None, None, :]}
    out = []
    for w in range(3):
        c = np.full((1, 1, 1), origin[w], np.float64)
        for column in (2, 1, 0):
            if index_to_frame[w, column] != 0:
                c = c + index_to_frame[w, column] * axes[column]
        out.append(c.astype(np.float32))
    return tuple(out)


def _abs_gradient_into(w, d, axis, start, stop) -> None:
    """``w += abs(np.gradient(d, axis=axis)[start:stop])`` (the same bits), with one temporary array."""
    if axis:                                # the rows' whole extent along the axis
        d = d[start:stop]
        start, stop = 0, d.shape[axis]
    n = d.shape[axis]
    at = lambda a, b: (slice(None),) * axis + (slice(a, b),)
    g = np.empty(w.shape, w.dtype)
    a, b = max(start, 1), min(stop, n - 1)  # entries with a neighbour on both sides
    if b > a:
        np.subtract(d[at(a + 1, b + 1)], d[at(a - 1, b - 1)], out=g[at(a - start, b - start)])
        g[at(a - start, b - start)] *= np.float32(0.5)
    if start == 0:
        np.subtract(d[at(1, 2)], d[at(0, 1)], out=g[at(0, 1)])
    if stop == n:
        np.subtract(d[at(n - 1, n)], d[at(n - 2, n - 1)], out=g[at(n - 1 - start, n - start)])
    np.abs(g, out=g)
    w += g


def ramp_width(d, blur, spacing, rows=None) -> np.ndarray:
    """Partial-volume ramp width (mm): the voxel's extent across the iso-surface of ``d``, plus the scanner blur;
    ``spacing`` (i, j, k) serves axes of length 1. ``rows`` (a slice of axis 0): the widths of those rows only,
    the same values as ``ramp_width(d, ...)[rows]``."""
    start, stop, _ = (rows or slice(None)).indices(d.shape[0])
    w = np.full((stop - start,) + d.shape[1:], blur, np.float32)
    for axis in range(3):
        if d.shape[axis] == 1:
            w += 0.5 * spacing[2 - axis]
        else:
            _abs_gradient_into(w, d, axis, start, stop)
    return w
