"""Opt-in domain randomisation of the intensities, batched on the training device, applied to the image only.

It acts on the windowed [0, 1] image after the geometric augmentation. Per sample, each transform is applied
with probability ``p`` (its own draw), in this order: Gaussian blur; low resolution (anti-aliasing blur of
sigma (f - 1) / 2, bilinear sampling on a lattice f pixels apart, bilinear back up); additive Gaussian noise
(optionally smoothed, rescaled to keep its sd); scale; shift; contrast about the sample's mean; clamp to
[0, 1]; gamma. HU amounts become image units through the window width (image = (HU - low end) / width).
A transform whose range is the identity (scale (1, 1), 0 HU, ...) never changes a pixel. ``enabled=False``
(the default) returns the images untouched: the seed's recipe.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .options import IntensityConfig  # noqa: F401  (importable from here too)


def draw_intensity(n: int, config: IntensityConfig, generator: torch.Generator) -> dict:
    """Per-sample parameters (CPU tensors), the identity value where a transform is not applied.

    The same draws are made whatever the configuration, so the random stream does not depend on it.
    """
    c = config

    def pick(low, high, identity):
        value = low + (high - low) * torch.rand(n, generator=generator, dtype=torch.float64)
        applied = torch.rand(n, generator=generator, dtype=torch.float64) < c.p
        return torch.where(applied, value, torch.full_like(value, identity))

    params = {"blur": pick(0.0, c.blur_sigma, 0.0), "lowres": pick(1.0, c.lowres_factor, 1.0),
              "noise_hu": pick(0.0, c.noise_sd_hu, 0.0), "scale": pick(*c.scale, 1.0),
              "shift_hu": pick(-c.shift_hu, c.shift_hu, 0.0), "contrast": pick(*c.contrast, 1.0),
              "gamma": pick(*c.gamma, 1.0)}
    params["noise_corr"] = c.noise_corr * torch.rand(n, generator=generator, dtype=torch.float64)
    params["noise_seed"] = torch.randint(0, 2 ** 62, (n,), generator=generator)
    return params


def gaussian_kernels(sigma: torch.Tensor) -> torch.Tensor:
    """(n, 2r + 1) normalised 1D Gaussians, r = ceil(3 max sigma); a unit impulse where sigma is 0."""
    radius = math.ceil(3.0 * float(sigma.max()))
    t = torch.arange(-radius, radius + 1, dtype=torch.float64)
    k = torch.exp(-0.5 * (t / sigma.clamp(min=1e-6)[:, None]) ** 2)
    return k / k.sum(dim=1, keepdim=True)


def separable_blur(x: torch.Tensor, kernels: torch.Tensor) -> torch.Tensor:
    """Each sample convolved with its own separable kernel (n, K), edges repeated; one grouped conv per axis."""
    n, c, h, w = x.shape
    r = kernels.shape[1] // 2
    k = kernels.to(device=x.device, dtype=torch.float32).repeat_interleave(c, dim=0)
    y = F.pad(x.reshape(1, n * c, h, w), (r, r, r, r), mode="replicate")
    y = F.conv2d(y, k[:, None, :, None], groups=n * c)
    return F.conv2d(y, k[:, None, None, :], groups=n * c).reshape(n, c, h, w)


def _zoom(x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """Output pixel (i + 0.5) samples the input at (i + 0.5) s, per sample (bilinear, edges repeated)."""
    theta = torch.zeros(x.shape[0], 2, 3, dtype=torch.float64)
    theta[:, 0, 0] = theta[:, 1, 1] = s
    theta[:, :, 2] = (s - 1.0)[:, None]
    grid = F.affine_grid(theta.to(device=x.device, dtype=torch.float32), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def low_resolution(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Anti-aliased sampling on a lattice ``factor`` pixels apart (from the top-left corner), bilinear back up."""
    coarse = _zoom(separable_blur(x, gaussian_kernels((factor - 1.0) / 2.0)), factor)
    return _zoom(coarse, 1.0 / factor)


def noise_fields(x: torch.Tensor, params: dict) -> torch.Tensor:
    """Unit-sd Gaussian fields (zero where no noise) on x's device, one seed per sample, smoothed by noise_corr."""
    fields = torch.zeros_like(x)
    gen = torch.Generator(device=x.device)
    for i in torch.nonzero(params["noise_hu"] > 0).flatten().tolist():
        gen.manual_seed(int(params["noise_seed"][i]))
        fields[i] = torch.randn(x.shape[1:], generator=gen, device=x.device, dtype=x.dtype)
    if float(params["noise_corr"].max()) > 0:
        kernels = gaussian_kernels(params["noise_corr"])
        sd = (kernels ** 2).sum(dim=1)            # of white noise smoothed by the 2D kernel k (x) k
        fields = separable_blur(fields, kernels) / sd.to(device=x.device, dtype=x.dtype).view(-1, 1, 1, 1)
    return fields


def _where(active: torch.Tensor, fn, x: torch.Tensor) -> torch.Tensor:
    """fn(x) for the samples where ``active`` (CPU bool), x elsewhere; fn is not run when none is active."""
    if not bool(active.any()):
        return x
    return torch.where(active.to(x.device).view(-1, 1, 1, 1), fn(x), x)


def _about_mean(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return (x - mean) * factor + mean


def apply_intensity(images: torch.Tensor, params: dict, window_width: float) -> torch.Tensor:
    """Randomise (N, C, H, W) windowed images with ``draw_intensity``'s parameters: float32 in [0, 1]."""
    x = images.float()
    dev = {k: v.to(device=x.device, dtype=torch.float32).view(-1, 1, 1, 1)
           for k, v in params.items() if k in ("noise_hu", "scale", "shift_hu", "contrast", "gamma")}
    x = _where(params["blur"] > 0, lambda v: separable_blur(v, gaussian_kernels(params["blur"])), x)
    x = _where(params["lowres"] > 1, lambda v: low_resolution(v, params["lowres"]), x)
    x = _where(params["noise_hu"] > 0, lambda v: v + noise_fields(v, params) * (dev["noise_hu"] / window_width), x)
    x = x * dev["scale"] + dev["shift_hu"] / window_width
    x = _where(params["contrast"] != 1, lambda v: _about_mean(v, dev["contrast"]), x).clamp(0.0, 1.0)
    return _where(params["gamma"] != 1, lambda v: v.pow(dev["gamma"]), x)


def intensity_batch(images: torch.Tensor, config: IntensityConfig, generator: torch.Generator,
                    window_width: float) -> torch.Tensor:
    """Draw (on the CPU generator) and apply: the whole batch in one call; the images themselves when disabled."""
    if not config.enabled:
        return images
    return apply_intensity(images, draw_intensity(images.shape[0], config, generator), window_width)
