"""The training objective (the seed's 1 - Dice over the flattened batch, optionally + BCE; DDP-exact) and the
validation metrics."""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from FemurUNetLib.device import autocast
from FemurUNetLib.model import dice_coefficient

from .dataset import SliceDataset
from .distributed import Dist

SMOOTH = 1.0
BCE_CLAMP = 1e-6      # probabilities are clamped to [BCE_CLAMP, 1 - BCE_CLAMP] inside the cross-entropy


def batch_dice_loss(y_true: torch.Tensor, y_pred: torch.Tensor, ctx: Dist) -> tuple:
    """(loss to backpropagate, Dice loss value of the global batch).

    One process: the engine's ``1 - dice_coefficient``. DDP: each process holds part of the batch; the loss
    is linearised at the all-reduced sums so that DDP's gradient averaging yields the global batch's gradient.
    """
    if ctx.world == 1:
        loss = 1.0 - dice_coefficient(y_true, y_pred, SMOOTH)
        return loss, float(loss.detach())
    t, p = y_true.reshape(-1).to(y_pred.dtype), y_pred.reshape(-1)
    inter, total = (t * p).sum(), t.sum() + p.sum()
    sums = ctx.all_reduce(torch.stack([inter.detach(), total.detach()]).double())
    big_i, big_s = sums[0], sums[1]
    d_inter = -2.0 / (big_s + SMOOTH)
    d_total = (2.0 * big_i + SMOOTH) / (big_s + SMOOTH) ** 2
    surrogate = ctx.world * (d_inter.float() * inter + d_total.float() * total)
    return surrogate, float(1.0 - (2.0 * big_i + SMOOTH) / (big_s + SMOOTH))


def training_loss(y_true: torch.Tensor, y_pred: torch.Tensor, ctx: Dist, bce_weight: float = 0.0) -> tuple:
    """(loss to backpropagate, Dice loss value of the global batch): 1 - Dice, plus ``bce_weight`` x the mean
    binary cross-entropy (per process: DDP's gradient averaging makes it the global batch's mean)."""
    loss, dice_value = batch_dice_loss(y_true, y_pred, ctx)
    if bce_weight:
        bce = F.binary_cross_entropy(y_pred.clamp(BCE_CLAMP, 1.0 - BCE_CLAMP), y_true.to(y_pred.dtype))
        loss = loss + bce_weight * bce
    return loss, dice_value


@torch.no_grad()
def evaluate(model: torch.nn.Module, data: SliceDataset, device: torch.device, amp: Optional[torch.dtype] = None,
             batch_size: int = 16, ctx: Optional[Dist] = None, channels_last: bool = True) -> tuple:
    """(val_loss, val_dice) over the whole set: 1 - soft Dice (smooth 1), and the Dice of predictions > 0.5."""
    ctx = ctx or Dist()
    was_training = model.training
    model.eval()
    sums = torch.zeros(4, dtype=torch.float64)
    mine = torch.arange(ctx.rank, len(data), ctx.world)
    for start in range(0, len(mine), batch_size):
        idx = mine[start:start + batch_size]
        x = data.images[idx].to(device)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        y = data.masks[idx].to(device, torch.float32)
        with autocast(device, amp):
            p = model(x)
        p = p.float()
        hard = (p > 0.5).float()
        sums += torch.stack([(y * p).sum(), y.sum() + p.sum(), (y * hard).sum(), y.sum() + hard.sum()]).double().cpu()
    sums = ctx.all_reduce(sums.to(device)).cpu() if ctx.world > 1 else sums
    model.train(was_training)
    val_loss = 1.0 - (2.0 * sums[0] + SMOOTH) / (sums[1] + SMOOTH)
    val_dice = 2.0 * sums[2] / sums[3] if sums[3] > 0 else torch.tensor(1.0)
    return float(val_loss), float(val_dice)
