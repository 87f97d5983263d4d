import numpy as np
import pytest
import torch

from NSN2NDenoiseLib import CancelledError
from NSN2NDenoiseLib.config import InferenceConfig
from NSN2NDenoiseLib.inference import TTA_ORDER, predict_into, use_bf16
from NSN2NDenoiseLib.network import UNet2D
from NSN2NDenoiseLib.normalization import IntensityMap, NormalizedSlices, denormalize, normalize
from NSN2NDenoiseLib.training import dihedral, inverse_dihedral

CPU = torch.device("cpu")
IMAP = IntensityMap(offset=-20.0, scale=300.0)


class _Shift(torch.nn.Module):
    """A stand-in network that mirrors columns and adds a ramp along them: equivariant to no flip or rotation, so
    every TTA transform changes its output."""

    def forward(self, x):
        return x.flip(-1) + _ramp(x.shape[-1])


def _ramp(w: int) -> torch.Tensor:
    return torch.linspace(0.0, 1.0, w)


def _volume(shape=(7, 5, 6), seed=0):
    return np.random.default_rng(seed).normal(50.0, 100.0, shape).astype(np.float32)


def _predict(net, vol, cfg, axis=0):
    out = np.full(vol.shape, np.nan, dtype=np.float32)
    predict_into(net, NormalizedSlices(vol, axis, IMAP), np.moveaxis(out, axis, 0), cfg, CPU)
    return out


@pytest.mark.parametrize("batch_size", [1, 3, 10])
def test_every_slice_is_predicted_in_any_batching_and_denormalised(batch_size):
    vol = _volume()
    out = _predict(_Shift(), vol, InferenceConfig(batch_size=batch_size, tta=1))
    expected = denormalize(normalize(vol, IMAP)[..., ::-1] + _ramp(vol.shape[-1]).numpy(), IMAP)
    assert out.dtype == np.float32
    assert np.allclose(out, expected, atol=1e-3)


@pytest.mark.parametrize("axis", [1, 2])
def test_output_follows_the_slice_axis(axis):
    vol = _volume((6, 7, 8))
    out = _predict(_Shift(), vol, InferenceConfig(tta=1, batch_size=2), axis)
    stack = np.moveaxis(normalize(vol, IMAP), axis, 0)
    expected = np.moveaxis(denormalize(stack[..., ::-1] + _ramp(stack.shape[-1]).numpy(), IMAP), 0, axis)
    assert np.allclose(out, expected, atol=1e-3)


@pytest.mark.parametrize("tta", [2, 4, 8])
def test_tta_averages_the_first_transforms(tta):
    vol = _volume((2, 6, 6))
    out = _predict(_Shift(), vol, InferenceConfig(tta=tta))
    x = torch.from_numpy(normalize(vol, IMAP))
    expected = torch.zeros_like(x)
    for k in TTA_ORDER[:tta]:
        expected += inverse_dihedral(dihedral(x, k).flip(-1) + _ramp(6), k)
    assert np.allclose(out, denormalize((expected / tta).numpy(), IMAP), atol=1e-3)
    assert not np.allclose(out, _predict(_Shift(), vol, InferenceConfig(tta=1)), atol=1e-2)


def test_tta_order_starts_with_identity_and_flip_and_holds_all_eight():
    assert TTA_ORDER[:2] == (0, 4) and sorted(TTA_ORDER) == list(range(8))


def test_streamed_inference_equals_the_network_on_the_whole_stack():
    """Batches of slices, read and normalised from the input, give what the network gives on every slice at once."""
    torch.manual_seed(0)
    net = UNet2D(1, 1, depth=2, width=4, residual=True)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    net.eval()
    vol = _volume((7, 12, 10), seed=1)
    out = _predict(net, vol, InferenceConfig(batch_size=3, tta=4))
    x = torch.from_numpy(normalize(vol, IMAP)).unsqueeze(1)
    with torch.no_grad():
        whole = sum(inverse_dihedral(net(dihedral(x, k)), k) for k in TTA_ORDER[:4]) / 4
    assert np.allclose(out, denormalize(whole.squeeze(1).numpy(), IMAP), atol=1e-3)
    assert not np.allclose(out, vol, atol=1.0)


def test_progress_per_batch_and_cancel():
    vol = _volume()
    calls = []
    predict_into(
        _Shift(),
        NormalizedSlices(vol, 0, IMAP),
        np.empty_like(vol),
        InferenceConfig(batch_size=3, tta=1),
        CPU,
        progress=lambda *a: calls.append(a),
    )
    assert calls == [("inference", 3, 7, None), ("inference", 6, 7, None), ("inference", 7, 7, None)]
    with pytest.raises(CancelledError, match="Inference was cancelled"):
        predict_into(
            _Shift(),
            NormalizedSlices(vol, 0, IMAP),
            np.empty_like(vol),
            InferenceConfig(),
            CPU,
            is_cancelled=lambda: True,
        )


