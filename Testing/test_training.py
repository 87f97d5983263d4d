import pytest
import torch

from NSN2NDenoiseLib import make_config
from NSN2NDenoiseLib.training import (
    PatchSampler,
    context_input,
    dihedral,
    either_target,
    inverse_dihedral,
    target_ramp,
    train_network,
)
from NSN2NDenoiseLib.weights import interpolation_offset


@pytest.mark.parametrize("k", range(8))
def test_dihedral_is_inverted_exactly(k):
    x = torch.arange(2 * 3 * 4 * 4, dtype=torch.float32).view(2, 3, 4, 4)
    assert torch.equal(inverse_dihedral(dihedral(x, k), k), x)


def test_eight_dihedral_transforms_are_distinct():
    x = torch.arange(9, dtype=torch.float32).view(1, 3, 3)
    assert len({tuple(dihedral(x, k).flatten().tolist()) for k in range(8)}) == 8


def test_either_target_picks_matching_neighbours_pixel_by_pixel():
    one = torch.ones(1, 1, 1, 4)
    x_prev, x_next = 2.0 * one, 4.0 * one
    w_prev = torch.tensor([1.0, 1.0, 0.0, 0.0]).view(1, 1, 1, 4)
    w_next = torch.tensor([1.0, 0.0, 1.0, 0.0]).view(1, 1, 1, 4)
    w_three = torch.zeros_like(one)
    target, weights = either_target(x_prev, x_next, w_prev, w_next, w_three)
    # both match: mean; only previous: previous; only next: next; none: weight 0 (left to the self term)
    assert target.flatten().tolist()[:3] == [3.0, 2.0, 4.0]
    assert weights.flatten().tolist() == [1.0, 1.0, 1.0, 0.0]
    w_three[..., 3] = 1.0  # the 3-slice test passes where no single neighbour does: the mean
    target, weights = either_target(x_prev, x_next, w_prev, w_next, w_three)
    assert target.flatten()[3] == 3.0 and weights.flatten()[3] == 1.0


def test_sampler_keeps_slices_and_weights_aligned():
    n, h, w = 6, 16, 16
    slices = torch.arange(n, dtype=torch.float32).view(n, 1, 1).expand(n, h, w).contiguous()
    weights = 10 + torch.arange(n - 1, dtype=torch.float32).view(n - 1, 1, 1).expand(n - 1, h, w).contiguous()
    extra = 100 + torch.arange(n - 2, dtype=torch.float32).view(n - 2, 1, 1).expand(n - 2, h, w).contiguous()
    sampler = PatchSampler(slices, weights, 3, patch=8, batch=16, seed=0, extra=extra)
    xs, ws = sampler.sample()
    assert xs.shape == (16, 3, 8, 8) and ws.shape == (16, 3, 8, 8)
    i = xs[:, 0, 0, 0]
    assert torch.equal(xs[:, 1, 0, 0], i + 1) and torch.equal(xs[:, 2, 0, 0], i + 2)
    assert torch.equal(ws[:, 0, 0, 0], 10 + i) and torch.equal(ws[:, 1, 0, 0], 11 + i)
    assert torch.equal(ws[:, 2, 0, 0], 100 + i)


@pytest.mark.parametrize("target", ["pair", "three_slice", "either", "cubic", "quintic"])
def test_training_lowers_the_loss(target):
    torch.manual_seed(0)
    clean = torch.linspace(0, 1, 32).view(1, 1, 32).expand(8, 32, 32)
    slices = (clean + 0.1 * torch.randn(8, 32, 32)).contiguous()
    cfg = make_config("fast", training={"iterations": 60, "batch_size": 4, "patch_size": 16}, loss={"target": target})
    extra = {}
    if target in ("cubic", "quintic"):
        offset = interpolation_offset(slices, 4 if target == "cubic" else 6)
        extra = {"target_weights": torch.ones(6, 32, 32), "target_offset": offset}
    _, curve = train_network(slices, torch.ones(7, 32, 32), cfg, **extra)
    assert curve[-1][1] < curve[0][1]


def test_context_input_mirrors_missing_slices():
    slices = torch.arange(6, dtype=torch.float32).view(6, 1, 1).expand(6, 2, 2)
    x = context_input(slices, slice(0, 6), 1)
    assert x.shape == (6, 3, 2, 2)
    assert x[:, :, 0, 0].tolist() == [[2, 0, 2], [3, 1, 3], [0, 2, 4], [1, 3, 5], [2, 4, 2], [3, 5, 3]]
    assert context_input(slices, slice(1, 3), 0).shape == (2, 1, 2, 2)


def test_training_with_context_slices_feeds_the_centre_slice_through():
    """With context the residual network starts as the identity of the centre slice and trains."""
    torch.manual_seed(0)
    clean = torch.linspace(0, 1, 32).view(1, 1, 32).expand(8, 32, 32)
    slices = (clean + 0.1 * torch.randn(8, 32, 32)).contiguous()
    cfg = make_config(
        "fast",
        training={"iterations": 40, "batch_size": 4, "patch_size": 16},
        network={"context_slices": 1},
        loss={"target": "three_slice"},
    )
    net, curve = train_network(slices, torch.ones(7, 32, 32), cfg, target_weights=torch.ones(6, 32, 32))
    assert curve[-1][1] < curve[0][1]
    fresh = type(net)(3, 1, depth=cfg.network.depth, width=cfg.network.width)
    x = context_input(slices, slice(0, 8), 1)
    assert torch.equal(fresh(x), x[:, 1:2])


def test_target_ramp_moves_from_mean_to_interpolation():
    assert target_ramp(1, 1000, 0.2) == pytest.approx(1 / 200)
    assert target_ramp(100, 1000, 0.2) == pytest.approx(0.5)
    assert target_ramp(200, 1000, 0.2) == 1.0 and target_ramp(900, 1000, 0.2) == 1.0
    assert target_ramp(1, 1000, 0.0) == 1.0
