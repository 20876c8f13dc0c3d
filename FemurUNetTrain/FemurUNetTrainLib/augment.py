"""The seed's Keras ``ImageDataGenerator`` augmentation, batched on the training device with affine grids.

The seed trained with ``ImageDataGenerator(rotation_range=0.2, width_shift_range=0.05,
height_shift_range=0.05, shear_range=0.05, zoom_range=0.05, horizontal_flip=True, fill_mode='nearest')``
applied with the same seed to image and mask, then ``adjustData`` re-binarised the mask at 0.5. Keras
semantics kept here: rotation and shear angles in degrees, uniform in +-range; shifts as a fraction of
the side (or pixels when >= 1); zoom factors drawn independently per axis in [1 - z, 1 + z], applied to
input coordinates (factor > 1 shows a larger field, i.e. zooms out); the matrix is rotation @ shift @
shear @ zoom about the image centre; the horizontal flip comes after the affine warp; 'nearest' fill
repeats the edge pixel; bilinear interpolation (Keras' order=1).
One deliberate difference: Keras centres the transform at (h/2 + 0.5, w/2 + 0.5), half a pixel off the
true centre; this uses the true centre (a sub-pixel difference at these ranges).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .options import FILL_MODES, AugmentConfig  # noqa: F401  (AugmentConfig: importable from here too)


def draw_params(n: int, height: int, width: int, config: AugmentConfig, generator: torch.Generator) -> dict:
    """Random transform parameters for n samples (float64 CPU tensors), in Keras' order of draws.

    All seven draws are made whatever the configuration, so the random stream does not depend on it.
    """
    def uniform(low, high, *shape):
        return low + (high - low) * torch.rand(n, *shape, generator=generator, dtype=torch.float64)

    c = config
    theta = uniform(-c.rotation_range, c.rotation_range)
    tx = uniform(-c.height_shift_range, c.height_shift_range) * (height if c.height_shift_range < 1 else 1)
    ty = uniform(-c.width_shift_range, c.width_shift_range) * (width if c.width_shift_range < 1 else 1)
    shear = uniform(-c.shear_range, c.shear_range)
    zoom = uniform(c.zoom_range[0], c.zoom_range[1], 2)
    hflip = torch.rand(n, generator=generator, dtype=torch.float64) < 0.5
    vflip = torch.rand(n, generator=generator, dtype=torch.float64) < 0.5
    return {"theta": theta, "tx": tx, "ty": ty, "shear": shear, "zx": zoom[:, 0], "zy": zoom[:, 1],
            "hflip": hflip & c.horizontal_flip, "vflip": vflip & c.vertical_flip}


def select(params: dict, index) -> dict:
    return {k: v[index] for k, v in params.items()}


def pixel_matrices(params: dict) -> torch.Tensor:
    """(n, 3, 3) float64: output pixel (x=col, y=row, centred) -> input pixel, Keras' composition + flips."""
    n = params["theta"].shape[0]
    t, s = torch.deg2rad(params["theta"]), torch.deg2rad(params["shear"])
    eye = torch.eye(3, dtype=torch.float64).repeat(n, 1, 1)
    # Keras matrices act on (row, col) coordinates
    rot, shift, shear, zoom = eye.clone(), eye.clone(), eye.clone(), eye.clone()
    rot[:, 0, 0], rot[:, 0, 1], rot[:, 1, 0], rot[:, 1, 1] = t.cos(), -t.sin(), t.sin(), t.cos()
    shift[:, 0, 2], shift[:, 1, 2] = params["tx"], params["ty"]
    shear[:, 0, 1], shear[:, 1, 1] = -s.sin(), s.cos()
    zoom[:, 0, 0], zoom[:, 1, 1] = params["zx"], params["zy"]
    m_rc = rot @ shift @ shear @ zoom
    swap = torch.tensor([[0.0, 1, 0], [1, 0, 0], [0, 0, 1]], dtype=torch.float64)
    m_xy = swap @ m_rc @ swap
    flip = eye.clone()
    flip[:, 0, 0] = 1.0 - 2.0 * params["hflip"].to(torch.float64)
    flip[:, 1, 1] = 1.0 - 2.0 * params["vflip"].to(torch.float64)
    return m_xy @ flip


def normalized_theta(params: dict, height: int, width: int) -> torch.Tensor:
    """(n, 2, 3) for ``F.affine_grid(align_corners=False)``: pixel matrices in [-1, 1] coordinates."""
    m = pixel_matrices(params)
    d = torch.diag(torch.tensor([2.0 / width, 2.0 / height, 1.0], dtype=torch.float64))
    d_inv = torch.diag(torch.tensor([width / 2.0, height / 2.0, 1.0], dtype=torch.float64))
    return (d @ m @ d_inv)[:, :2, :]


def apply_augmentation(images: torch.Tensor, masks: torch.Tensor, params: dict, config: AugmentConfig) -> tuple:
    """Warp (N, C, H, W) images and masks with the same per-sample transforms in one ``grid_sample``.

    Returns (images float, masks float 0/1): bilinear, then masks re-binarised at ``mask_threshold``.
    """
    if not config.enabled:
        return images, masks.to(images.dtype)
    n, c, h, w = images.shape
    theta = normalized_theta(params, h, w).to(device=images.device, dtype=torch.float32)
    grid = F.affine_grid(theta, [n, 1, h, w], align_corners=False)
    stacked = torch.cat([images.float(), masks.to(torch.float32)], dim=1)
    warped = F.grid_sample(stacked, grid, mode="bilinear", padding_mode=FILL_MODES[config.fill_mode],
                           align_corners=False)
    out_images = warped[:, :c].contiguous(memory_format=torch.channels_last) if images.is_contiguous(
        memory_format=torch.channels_last) else warped[:, :c]
    out_masks = (warped[:, c:] > config.mask_threshold).to(torch.float32)
    return out_images, out_masks


def augment_batch(images: torch.Tensor, masks: torch.Tensor, config: AugmentConfig,
                  generator: torch.Generator) -> tuple:
    """Draw parameters (on the CPU generator) and warp: the whole batch in one call."""
    n, _, h, w = images.shape
    return apply_augmentation(images, masks, draw_params(n, h, w, config, generator), config)
