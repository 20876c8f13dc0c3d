"""Grow a trained U-Net without changing what it computes. Widen it to a multiple of its base filters
(Net2WiderNet, Chen et al. 2016): each channel is repeated, and every weight reading a repeated channel is split
between its copies in random shares that sum to one, so outputs stay the same while the copies learn apart from
the first step on (equal shares would keep them equal forever). Or give it neighbouring slices as inputs
(``add_input_slices``) with zero weights, so it starts as the one-slice model it was."""
from __future__ import annotations

import torch
from torch import nn

from FemurUNetLib.errors import FemurUNetError
from FemurUNetLib.model import UNet2D

SHARE_SPREAD = 0.2      # each share is (1 + U(-spread, spread)) / copies before the shares are rescaled to sum to 1


def widen(model: UNet2D, base_filters: int, generator: torch.Generator) -> UNet2D:
    """A new UNet2D of ``base_filters`` (a multiple of ``model.base_filters``) computing ``model``'s function."""
    old = model.base_filters
    if base_filters % old or base_filters < old:
        raise FemurUNetError(f"--base-filters {base_filters}: a model of base {old} widens only to a multiple of {old}")
    wide = UNet2D(model.in_channels, model.out_channels, base_filters)
    copies = base_filters // old
    with torch.no_grad():
        for (conv, halves), (wide_conv, _) in zip(_convs(model), _convs(wide)):
            in_map = (torch.arange(conv.in_channels) if conv is model.enc[0][0]            # reads the image
                      else _sources(conv.in_channels, copies, 2 if halves else 1))
            out_map = (torch.arange(conv.out_channels) if conv is model.head                # writes the output
                       else _sources(conv.out_channels, copies))
            _copy_split(conv, wide_conv, in_map, out_map, generator)
    wide.train(model.training)
    if hasattr(model, "metadata"):
        wide.metadata = {**model.metadata, "base_filters": base_filters}
    return wide


def add_input_slices(model: UNet2D, offsets) -> UNet2D:
    """One-slice ``model`` reading the slices at ``offsets`` mm (``FemurUNetLib.neighbours``): the first
    convolution's weights on the slice itself (offset 0) are the model's, on the others zero."""
    offsets = tuple(float(v) for v in offsets)
    if model.in_channels != 1 or 0.0 not in offsets:
        raise FemurUNetError(f"neighbouring slices are added to a one-slice model, at offsets that include 0 "
                             f"(got {model.in_channels} input channels, offsets {list(offsets)})")
    net = UNet2D(len(offsets), model.out_channels, model.base_filters)
    state = dict(model.state_dict())
    first = state["enc.0.0.weight"]
    weight = first.new_zeros(first.shape[0], len(offsets), *first.shape[2:])
    weight[:, offsets.index(0.0)] = first[:, 0]
    state["enc.0.0.weight"] = weight
    net.load_state_dict(state)
    net.train(model.training)
    net.metadata = {**getattr(model, "metadata", {}), "in_channels": len(offsets), "slice_offsets_mm": list(offsets)}
    return net


def widened_start(model: UNet2D, base_filters: int, seed: int, name) -> UNet2D:
    """A starting model at ``base_filters``: itself, or widened (``widen``); an error names its file ``name``."""
    if base_filters == model.base_filters:
        return model
    try:
        return widen(model, base_filters, torch.Generator().manual_seed(seed))
    except FemurUNetError as exc:
        raise FemurUNetError(f"{name}: {exc}") from None


def _convs(net: UNet2D) -> list:
    """(convolution, whether its input is the decoder's [skip, up] concatenation), in the network's order."""
    convs = [(c, False) for block in net.enc for c in block if isinstance(c, nn.Conv2d)]
    for up, dec in zip(net.up, net.dec):
        convs += [(up.conv, False)] + [(c, i == 0) for i, c in enumerate(m for m in dec if isinstance(m, nn.Conv2d))]
    return convs + [(net.head, False)]


def _sources(channels: int, copies: int, parts: int = 1) -> torch.Tensor:
    """For each channel of the widened layer, the original channel it copies: each of ``parts`` equal blocks of
    ``channels`` repeated ``copies`` times, blocks in order."""
    block = channels // parts
    return torch.cat([part * block + torch.arange(block * copies) % block for part in range(parts)])


def _copy_split(conv: nn.Conv2d, wide: nn.Conv2d, in_map: torch.Tensor, out_map: torch.Tensor,
                generator: torch.Generator) -> None:
    """``wide``'s weights: ``conv``'s rows repeated by ``out_map``; the weights of each input channel's copies
    share its weight in random positive shares summing to one."""
    weight = conv.weight[out_map][:, in_map]
    shares = 1.0 + SHARE_SPREAD * (2.0 * torch.rand(weight.shape, generator=generator) - 1.0)
    sums = torch.zeros(weight.shape[0], conv.weight.shape[1], *weight.shape[2:]).index_add_(1, in_map, shares)
    wide.weight.copy_(weight * shares / sums[:, in_map])
    wide.bias.copy_(conv.bias[out_map])