def test_bf16_only_when_asked_and_on_cuda_or_a_bf16_cpu(monkeypatch):
    from NSN2NDenoiseLib import inference

    assert not use_bf16(CPU, False) and not use_bf16(torch.device("cuda"), False)
    monkeypatch.setattr(inference, "cpu_has_bf16", lambda: False)
    assert use_bf16(torch.device("cuda"), True)
    assert not use_bf16(CPU, True)
    monkeypatch.setattr(inference, "cpu_has_bf16", lambda: True)
    assert use_bf16(CPU, True)


def test_bf16_inference_runs_under_autocast_and_stays_close():
    torch.manual_seed(1)
    net = UNet2D(1, 1, depth=1, width=4, residual=False).eval()
    vol = _volume((3, 8, 8), seed=2)
    src = NormalizedSlices(vol, 0, IMAP)
    fp32, bf16 = np.empty_like(vol), np.empty_like(vol)
    predict_into(net, src, fp32, InferenceConfig(tta=1), CPU, bf16=False)
    predict_into(net, src, bf16, InferenceConfig(tta=1), CPU, bf16=True)
    assert not np.array_equal(fp32, bf16), "bf16 must reach the network"
    assert np.allclose(fp32, bf16, atol=0.05 * IMAP.scale)


def test_accumulate_adds_the_prediction_to_what_the_output_holds():
    vol = _volume()
    cfg = InferenceConfig(tta=2)
    once = _predict(_Shift(), vol, cfg)
    out = np.full(vol.shape, 5.0, dtype=np.float32)
    predict_into(_Shift(), NormalizedSlices(vol, 0, IMAP), out, cfg, CPU, accumulate=True)
    np.testing.assert_allclose(out, once + 5.0, rtol=1e-5, atol=1e-3)


@pytest.mark.parametrize(
    "spacing, choice, lag1, expected, reason",
    [
        ((1.0, 1.0, 1.0), "auto", (0.02, 0.05), [0, 1, 2], "white in-plane noise"),
        ((1.2, 1.0, 1.0), "auto", (0.02, -0.1), [0, 1, 2], "white in-plane noise"),
        ((1.5, 0.957, 0.957), "auto", (0.02, 0.02), [0], "not near-isotropic"),
        ((1.0, 1.0, 1.0), "auto", (0.34, 0.02), [0], "not white"),
        ((1.0, 1.0, 1.0), "auto", (0.02, -0.25), [0], "not white"),
        ((1.0, 1.0, 1.0), "auto", (0.15, 0.19), [0, 1, 2], "white in-plane noise"),
        ((1.0, 1.0, 1.0), "auto", None, [0], "not measured"),
        ((1.0, 1.0, 1.0), "slice", (0.0, 0.0), [0], "'slice'"),
        ((3.0, 1.0, 1.0), "all", (0.9, 0.9), [0, 1, 2], "'all'"),
    ],
)
def test_prediction_axes_follow_the_choice_spacing_and_noise_whiteness(spacing, choice, lag1, expected, reason):
    from NSN2NDenoiseLib.inference import prediction_axes

    axes, why = prediction_axes(spacing, 0, choice, lag1)
    assert axes == expected and reason in why


def test_prediction_axes_put_the_slice_axis_first():
    from NSN2NDenoiseLib.inference import expected_axis_count, prediction_axes

    assert prediction_axes((1.0, 1.0, 1.0), 2, "all", None)[0] == [2, 0, 1]
    assert prediction_axes((1.0, 1.0, 1.0), 1, "auto", (0.0, 0.0))[0] == [1, 0, 2]
    assert [expected_axis_count(s, c) for s, c in [((1, 1, 1), "auto"), ((2, 1, 1), "auto"), (None, "auto")]] == [
        3,
        1,
        1,
    ]
    assert expected_axis_count((2, 1, 1), "all") == 3 and expected_axis_count((1, 1, 1), "slice") == 1


def test_prediction_axes_boundaries_and_reasons_exactly():
    from NSN2NDenoiseLib.inference import ISOTROPY_RATIO, WHITE_LAG1, near_isotropic, prediction_axes

    assert near_isotropic((ISOTROPY_RATIO, 1.0, 1.0)) and not near_isotropic((ISOTROPY_RATIO + 0.01, 1.0, 1.0))
    assert near_isotropic((2.2, 2.0, 2.0)) and near_isotropic((0.5, 0.45, 0.45))
    assert prediction_axes((1, 1, 1), 0, "auto", (WHITE_LAG1, -WHITE_LAG1))[0] == [0, 1, 2]
    assert prediction_axes((1, 1, 1), 0, "slice", None) == ([0], "inference.axes = 'slice'")
    assert prediction_axes((1, 1, 1), 1, "all", None) == ([1, 0, 2], "inference.axes = 'all'")
    assert "spacing ratio 1.57 > 1.25" in prediction_axes((1.5, 0.957, 0.957), 0, "auto", (0.0, 0.0))[1]
    assert "(lag-1 correlation 0.34 > 0.2)" in prediction_axes((1, 1, 1), 0, "auto", (0.34, 0.02))[1]
    assert "(lag-1 correlation not measured > 0.2)" in prediction_axes((1, 1, 1), 0, "auto", None)[1]
    assert "(lag-1 correlation 0.05 <= 0.2)" in prediction_axes((1, 1, 1), 0, "auto", (0.05, -0.01))[1]
