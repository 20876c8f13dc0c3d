"""Widening a trained U-Net (Net2WiderNet): the same outputs at any multiple of the width, copies that learn apart."""
from __future__ import annotations

import pytest
import torch

from FemurUNetLib import UNet2D
from FemurUNetLib.errors import FemurUNetError
from FemurUNetLib.model import count_parameters
from FemurUNetTrainLib.widen import widen


def trained_like(base: int, seed: int = 0) -> UNet2D:
    """A net with non-zero biases everywhere (fresh nets have zero biases, which would hide a bias mix-up)."""
    torch.manual_seed(seed)
    net = UNet2D(1, 1, base)
    with torch.no_grad():
        for conv in net.modules():
            if isinstance(conv, torch.nn.Conv2d):
                conv.bias.normal_(0.0, 0.1)
    return net.eval()


@pytest.mark.parametrize("factor", [2, 3])
def test_widened_net_computes_the_same_map(factor):
    net = trained_like(4)
    net.metadata = {"base_filters": 4, "input_size": 32}
    wide = widen(net, 4 * factor, torch.Generator().manual_seed(1))
    x = torch.randn(3, 1, 32, 32)
    with torch.no_grad():
        before, after = net.logits(x), wide.logits(x)
        assert wide.base_filters == 4 * factor and not wide.training
        assert torch.allclose(after, before, rtol=1e-4, atol=1e-4 * before.abs().max().item())
        net.train(), wide.train()                           # the literal up-path of training too (dropout off)
        net.drop4.p = net.drop5.p = wide.drop4.p = wide.drop5.p = 0.0
        assert torch.allclose(wide.logits(x), net.logits(x), rtol=1e-4, atol=1e-4 * before.abs().max().item())
    assert wide.metadata == {"base_filters": 4 * factor, "input_size": 32}
    assert count_parameters(wide) > (factor ** 2 - 0.1) * count_parameters(net)


def test_copies_of_a_channel_learn_apart():
    wide = widen(trained_like(4), 8, torch.Generator().manual_seed(2)).train()
    wide.drop4.p = wide.drop5.p = 0.0
    first = wide.enc[0][0]
    assert torch.allclose(first.weight[:4], first.weight[4:], atol=1e-6)   # copies start equal
    x, y = torch.randn(2, 1, 32, 32), (torch.rand(2, 1, 32, 32) > 0.5).float()
    torch.nn.functional.binary_cross_entropy_with_logits(wide.logits(x), y).backward()
    grad = first.weight.grad                                        # unequal shares downstream: unequal gradients
    assert (grad[:4] - grad[4:]).norm() > 0.01 * grad.norm()


@pytest.mark.parametrize("base", [6, 2])
def test_only_a_multiple_of_the_width(base):
    with pytest.raises(FemurUNetError, match=f"--base-filters {base}: a model of base 4 widens only to a multiple of 4"):
        widen(trained_like(4), base, torch.Generator())
