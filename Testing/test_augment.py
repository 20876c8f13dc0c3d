"""Augmentation: the seed's ImageDataGenerator ranges, measured on the warped pixels; image and mask identical."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from FemurUNetTrainLib.augment import (AugmentConfig, apply_augmentation, augment_batch, draw_params, pixel_matrices,
                                       select)

SIZE = 64


def identity_params(n=1, **overrides):
    p = {"theta": torch.zeros(n, dtype=torch.float64), "tx": torch.zeros(n, dtype=torch.float64),
         "ty": torch.zeros(n, dtype=torch.float64), "shear": torch.zeros(n, dtype=torch.float64),
         "zx": torch.ones(n, dtype=torch.float64), "zy": torch.ones(n, dtype=torch.float64),
         "hflip": torch.zeros(n, dtype=torch.bool), "vflip": torch.zeros(n, dtype=torch.bool)}
    for k, v in overrides.items():
        p[k] = torch.full((n,), v, dtype=p[k].dtype)
    return p


def blobs(n, size=SIZE, seed=0):
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    masks = torch.zeros(n, 1, size, size, dtype=torch.bool)
    for i in range(n):
        for _ in range(3):
            cy, cx, r = (torch.rand(3, generator=g) * torch.tensor([size, size, size / 5])).tolist()
            masks[i, 0] |= (yy - cy) ** 2 + (xx - cx) ** 2 < (r + 2) ** 2
    return masks


def test_defaults_are_the_seeds_data_gen_args():
    c = AugmentConfig()
    assert (c.rotation_range, c.width_shift_range, c.height_shift_range, c.shear_range) == (0.2, 0.05, 0.05, 0.05)
    assert c.zoom_range == (0.95, 1.05) and c.horizontal_flip and not c.vertical_flip and c.fill_mode == "nearest"
    assert AugmentConfig(zoom_range=0.1).zoom_range == (0.9, 1.1)     # Keras' scalar form
    with pytest.raises(ValueError):
        AugmentConfig(fill_mode="wrap")


def test_drawn_parameters_are_uniform_within_the_ranges():
    n = 40_000
    p = draw_params(n, 256, 200, AugmentConfig(), torch.Generator().manual_seed(0))
    bounds = {"theta": 0.2, "tx": 0.05 * 256, "ty": 0.05 * 200, "shear": 0.05}
    for key, b in bounds.items():
        v = p[key]
        assert v.abs().max() <= b and v.abs().max() > 0.99 * b
        assert abs(float(v.mean())) < 0.02 * b
        assert abs(float(v.std()) - b / np.sqrt(3)) < 0.02 * b        # uniform on [-b, b]
    for key in ("zx", "zy"):
        assert 0.95 <= float(p[key].min()) and float(p[key].max()) <= 1.05
        assert abs(float(p[key].std()) - 0.05 / np.sqrt(3)) < 0.001
    assert abs(float(np.corrcoef(p["zx"], p["zy"])[0, 1])) < 0.03    # drawn per axis, independently
    assert abs(float(p["hflip"].double().mean()) - 0.5) < 0.015 and not p["vflip"].any()


def fitted_affines(params, size=SIZE):
    """Warp coordinate ramps and fit, per sample, the affine map output pixel -> input pixel (centred x, y)."""
    n = params["theta"].shape[0]
    c = (size - 1) / 2
    yy, xx = torch.meshgrid(torch.arange(size, dtype=torch.float32) - c, torch.arange(size, dtype=torch.float32) - c,
                            indexing="ij")
    ramps = torch.stack([xx, yy]).expand(n, 2, size, size)
    out, _ = apply_augmentation(ramps, torch.zeros(n, 1, size, size, dtype=torch.bool), params, AugmentConfig())
    inner = slice(12, size - 12)                   # away from the edge fill
    X = torch.stack([xx[inner, inner].reshape(-1), yy[inner, inner].reshape(-1),
                     torch.ones((size - 24) ** 2)], dim=1).double()
    fits = []
    for i in range(n):
        target = out[i, :, inner, inner].reshape(2, -1).T.double()
        fits.append(torch.linalg.lstsq(X, target).solution.T)            # 2 x 3
    return torch.stack(fits)


def test_warped_pixels_follow_the_drawn_transform_and_stay_in_range():
    n = 300
    params = draw_params(n, SIZE, SIZE, AugmentConfig(), torch.Generator().manual_seed(1))
    fits = fitted_affines(params)
    expected = pixel_matrices(params)[:, :2, :]
    assert torch.allclose(fits, expected, atol=2e-3)            # the warp is exactly the drawn Keras matrix
    lin, shift = fits[:, :, :2], fits[:, :, 2]
    flipped = torch.linalg.det(lin) < 0
    assert torch.equal(flipped, params["hflip"])
    assert abs(float(flipped.double().mean()) - 0.5) < 0.1
    unflipped = lin.clone()
    unflipped[:, :, 0] *= torch.where(flipped, -1.0, 1.0).double()[:, None]
    scale_x, scale_y = unflipped[:, :, 0].norm(dim=1), unflipped[:, :, 1].norm(dim=1)
    assert scale_x.min() > 0.95 - 1e-3 and scale_x.max() < 1.05 + 1e-3
    assert scale_y.min() > 0.95 - 1e-3 and scale_y.max() < 1.05 + 1e-3
    angle = torch.rad2deg(torch.atan2(unflipped[:, 1, 0], unflipped[:, 0, 0]))
    assert angle.abs().max() < 0.2 + 0.05 + 1e-2                 # rotation + shear, in degrees
    assert shift.abs().max() < 0.05 * SIZE * 1.06 + 1e-2         # +-5 % of the side (scaled by the zoom)
    assert shift.abs().max() > 0.04 * SIZE


def test_image_and_mask_get_the_identical_warp():
    n = 64
    masks = blobs(n)
    images = masks.float() * 0.8 + 0.1
    out_img, out_mask = augment_batch(images, masks, AugmentConfig(), torch.Generator().manual_seed(2))
    assert set(out_mask.unique().tolist()) <= {0.0, 1.0}
    np.testing.assert_array_equal((out_img > 0.5).numpy(), out_mask.bool().numpy())
    assert (out_mask != masks.float()).any()                      # it did move something
    # the mask warped as an image, alone, matches the joint warp
    params = draw_params(n, SIZE, SIZE, AugmentConfig(), torch.Generator().manual_seed(2))
    alone, _ = apply_augmentation(masks.float(), torch.zeros_like(masks), params, AugmentConfig())
    np.testing.assert_array_equal((alone > 0.5).numpy(), out_mask.bool().numpy())


def test_identity_flip_and_shift_are_pixel_exact():
    img = torch.rand(1, 1, SIZE, SIZE)
    mask = img > 0.5
    out, m = apply_augmentation(img, mask, identity_params(), AugmentConfig())
    torch.testing.assert_close(out, img, atol=1e-5, rtol=0)
    assert torch.equal(m.bool(), mask)
    out, m = apply_augmentation(img, mask, identity_params(hflip=True), AugmentConfig())
    torch.testing.assert_close(out, img.flip(-1), atol=1e-5, rtol=0)
    assert torch.equal(m.bool(), mask.flip(-1))
    # Keras: ty (width shift) = +3 pixels -> output column c shows input column c + 3; the edge repeats
    out, _ = apply_augmentation(img, mask, identity_params(ty=3.0), AugmentConfig())
    torch.testing.assert_close(out[..., :-3], img[..., 3:], atol=1e-5, rtol=0)
    torch.testing.assert_close(out[..., -3:], img[..., -1:].expand(-1, -1, -1, 3), atol=1e-5, rtol=0)
    out, _ = apply_augmentation(img, mask, identity_params(tx=-2.0), AugmentConfig(fill_mode="constant"))
    torch.testing.assert_close(out[..., 2:, :], img[..., :-2, :], atol=1e-5, rtol=0)
    assert out[..., :2, :].abs().max() == 0


def test_zoom_above_one_shows_a_larger_field_like_keras():
    masks = torch.zeros(1, 1, SIZE, SIZE, dtype=torch.bool)
    masks[..., 22:42, 22:42] = True
    _, out = apply_augmentation(masks.float(), masks, identity_params(zx=1.05, zy=1.05), AugmentConfig())
    assert out.sum() < masks.sum()


def test_disabled_and_batch_split_consistency():
    masks = blobs(8)
    images = torch.rand(8, 1, SIZE, SIZE)
    off = AugmentConfig(enabled=False)
    out, m = augment_batch(images, masks, off, torch.Generator().manual_seed(0))
    assert torch.equal(out, images) and torch.equal(m.bool(), masks)
    params = draw_params(8, SIZE, SIZE, AugmentConfig(), torch.Generator().manual_seed(5))
    whole = apply_augmentation(images, masks, params, AugmentConfig())
    halves = [apply_augmentation(images[s], masks[s], select(params, s), AugmentConfig())
              for s in (slice(0, 4), slice(4, 8))]
    assert torch.equal(whole[0], torch.cat([h[0] for h in halves]))
    assert torch.equal(whole[1], torch.cat([h[1] for h in halves]))
    again = draw_params(8, SIZE, SIZE, AugmentConfig(), torch.Generator().manual_seed(5))
    assert all(torch.equal(params[k], again[k]) for k in params)
