import numpy as np
import pytest
import torch

from FemurUNetLib import UNet2D, count_parameters, dice_coefficient, dice_loss
from FemurUNetLib.model import _UpConv, forward_macs


def test_seed_architecture_has_keras_parameter_count():
    assert count_parameters(UNet2D()) == 31_030_593


@pytest.mark.parametrize("base", [4, 16, 32])
def test_base_filters_scale_every_width(base):
    net = UNet2D(base_filters=base)
    widths = [blk[0].out_channels for blk in net.enc]
    assert widths == [base, 2 * base, 4 * base, 8 * base, 16 * base]
    assert [u.conv.out_channels for u in net.up] == [8 * base, 4 * base, 2 * base, base]
    assert net.head.out_channels == 1


def test_dropouts_are_the_seeds_and_only_active_in_training():
    net = UNet2D(base_filters=4)
    assert (net.drop4.p, net.drop5.p) == (0.5, 0.4)
    x = torch.rand(2, 1, 32, 32)
    net.eval()
    assert torch.equal(net(x), net(x))
    net.train()
    torch.manual_seed(0)
    a = net(x)
    torch.manual_seed(1)
    assert not torch.equal(a, net(x))


def test_upconv_pads_like_keras_same_bottom_right():
    up = _UpConv(1, 1)
    with torch.no_grad():
        up.conv.weight.copy_(torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]]))
        up.conv.bias.zero_()
    x = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])
    u = np.kron(x[0, 0].numpy(), np.ones((2, 2)))            # nearest x2
    padded = np.pad(u, ((0, 1), (0, 1)))                      # Keras 'same' for even kernels: extra at the end
    k = np.array([[1.0, 2.0], [3.0, 4.0]])
    expected = np.array([[(padded[r:r + 2, c:c + 2] * k).sum() for c in range(4)] for r in range(4)])
    assert np.allclose(up(x)[0, 0].detach().numpy(), expected)
    assert not np.allclose(up(x)[0, 0].detach().numpy(), np.roll(expected, 1, axis=0))


def test_forward_returns_probabilities_and_keeps_size():
    torch.manual_seed(0)
    net = UNet2D(base_filters=4).eval()
    x = torch.rand(3, 1, 64, 48)
    with torch.no_grad():
        p = net(x)
    assert p.shape == (3, 1, 64, 48)
    assert float(p.min()) >= 0 and float(p.max()) <= 1
    assert torch.allclose(p, torch.sigmoid(net.logits(x)).detach())


def test_he_normal_init_has_fan_in_variance():
    torch.manual_seed(0)
    w = UNet2D(base_filters=64).enc[3][2].weight   # 512 -> 512, 3x3: fan_in 4608
    assert w.std().item() == pytest.approx(np.sqrt(2 / 4608), rel=0.02)


def test_mac_count_matches_hooked_convolutions():
    net = UNet2D(base_filters=8)
    total = []

    def hook(mod, inp, out):
        total.append(out.numel() * mod.in_channels * mod.kernel_size[0] * mod.kernel_size[1])
    for m in net.modules():
        if isinstance(m, torch.nn.Conv2d):
            m.register_forward_hook(hook)
    net.train()(torch.zeros(1, 1, 64, 64))
    assert sum(total) == forward_macs(8, 64, training=True)
    assert forward_macs(64, 256, training=True) == pytest.approx(54.53e9, rel=1e-3)
    ups = sum(up.conv.in_channels * up.conv.out_channels * (64 // 2 ** (3 - n)) ** 2 for n, up in enumerate(net.up))
    assert forward_macs(8, 64, training=True) - forward_macs(8, 64) == (4 - 9 / 4) * ups   # eval: 9 taps on 1/4


def test_dice_hand_computed():
    t = torch.tensor([1.0, 1.0, 0.0, 0.0])
    p = torch.tensor([1.0, 0.0, 1.0, 0.0])
    assert dice_coefficient(t, p).item() == pytest.approx((2 * 1 + 1) / (2 + 2 + 1))
    assert dice_coefficient(t, p, smooth=0).item() == pytest.approx(0.5)
    assert dice_coefficient(torch.zeros(4), torch.zeros(4)).item() == 1.0        # smooth: empty vs empty
    soft = torch.tensor([0.5, 0.25, 0.0, 0.0])
    assert dice_coefficient(t, soft).item() == pytest.approx((2 * 0.75 + 1) / (2 + 0.75 + 1))
    assert dice_loss(t, t).item() == pytest.approx(0.0)


def test_dice_is_over_the_flattened_batch_not_per_sample():
    t = torch.zeros(2, 1, 2, 2)
    t[0] = 1
    p = torch.zeros(2, 1, 2, 2)
    p[0] = 1
    p[1, 0, 0, 0] = 1
    assert dice_coefficient(t, p).item() == pytest.approx((2 * 4 + 1) / (4 + 5 + 1))


def test_dice_loss_gradient_points_toward_the_target():
    t = torch.tensor([1.0, 0.0, 1.0, 0.0])
    p = torch.full((4,), 0.5, requires_grad=True)
    dice_loss(t, p).backward()
    assert (p.grad[t == 1] < 0).all() and (p.grad[t == 0] > 0).all()


@pytest.mark.parametrize("base, size", [(2, 32), (4, 48)])
def test_eval_up_path_equals_upsample_then_2x2_conv(base, size):
    """Eval mode computes each up-conv as one stride-2 transposed conv: the same map as the seed's form (training)."""
    torch.manual_seed(base)
    net = UNet2D(1, 1, base)
    for up in net.up:
        torch.nn.init.normal_(up.conv.bias)
    x = torch.randn(2, base * 16, size // 16, size // 16)
    for up in net.up[:1]:
        literal = up.train()(x)
        fast = up.eval()(x)
        assert fast.shape == literal.shape == (2, base * 8, size // 8, size // 8)
        assert torch.allclose(fast, literal, atol=1e-5, rtol=1e-5)
    net.drop4.p = net.drop5.p = 0.0
    image = torch.randn(1, 1, size, size)
    with torch.no_grad():
        assert torch.allclose(net.train().logits(image), net.eval().logits(image), atol=1e-4, rtol=1e-4)
