"""One training step in three parts, shared by the training loop and the benchmark: load the batch onto the device,
augment it (the seed's geometric augmentation, then the opt-in intensity randomisation), optimise on it."""
from __future__ import annotations

import copy
from typing import Optional

import torch

from FemurUNetLib.device import autocast, cpu_supports_bf16
from FemurUNetLib.errors import FemurUNetError

from .augment import apply_augmentation
from .dataset import SliceDataset
from .distributed import Dist
from .intensity import apply_intensity
from .loss import training_loss
from .options import TrainConfig

ADAM_EPSILON = 1e-7   # Keras' default (PyTorch's is 1e-8)


def amp_dtype(mode: str, device: torch.device) -> Optional[torch.dtype]:
    """The autocast dtype of ``--amp`` MODE on the device (None: fp32)."""
    mode = (mode or "auto").lower()
    if mode == "off":
        return None
    if mode == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.bfloat16 if device.type == "cpu" and cpu_supports_bf16() else None
    if mode in ("bf16", "bfloat16"):
        return torch.bfloat16
    if mode in ("fp16", "float16"):
        if device.type == "cpu":
            raise FemurUNetError("amp fp16 needs CUDA; use bf16 or off on the CPU")
        return torch.float16
    raise FemurUNetError(f"amp {mode!r}: use auto, bf16, fp16 or off")


def make_optimizer(net: torch.nn.Module, lr: float, groups=None) -> torch.optim.Optimizer:
    """The seed's optimiser: Keras' Adam (betas 0.9/0.999, epsilon 1e-7), on all of ``net``'s parameters or on
    torch parameter ``groups`` of them."""
    return torch.optim.Adam(groups or net.parameters(), lr=lr, betas=(0.9, 0.999), eps=ADAM_EPSILON)


def load_batch(data: SliceDataset, indices: torch.Tensor, device: torch.device) -> tuple:
    """(images, masks) of the dataset rows ``indices`` on the device."""
    return (data.images[indices].to(device, non_blocking=True), data.masks[indices].to(device, non_blocking=True))


def augment(x: torch.Tensor, y: torch.Tensor, params: dict, intensity: Optional[dict], config: TrainConfig,
            window_width: float) -> tuple:
    """Geometric augmentation with drawn ``params``, then intensities with drawn ``intensity`` (None: off)."""
    x, y = apply_augmentation(x, y, params, config.augment)
    if intensity is not None:
        x = apply_intensity(x, intensity, window_width)
    if config.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x, y


def optimise(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, optimizer, scaler, ctx: Dist,
             amp: Optional[torch.dtype], bce_weight: float, lr_factor: float = 1.0) -> float:
    """Forward, loss, backward and optimiser step at ``lr_factor`` x the scheduled rate (the warm-up; the
    scheduler keeps seeing the unscaled rate); returns the global batch's Dice loss."""
    with autocast(x.device, amp):
        p = model(x)
    loss, loss_value = training_loss(y, p.float(), ctx, bce_weight)
    optimizer.zero_grad(set_to_none=True)
    scheduled = [group["lr"] for group in optimizer.param_groups]
    for group in optimizer.param_groups:
        group["lr"] *= lr_factor
    if scaler is not None:
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
    else:
        loss.backward()
        optimizer.step()
    for group, lr in zip(optimizer.param_groups, scheduled):
        group["lr"] = lr
    return loss_value


class WeightAverage:
    """An exponential moving average of a network's weights: after every optimiser step, ``average += (1 -
    decay) x (weights - average)``. ``net`` is a copy of the network holding the average (validated and saved)."""

    def __init__(self, net: torch.nn.Module, decay: float):
        self.decay = float(decay)
        self.net = copy.deepcopy(net)
        self.net.requires_grad_(False)

    @torch.no_grad()
    def update(self, net: torch.nn.Module) -> None:
        torch._foreach_lerp_(list(self.net.parameters()), list(net.parameters()), 1.0 - self.decay)
        for average, current in zip(self.net.buffers(), net.buffers()):
            average.copy_(current)
