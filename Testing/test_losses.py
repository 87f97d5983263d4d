import torch

from NSN2NDenoiseLib.config import LossConfig
from NSN2NDenoiseLib.losses import (
    interslice_continuity_loss,
    masked_mean,
    pair_loss,
    reconstruction_loss,
    regional_consistency_loss,
    self_loss,
)


def _t(values):
    return torch.tensor(values, dtype=torch.float64).view(1, 1, 2, 2)


def test_masked_mean_matched_and_all():
    w = _t([[1.0, 0.0], [0.5, 0.0]])
    e = _t([[4.0, 100.0], [2.0, 7.0]])
    # matched: (1*4 + 0.5*2) / (1 + 0.5); all: (1*4 + 0.5*2) / 4 pixels
    assert torch.isclose(masked_mean(w, e, "matched"), torch.tensor(5.0 / 1.5, dtype=torch.float64))
    assert torch.isclose(masked_mean(w, e, "all"), torch.tensor(5.0 / 4.0, dtype=torch.float64))


def test_each_loss_equals_its_formula():
    y_a = _t([[1.0, 2.0], [3.0, 4.0]])
    y_b = _t([[1.5, 2.0], [2.0, 0.0]])
    y_mid = _t([[1.0, 1.0], [1.0, 1.0]])
    x_b = _t([[0.0, 2.0], [3.0, 1.0]])
    w = _t([[1.0, 1.0], [0.0, 1.0]])
    # L_Recon = sum W (y_a - x_b)^2 / sum W = (1 + 0 + 9) / 3
    assert torch.isclose(reconstruction_loss(y_a, x_b, w), torch.tensor(10.0 / 3.0, dtype=torch.float64))
    # L_RC = sum W (y_a - y_b)^2 / sum W = (0.25 + 0 + 16) / 3
    assert torch.isclose(regional_consistency_loss(y_a, y_b, w), torch.tensor(16.25 / 3.0, dtype=torch.float64))
    # L_IC = mean (y_mid - (y_a + y_b)/2)^2 over all 4 pixels, unmasked
    avg = [[1.25, 2.0], [2.5, 2.0]]
    expected = sum((1.0 - v) ** 2 for row in avg for v in row) / 4.0
    assert torch.isclose(interslice_continuity_loss(y_mid, y_a, y_b), torch.tensor(expected, dtype=torch.float64))


def test_total_combines_terms_with_lambdas():
    torch.manual_seed(0)
    y_a, y_b, y_mid, x_a, x_b = (torch.rand(2, 1, 4, 4, dtype=torch.float64) for _ in range(5))
    w = (torch.rand(2, 1, 4, 4, dtype=torch.float64) > 0.3).double()
    cfg = LossConfig(lambda_rc=0.5, lambda_ic=2.0, lambda_self=0.0, symmetric=True, normalization="matched")
    parts = pair_loss(y_a, y_b, y_mid, x_a, x_b, w, cfg)
    recon = 0.5 * (reconstruction_loss(y_a, x_b, w) + reconstruction_loss(y_b, x_a, w))
    assert torch.isclose(parts["recon"], recon)
    assert torch.isclose(parts["total"], recon + 0.5 * parts["rc"] + 2.0 * parts["ic"])
    one_way = pair_loss(
        y_a, y_b, y_mid, x_a, x_b, w, LossConfig(symmetric=False, lambda_self=0.0, normalization="matched")
    )
    assert torch.isclose(one_way["recon"], reconstruction_loss(y_a, x_b, w))


def test_three_slice_target_replaces_neighbour():
    y_a, y_b, x_a, x_b, target = (torch.full((1, 1, 2, 2), v, dtype=torch.float64) for v in (1.0, 2.0, 0.0, 5.0, 3.0))
    w = torch.ones(1, 1, 2, 2, dtype=torch.float64)
    parts = pair_loss(y_a, y_b, None, x_a, x_b, w, LossConfig(lambda_ic=0.0), target_a=target, weights_a=w)
    assert torch.isclose(parts["recon"], torch.tensor(4.0, dtype=torch.float64))  # (1 - 3)^2


def test_zero_weight_pixels_get_no_gradient_from_weighted_terms():
    torch.manual_seed(1)
    y_a = torch.rand(1, 1, 4, 4, dtype=torch.float64, requires_grad=True)
    y_b = torch.rand(1, 1, 4, 4, dtype=torch.float64, requires_grad=True)
    x_a, x_b = torch.rand(1, 1, 4, 4, dtype=torch.float64), torch.rand(1, 1, 4, 4, dtype=torch.float64)
    w = torch.ones(1, 1, 4, 4, dtype=torch.float64)
    w[..., 1:3, 1:3] = 0.0
    # The weighted terms (reconstruction, regional consistency); the self term is tested below.
    parts = pair_loss(y_a, y_b, None, x_a, x_b, w, LossConfig(lambda_ic=0.0, lambda_self=0.0))
    parts["total"].backward()
    for grad in (y_a.grad, y_b.grad):
        assert torch.all(grad[..., 1:3, 1:3] == 0)
        assert torch.all(grad[w > 0] != 0)


def test_self_term_keeps_input_only_where_unmatched():
    y_a = _t([[1.0, 2.0], [3.0, 4.0]])
    x_a = _t([[0.0, 0.0], [1.0, 1.0]])
    w = _t([[1.0, 0.0], [0.0, 1.0]])
    # M(1 - W, (y - x)^2) over the unmatched pixels (0,1) and (1,0): (4 + 4) / 2
    assert torch.isclose(self_loss(y_a, x_a, 1.0 - w), torch.tensor(4.0, dtype=torch.float64))
    y = y_a.clone().requires_grad_(True)
    self_loss(y, x_a, 1.0 - w).backward()
    assert y.grad[0, 0, 0, 0] == 0 and y.grad[0, 0, 1, 1] == 0  # matched pixels: no gradient from L_Self
    parts = pair_loss(y_a, y_a, None, x_a, x_a, w, LossConfig(lambda_self=0.5, lambda_ic=0.0, lambda_rc=0.0))
    assert torch.isclose(parts["total"], parts["recon"] + 0.5 * parts["self"])
