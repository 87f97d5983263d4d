import pytest
import torch

from NSN2NDenoiseLib.network import UNet2D, pad_to_multiple


@pytest.mark.parametrize("h, w", [(64, 64), (63, 65), (17, 33), (8, 8), (5, 7), (1, 1), (100, 3)])
@pytest.mark.parametrize("depth", [1, 2, 3])
def test_any_slice_size_comes_back_with_its_shape(h, w, depth):
    net = UNet2D(1, 1, depth=depth, width=4)
    x = torch.rand(2, 1, h, w)
    assert net(x).shape == (2, 1, h, w)


def test_padding_is_cropped_back_exactly():
    x = torch.arange(5 * 7, dtype=torch.float32).view(1, 1, 5, 7)
    padded, (h, w) = pad_to_multiple(x, 4)
    assert padded.shape[-2:] == (8, 8)
    assert torch.equal(padded[..., :h, :w], x)


def test_residual_network_starts_as_identity_and_learns():
    net = UNet2D(1, 1, depth=2, width=4, residual=True)
    x = torch.rand(2, 1, 9, 11)
    assert torch.equal(net(x), x)
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    for _ in range(3):
        loss = (net(x) - 0.5).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert not torch.equal(net(x), x), "the zero-initialised head must still let the network learn"


def test_dtype_and_device_follow_input():
    net = UNet2D(1, 1, depth=1, width=4).double()
    y = net(torch.rand(1, 1, 6, 6, dtype=torch.float64))
    assert y.dtype == torch.float64 and y.device.type == "cpu"


def test_no_batchnorm():
    net = UNet2D(1, 1, depth=3, width=8)
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in net.modules())
