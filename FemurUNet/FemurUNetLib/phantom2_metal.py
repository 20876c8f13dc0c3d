"""Metal artefacts of phantom v2 from the projections a CT scanner measures (axial slices with metal only).

Each slice with metal is projected (parallel beam, on a coarse grid); the measured line integrals differ from
the ideal ones where a ray crosses metal: beam hardening (the metal's attenuation saturates with its path
length), photon starvation (noise grows as exp(attenuation) and the detector floor clips the counts), and the
filtered back-projection of that error is added to the slice: dark bands along the longest metal paths and
between metal objects, bright and dark streaks around them. Slices without metal get nothing.
"""
from __future__ import annotations

import bisect
import math
from concurrent.futures import ThreadPoolExecutor

import numpy as np

METAL_HU = 2300.0           # painted metal is 2500-3071 HU; cortex never reaches 2000
WATER_MU = 0.019            # 1/mm, water at ~70 keV
ANGLES = 144
LOW_RES_PIXELS = 128        # across the wider side of the slice the projections are computed on
Z_STEP_MM = 6.0             # slices between computed ones are interpolated


def draw_metal(rng, strength: float) -> dict:
    """Per case: the metal's true attenuation (titanium to cobalt-chrome), photons per ray, detector floor,
    beam hardening and ``strength`` (1 = filtered back-projection, lower = a scanner's metal artefact reduction)."""
    return {"mu": float(rng.uniform(0.1, 0.35)), "photons": float(10 ** rng.uniform(4.5, 6.0)),
            "floor": float(rng.uniform(1.0, 20.0)), "hardening": float(rng.uniform(0.03, 0.12)),
            "strength": float(strength)}


