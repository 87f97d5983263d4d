import pytest
import torch

from NSN2NDenoiseLib import CancelledError
from NSN2NDenoiseLib.config import InferenceConfig
from NSN2NDenoiseLib.inference import apply_safeguard, predict_slices
from NSN2NDenoiseLib.training import dihedral, inverse_dihedral


class _Shift(torch.nn.Module):
    """A stand-in network that adds 1 and mirrors columns: not flip-equivariant, so TTA changes its output."""

    def forward(self, x):
        return x.flip(-1) + 1.0


@pytest.mark.parametrize("batch_size", [1, 3, 10])
def test_every_slice_is_predicted_in_any_batching(batch_size):
    slices = torch.rand(7, 5, 6)
    out = predict_slices(_Shift(), slices, InferenceConfig(batch_size=batch_size, tta=False))
    assert torch.allclose(out, slices.flip(-1) + 1.0)


def test_tta_averages_the_eight_transforms():
    slices = torch.rand(2, 6, 6)
    out = predict_slices(_Shift(), slices, InferenceConfig(tta=True))
    # mirrored and unmirrored inputs average out: the mean of x and its row/column mirrors, plus 1
    expected = torch.zeros_like(slices)
    for k in range(8):
        expected += inverse_dihedral(dihedral(slices, k).flip(-1) + 1.0, k)
    assert torch.allclose(out, expected / 8, atol=1e-6)
    assert not torch.allclose(out, slices.flip(-1) + 1.0)


def test_inference_can_be_cancelled():
    with pytest.raises(CancelledError):
        predict_slices(_Shift(), torch.rand(4, 5, 5), InferenceConfig(), is_cancelled=lambda: True)


def test_safeguard_keeps_noise_removal_and_restores_removed_structure():
    torch.manual_seed(0)
    clean = torch.full((1, 64, 64), 0.5)
    noise = 0.02 * torch.randn(1, 64, 64)
    noisy = clean + noise
    noisy[0, 30:34, 10:50] += 0.5  # a bright bar the "network" below wrongly erased
    erased = clean.clone()  # removes the noise everywhere and the bar too
    out, sigma = apply_safeguard(noisy, erased, factor=2.0)
    assert sigma == pytest.approx(0.02, rel=0.3)
    assert torch.allclose(out[0, :20], erased[0, :20]), "where only noise was removed, nothing changes"
    bar = out[0, 31:33, 15:45] - clean[0, 31:33, 15:45]
    assert bar.mean() > 0.35, "most of the erased bar comes back"
