import pytest
import torch

from NSN2NDenoiseLib.config import LossConfig
from NSN2NDenoiseLib.losses import (
    Outputs,
    interslice_continuity_loss,
    masked_mean,
    reconstruction_loss,
    regional_consistency_loss,
    self_loss,
    total_loss,
)
from NSN2NDenoiseLib.training import Batch


def _t(values):
    return torch.tensor(values, dtype=torch.float64).view(1, 1, 2, 2)


def _scalar(v):
    return torch.tensor(v, dtype=torch.float64)


def test_masked_mean_divides_by_all_pixels():
    w = _t([[1.0, 0.0], [0.5, 0.0]])
    e = _t([[4.0, 100.0], [2.0, 7.0]])
    # (1*4 + 0.5*2) / 4 pixels: not by the summed weights
    assert torch.isclose(masked_mean(w, e), _scalar(5.0 / 4.0))


def test_each_loss_equals_its_formula():
    y_a = _t([[1.0, 2.0], [3.0, 4.0]])
    y_b = _t([[1.5, 2.0], [2.0, 0.0]])
    y_mid = _t([[1.0, 1.0], [1.0, 1.0]])
    t = _t([[0.0, 2.0], [3.0, 1.0]])
    w = _t([[1.0, 1.0], [0.0, 1.0]])
    # L_Recon = sum W (y_a - t)^2 / 4 = (1 + 0 + 9) / 4
    assert torch.isclose(reconstruction_loss(y_a, t, w), _scalar(10.0 / 4.0))
    # L_RC = sum W (y_a - y_b)^2 / 4 = (0.25 + 0 + 16) / 4
    assert torch.isclose(regional_consistency_loss(y_a, y_b, w), _scalar(16.25 / 4.0))
    # L_IC = mean (y_mid - (y_a + y_b)/2)^2 over all 4 pixels, unmasked
    avg = [[1.25, 2.0], [2.5, 2.0]]
    expected = sum((1.0 - v) ** 2 for row in avg for v in row) / 4.0
    assert torch.isclose(interslice_continuity_loss(y_mid, y_a, y_b), _scalar(expected))
    # L_Self = sum K (y_a - x)^2 / 4 with K = 1 - W here
    assert torch.isclose(self_loss(y_a, t, 1.0 - w), _scalar(0.0))
    assert torch.isclose(self_loss(y_a, t, w), _scalar(10.0 / 4.0))


def test_interslice_continuity_is_asymmetric_in_its_first_argument():
    a, b, mid = _t([[0.0, 0.0], [0.0, 0.0]]), _t([[2.0, 2.0], [2.0, 2.0]]), _t([[1.0, 1.0], [1.0, 1.0]])
    assert interslice_continuity_loss(mid, a, b) == 0.0
    assert interslice_continuity_loss(a, mid, b) == pytest.approx(2.25)


def _random_batch(seed: int = 0):
    g = torch.Generator().manual_seed(seed)

    def r():
        return torch.rand(2, 1, 4, 4, dtype=torch.float64, generator=g)

    batch = Batch(
        x=r(),
        target=r(),
        weights=(r() > 0.3).double(),
        keep=(r() > 0.6).double(),
        x_next=r(),
        pair_weights=(r() > 0.4).double(),
    )
    outputs = Outputs(out=r(), out_next=r(), out_mid=r())
    return batch, outputs


def test_total_loss_feeds_each_term_its_own_fields():
    """Each term against the field the method names: recon (out, target, weights), RC (out, out_next,
    pair_weights), IC (out_mid, out, out_next), self (out, x, keep)."""
    batch, o = _random_batch()
    cfg = LossConfig(lambda_rc=0.5, lambda_ic=0.75, lambda_self=0.25)
    parts = total_loss(o, batch, cfg)
    recon = ((o.out - batch.target) ** 2 * batch.weights).sum() / o.out.numel()
    rc = ((o.out - o.out_next) ** 2 * batch.pair_weights).sum() / o.out.numel()
    ic = ((o.out_mid - 0.5 * (o.out + o.out_next)) ** 2).mean()
    own = ((o.out - batch.x) ** 2 * batch.keep).sum() / o.out.numel()
    assert torch.isclose(parts["recon"], recon)
    assert torch.isclose(parts["rc"], rc)
    assert torch.isclose(parts["ic"], ic)
    assert torch.isclose(parts["self"], own)
    assert torch.isclose(parts["total"], recon + 0.5 * rc + 0.75 * ic + 0.25 * own)


def test_terms_whose_lambda_is_zero_are_zero_and_need_no_extra_outputs():
    batch, o = _random_batch(1)
    parts = total_loss(Outputs(out=o.out), batch, LossConfig(lambda_rc=0.0, lambda_ic=0.0, lambda_self=0.0))
    assert parts["rc"] == 0 and parts["ic"] == 0 and parts["self"] == 0
    assert torch.equal(parts["total"], parts["recon"])
    parts = total_loss(Outputs(out=o.out), batch, LossConfig(lambda_rc=0.0, lambda_ic=0.0, lambda_self=1.0))
    assert parts["self"] > 0 and torch.isclose(parts["total"], parts["recon"] + parts["self"])


def test_zero_weight_pixels_get_no_gradient_from_weighted_terms():
    torch.manual_seed(1)
    y_a = torch.rand(1, 1, 4, 4, dtype=torch.float64, requires_grad=True)
    y_b = torch.rand(1, 1, 4, 4, dtype=torch.float64, requires_grad=True)
    t = torch.rand(1, 1, 4, 4, dtype=torch.float64)
    w = torch.ones(1, 1, 4, 4, dtype=torch.float64)
    w[..., 1:3, 1:3] = 0.0
    (reconstruction_loss(y_a, t, w) + regional_consistency_loss(y_a, y_b, w)).backward()
    for grad in (y_a.grad, y_b.grad):
        assert torch.all(grad[..., 1:3, 1:3] == 0)
        assert torch.all(grad[w > 0] != 0)


def test_self_term_keeps_input_only_where_kept():
    y_a = _t([[1.0, 2.0], [3.0, 4.0]])
    x_a = _t([[0.0, 0.0], [1.0, 1.0]])
    keep = _t([[0.0, 1.0], [1.0, 0.0]])
    # M(K, (y - x)^2) = (4 + 4) / 4 pixels
    assert torch.isclose(self_loss(y_a, x_a, keep), _scalar(2.0))
    y = y_a.clone().requires_grad_(True)
    self_loss(y, x_a, keep).backward()
    assert y.grad[0, 0, 0, 0] == 0 and y.grad[0, 0, 1, 1] == 0  # not kept: no gradient from L_Self
    assert y.grad[0, 0, 0, 1] != 0 and y.grad[0, 0, 1, 0] != 0
