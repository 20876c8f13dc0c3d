"""The seed's 2D U-Net in PyTorch, and its Dice metric/loss."""
from __future__ import annotations

import torch
from torch import nn
import torch.nn.functional as F

ARCHITECTURE = "unet2d-seed"


def _conv3x3(in_ch: int, out_ch: int) -> nn.Conv2d:
    return nn.Conv2d(in_ch, out_ch, kernel_size=3, padding=1)


class _DoubleConv(nn.Sequential):
    def __init__(self, in_ch: int, out_ch: int):
        super().__init__(_conv3x3(in_ch, out_ch), nn.ReLU(inplace=True), _conv3x3(out_ch, out_ch), nn.ReLU(inplace=True))


# Per axis, the 2x2 conv on the nearest-upsampled map is a stride-2 transposed conv with taps (w1, w0 + w1, w0).
_TAPS = ((0.0, 1.0), (1.0, 1.0), (1.0, 0.0))


class _UpConv(nn.Module):
    """Nearest x2 upsampling, then a 2x2 conv padded like Keras 'same' (one extra row/column bottom/right).

    In eval mode the same map is computed as one stride-2 transposed 3x3 conv on the small input (equal up to float
    rounding, 44 % fewer multiply-adds); training keeps the literal form, so training runs keep their bits.
    """

    def __init__(self, in_ch: int, out_ch: int):
        super().__init__()
        self.conv = nn.Conv2d(in_ch, out_ch, kernel_size=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return F.relu(self.transposed(x), inplace=True)
        x = F.interpolate(x, scale_factor=2, mode="nearest")
        return F.relu(self.conv(F.pad(x, (0, 1, 0, 1))), inplace=True)

    def transposed(self, x: torch.Tensor) -> torch.Tensor:
        taps = self.conv.weight.new_tensor(_TAPS)
        kernel = torch.einsum("ka,lb,oiab->iokl", taps, taps, self.conv.weight)   # (in, out, 3, 3)
        return F.conv_transpose2d(x, kernel, self.conv.bias, stride=2, padding=1, output_padding=1)


class UNet2D(nn.Module):
    """Encoder 1x..16x base_filters, dropout 0.5/0.4, upsample + 2x2 conv, [skip, up] concat, 1x1 sigmoid head.

    ``forward`` returns probabilities like the seed's Keras model; ``logits`` returns the pre-sigmoid map.
    Input height and width must be multiples of 16.
    """

    def __init__(self, in_channels: int = 1, out_channels: int = 1, base_filters: int = 64):
        super().__init__()
        self.in_channels, self.out_channels, self.base_filters = in_channels, out_channels, base_filters
        w = [base_filters * m for m in (1, 2, 4, 8, 16)]
        self.enc = nn.ModuleList([_DoubleConv(in_channels, w[0])] + [_DoubleConv(w[i - 1], w[i]) for i in range(1, 5)])
        self.drop4 = nn.Dropout(0.5)
        self.drop5 = nn.Dropout(0.4)
        self.up = nn.ModuleList([_UpConv(w[i], w[i - 1]) for i in (4, 3, 2, 1)])
        self.dec = nn.ModuleList([_DoubleConv(2 * w[i - 1], w[i - 1]) for i in (4, 3, 2, 1)])
        self.head = nn.Conv2d(w[0], out_channels, kernel_size=1)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """He-normal kernels (fan-in, like Keras 'he_normal' up to truncation), zero biases; Glorot for the head."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                if m is self.head:
                    nn.init.xavier_uniform_(m.weight)
                else:
                    nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
                nn.init.zeros_(m.bias)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for level, block in enumerate(self.enc):
            x = block(x)
            if level == 3:
                x = self.drop4(x)
            if level == 4:
                x = self.drop5(x)
            else:
                skips.append(x)
                x = F.max_pool2d(x, 2)
        for up, dec, skip in zip(self.up, self.dec, reversed(skips)):
            x = dec(torch.cat([skip, up(x)], dim=1))
        return self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.logits(x).float())  # fp32 even under autocast: bf16 rounds p > 0.996 to 1


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def dice_coefficient(y_true: torch.Tensor, y_pred: torch.Tensor, smooth: float = 1.0) -> torch.Tensor:
    """The seed's Dice over the flattened batch: (2*sum(t*p) + smooth) / (sum(t) + sum(p) + smooth)."""
    t = y_true.reshape(-1).to(y_pred.dtype)
    p = y_pred.reshape(-1)
    return (2.0 * (t * p).sum() + smooth) / (t.sum() + p.sum() + smooth)


def dice_loss(y_true: torch.Tensor, y_pred: torch.Tensor, smooth: float = 1.0) -> torch.Tensor:
    return 1.0 - dice_coefficient(y_true, y_pred, smooth)


def forward_macs(base_filters: int = 64, size: int = 256, in_channels: int = 1, out_channels: int = 1,
                 training: bool = False) -> int:
    """Exact multiply-accumulate count of one forward pass on a size x size slice (convolutions only), in eval mode
    (up-convs as stride-2 transposed 3x3 convs on the small map) or, ``training``, the seed's upsample + 2x2 form."""
    w = [base_filters * m for m in (1, 2, 4, 8, 16)]
    macs, s, c = 0, size, in_channels
    for level in range(5):
        macs += s * s * 9 * (c * w[level] + w[level] * w[level])
        c = w[level]
        if level < 4:
            s //= 2
    for level in (3, 2, 1, 0):
        s *= 2
        macs += (s * s * 4 if training else (s // 2) ** 2 * 9) * w[level + 1] * w[level]   # up-conv
        macs += s * s * 9 * (2 * w[level] * w[level] + w[level] * w[level])
    macs += s * s * w[0] * out_channels
    return macs