def _block_mean(image, fj, fi) -> np.ndarray:
    nj, ni = (image.shape[0] // fj) * fj, (image.shape[1] // fi) * fi
    return image[:nj, :ni].reshape(nj // fj, fj, ni // fi, fi).mean(axis=(1, 3))


class ParallelBeam:
    """Pixel-driven projector and back-projector of one coarse grid (pixel sizes dj, di mm), ``ANGLES`` views."""

    def __init__(self, shape, dj: float, di: float):
        nj, ni = shape
        y = (np.arange(nj, dtype=np.float32) - (nj - 1) / 2) * dj
        x = (np.arange(ni, dtype=np.float32) - (ni - 1) / 2) * di
        theta = np.arange(ANGLES, dtype=np.float32) * np.float32(math.pi / ANGLES)
        self.ds = min(dj, di)          # bins as wide as the pixels: a pixel never skips a bin
        self.bins = int(math.ceil(math.hypot(nj * dj, ni * di) / self.ds)) + 3
        s = (x[None, None, :] * np.cos(theta)[:, None, None] + y[None, :, None] * np.sin(theta)[:, None, None])
        u = s.reshape(ANGLES, -1) / np.float32(self.ds) + np.float32(self.bins / 2)
        self.lower = np.floor(u).astype(np.int32)
        self.frac = u - self.lower.astype(np.float32)
        self.flat = self.lower + (np.arange(ANGLES, dtype=np.int32) * self.bins)[:, None]
        self.area = dj * di
        self.shape = shape
        self.filter = self._filter(1 << int(math.ceil(math.log2(3 * self.bins))))

    def project(self, image) -> np.ndarray:
        """Line integrals (ANGLES, bins) of ``image`` (per mm) through the grid (its non-zero pixels only)."""
        pixels = np.flatnonzero(image)
        if pixels.size > image.size // 4:
            pixels = slice(None)
        w = image.reshape(1, -1)[:, pixels] * np.float32(self.area / self.ds)
        flat, frac, total = self.flat[:, pixels].ravel(), self.frac[:, pixels], ANGLES * self.bins
        out = np.bincount(flat, (w * (1 - frac)).ravel(), total) + np.bincount(flat + 1, (w * frac).ravel(), total)
        return out.reshape(ANGLES, self.bins)

    @property
    def positions(self) -> np.ndarray:
        """Detector position (mm from the centre) of each bin."""
        return (np.arange(self.bins) - self.bins / 2) * self.ds

    def resampled(self, sinogram, target: "ParallelBeam") -> np.ndarray:
        """``sinogram`` of this beam at ``target``'s bins (linear; nothing beyond the detector's ends)."""
        return np.stack([np.interp(target.positions, self.positions, row, 0.0, 0.0) for row in sinogram])

    def _filter(self, size: int) -> np.ndarray:
        """Spectrum of the Ram-Lak kernel (``size``-point transform) times a Hann window."""
        n = np.arange(-(self.bins - 1), self.bins)
        kernel, odd = np.zeros(n.size), n % 2 != 0
        kernel[odd] = -1.0 / (np.pi * n[odd] * self.ds) ** 2
        kernel[n == 0] = 1.0 / (4 * self.ds ** 2)
        return np.fft.rfft(kernel, size) * (0.5 * (1.0 + np.cos(np.linspace(0.0, np.pi, size // 2 + 1))))

    def filtered_backprojection(self, sinogram) -> np.ndarray:
        """Filtered back-projection (per mm) of ``sinogram``: the Ram-Lak ramp rolled off by a Hann window, as a
        standard reconstruction kernel is (the plain ramp makes the bins' noise into stripes a pixel wide)."""
        size = self.filter.size * 2 - 2
        q = np.fft.irfft(np.fft.rfft(sinogram, size, axis=1) * self.filter, size, axis=1)
        q = (q[:, self.bins - 1:2 * self.bins - 1] * self.ds).astype(np.float32).ravel()
        low = q[self.flat]
        values = low + (q[self.flat + 1] - low) * self.frac
        return (values.sum(axis=0) * np.float32(math.pi / ANGLES)).reshape(self.shape)


def slice_artefact(beam: ParallelBeam, coarse, hu_low, metal_low, metal, rng) -> np.ndarray:
    """HU error of one slice on ``beam``'s grid (``hu_low`` HU, ``metal_low`` metal fraction per pixel); the
    tissue is projected on ``coarse`` (half the resolution; None: on ``beam``)."""
    tissue = WATER_MU * np.clip(1.0 + np.minimum(hu_low, 2000.0) / 1000.0, 0.0, None) * (1.0 - metal_low)
    body = beam.project(tissue) if coarse is None else coarse.resampled(coarse.project(_block_mean(tissue, 2, 2)), beam)
    ideal_metal = beam.project(metal_low * np.float32(metal["mu"]))
    hardened = ideal_metal / (1.0 + metal["hardening"] * ideal_metal)
    excess_var = np.maximum(np.exp(np.minimum(body + hardened, 60.0)) - np.exp(np.minimum(body, 60.0)), 0.0)
    noisy = body + hardened + np.sqrt(excess_var / metal["photons"]) * rng.standard_normal(body.shape)
    measured = np.minimum(noisy, math.log(metal["photons"] / metal["floor"]))
    error = np.where(ideal_metal > 0, measured - body - ideal_metal, 0.0)
    return beam.filtered_backprojection(error) * np.float32(1000.0 * metal["strength"] / WATER_MU)


def computed_rows(rows, step: int) -> list:
    """The rows whose artefact is computed: the ends of every run of consecutive ``rows`` and every ``step``-th
    row within a run (the rows between two of them are interpolated)."""
    keep = []
    for n, k in enumerate(rows):
        first, last = n == 0 or rows[n - 1] != k - 1, n == len(rows) - 1 or rows[n + 1] != k + 1
        if first or last or k - keep[-1] >= step:
            keep.append(int(k))
    return keep


def upsampling(n_full: int, factor: int) -> np.ndarray:
    """(n_full, n_full // factor) matrix of linear interpolation from blocks of ``factor`` pixels to pixels."""
    n_low = n_full // factor
    position = np.clip((np.arange(n_full) + 0.5) / factor - 0.5, 0, n_low - 1)
    lower = np.minimum(np.floor(position).astype(int), max(n_low - 2, 0))
    weight = position - lower
    out = np.zeros((n_full, n_low), np.float32)
    out[np.arange(n_full), lower] = 1 - weight
    out[np.arange(n_full), np.minimum(lower + 1, n_low - 1)] += weight
    return out


class MetalScan:
    """The projection grids of one case's axial slices (``shape`` j, i; ``spacing`` i, j mm)."""

    def __init__(self, shape, spacing):
        nj, ni = shape
        side = max(nj * spacing[1], ni * spacing[0]) / LOW_RES_PIXELS
        self.fj, self.fi = max(1, round(side / spacing[1])), max(1, round(side / spacing[0]))
        low = (nj // self.fj, ni // self.fi)
        self.beam = ParallelBeam(low, self.fj * spacing[1], self.fi * spacing[0])
        self.coarse = None if min(low) < 8 else ParallelBeam((low[0] // 2, low[1] // 2), 2 * self.fj * spacing[1],
                                                             2 * self.fi * spacing[0])
        self.up_j, self.up_i = upsampling(nj, self.fj), upsampling(ni, self.fi)

    def artefact(self, image, metal, key: int, k: int) -> np.ndarray:
        low = _block_mean(image, self.fj, self.fi)
        fraction = _block_mean((image >= METAL_HU).astype(np.float32), self.fj, self.fi)
        return slice_artefact(self.beam, self.coarse, low, fraction, metal, np.random.default_rng([key, k]))

    def add(self, image, low_error) -> None:
        error = self.up_j @ low_error @ self.up_i.T
        image += np.where(image >= METAL_HU, np.float32(0.0), error)


def add_metal_artefacts(hu_axial, spacing, rng, strength: float, threads: int = 1) -> bool:
    """Add the artefacts of the metal in ``hu_axial`` (canonical k, j, i; ``spacing`` i, j, k mm; in place) before
    the scanner's blur and noise; False (and no draw from ``rng``) when there is no metal. Each computed slice
    draws from its own stream, so ``threads`` give the same bits as one."""
    rows = np.flatnonzero((hu_axial >= METAL_HU).any(axis=(1, 2)))
    if rows.size == 0:
        return False
    metal, key = draw_metal(rng, strength), int(rng.integers(2**63))
    scan = MetalScan(hu_axial.shape[1:], spacing)
    keys = computed_rows(rows, max(1, int(round(Z_STEP_MM / spacing[2]))))
    with ThreadPoolExecutor(max(1, threads)) as pool:
        computed = dict(zip(keys, pool.map(lambda k: scan.artefact(hu_axial[k], metal, key, k), keys)))

        def apply(k):
            after = bisect.bisect_left(keys, k)
            if keys[after] == k:
                return scan.add(hu_axial[k], computed[k])
            a, b = keys[after - 1], keys[after]
            t = np.float32((k - a) / (b - a))
            scan.add(hu_axial[k], (1 - t) * computed[a] + t * computed[b])
        list(pool.map(apply, rows.tolist()))
    return True
