import threading

import numpy as np
import pytest
import torch

from NSN2NDenoiseLib import CancelledError, CancelToken, DeviceError, InputError, denoise, make_config, wiener
from NSN2NDenoiseLib.api import choose_slice_axis, resolve_device
from NSN2NDenoiseLib.phantom import make_phantom, psnr

# Measured on this phantom (16x64x64, 60 HU in-plane correlated noise, phantom seeds 3/4, E2E_CONFIG below):
# noisy 24.43 dB; denoised 26.36 / 26.61 dB with training seeds 0 / 1, i.e. +1.9 to +2.2 dB.
# A margin of 1.0 dB sits well below that spread, and far above what a broken method gives (0 or less).
E2E_MARGIN_DB = 1.0
E2E_CONFIG = {"training": {"iterations": 300, "batch_size": 4, "patch_size": 32, "seed": 0}}


def test_end_to_end_output_is_closer_to_clean_by_a_margin(phantom_pair):
    clean, noisy = phantom_pair
    noisy_before = noisy.copy()
    cfg = make_config("default", device="cpu", **E2E_CONFIG)
    out, report = denoise(noisy, (2.0, 0.8, 0.8), cfg)
    assert np.array_equal(noisy, noisy_before), "the input must never be modified"
    assert out.dtype == np.float32 and out.shape == noisy.shape
    before, after = psnr(clean, noisy, 1000.0), psnr(clean, out, 1000.0)
    assert after - before > E2E_MARGIN_DB, f"PSNR {before:.2f} -> {after:.2f} dB"
    # The report says what happened.
    assert report.iterations == 300 and report.device == "cpu"
    assert set(report.phase_seconds) >= {"weights", "training", "inference"}
    assert 0.3 < report.matched_fraction <= 1.0
    assert len(report.loss_curve) == 30 and report.loss_curve[-1][0] == 300
    assert report.config["training"]["iterations"] == 300
    assert 20.0 < report.noise_sigma < 120.0  # true 60 HU; the estimate also sees anatomy changing


def test_same_seed_same_result(phantom_pair, tiny_config):
    _, noisy = phantom_pair
    a, _ = denoise(noisy, config=tiny_config)
    b, _ = denoise(noisy, config=tiny_config)
    assert np.array_equal(a, b)


def test_progress_reports_every_phase(phantom_pair, tiny_config):
    _, noisy = phantom_pair
    calls = []
    denoise(noisy, config=tiny_config, progress=lambda *a: calls.append(a))
    phases = [c[0] for c in calls]
    assert phases[0] == "weights" and "training" in phases and phases[-1] == "inference"
    training = [c for c in calls if c[0] == "training"]
    assert training[-1][1] == training[-1][2] == 5 and training[-1][3] is not None
    # the network's slices, then the Wiener stage's block rows, in one count
    assert (
        calls[-1][1] == calls[-1][2] == noisy.shape[0] + wiener.row_count(noisy.shape[0], tiny_config.inference.wiener)
    )


@pytest.mark.parametrize("kind", ["token", "event", "callable"])
def test_cancel_stops_within_one_iteration_and_returns_nothing(phantom_pair, kind):
    _, noisy = phantom_pair
    cfg = make_config("default", device="cpu", training={"iterations": 1000, "batch_size": 2, "patch_size": 32})
    token = {"token": CancelToken(), "event": threading.Event(), "callable": None}[kind]
    flag = {"set": False}
    seen = []

    def progress(phase, step, total, loss):
        seen.append((phase, step))
        if phase == "training" and step >= 20 and not flag["set"]:
            flag["set"] = True
            if kind == "token":
                token.cancel()
            elif kind == "event":
                token.set()

    cancel = (lambda: flag["set"]) if kind == "callable" else token
    result = None
    with pytest.raises(CancelledError):
        result = denoise(noisy, config=cfg, progress=progress, cancel=cancel)
    assert result is None
    steps = [s for p, s in seen if p == "training"]
    assert steps[-1] == 20, "training went on after the cancel"
    assert not any(p == "inference" for p, _ in seen)


def test_cancel_before_start_runs_no_iteration(phantom_pair, tiny_config):
    _, noisy = phantom_pair
    token = CancelToken()
    token.cancel()
    with pytest.raises(CancelledError):
        denoise(noisy, config=tiny_config, cancel=token)


@pytest.mark.parametrize(
    "volume, message",
    [
        (np.zeros((32, 32)), "2D"),
        (np.zeros((2, 4, 16, 16)), "4 dimensions"),
        (np.random.default_rng(0).random((2, 16, 16)), "at least 3"),
        (np.full((5, 16, 16), 3.0), "constant"),
        (np.where(np.eye(16)[None].repeat(4, 0) > 0, np.nan, 1.0), "NaN"),
        (np.where(np.eye(16)[None].repeat(4, 0) > 0, np.inf, 1.0), "NaN or infinite"),
        (np.ones((4, 16, 16), dtype=np.complex64), "complex"),
        (np.ones((4, 16, 16), dtype=bool), "binary"),
        (np.random.default_rng(0).random((4, 2, 16)), "too small"),
    ],
)
def test_bad_volumes_get_clear_errors(volume, message, tiny_config):
    with pytest.raises(InputError, match=message):
        denoise(volume, config=tiny_config.replace(slice_axis="k"))


@pytest.mark.parametrize("spacing", [(0, 1, 1), (1, 1), (1, -2, 1), (np.nan, 1, 1), "abc"])
def test_bad_spacing(spacing, phantom_pair, tiny_config):
    with pytest.raises(InputError, match="spacing"):
        denoise(phantom_pair[1], spacing, tiny_config)


def test_integer_ct_with_negative_hu_keeps_units(phantom_pair, tiny_config):
    clean, noisy = phantom_pair
    ct = np.round(noisy).astype(np.int16)
    assert ct.min() < -900
    out, _ = denoise(ct, config=tiny_config)
    assert out.dtype == np.float32
    # Air stays near -1000 HU and tissue near its value: the units come back, not normalised numbers.
    air = clean < -900
    assert abs(float(np.median(out[air])) + 1000.0) < 60.0
    assert abs(float(np.median(out[(clean > 0) & (clean < 60)])) - 30.0) < 60.0


@pytest.mark.parametrize(
    "shape, spacing, choice, axis",
    [
        ((10, 20, 20), (1.0, 1.0, 1.0), "auto", 0),
        ((20, 10, 20), (1.0, 3.0, 1.0), "auto", 1),
        ((20, 20, 10), (1.0, 1.0, 1.1), "auto", 0),  # not clearly anisotropic
        ((10, 20, 20), (1.0, 1.0, 1.0), "i", 2),
    ],
)
def test_slice_axis_choice(shape, spacing, choice, axis):
    assert choose_slice_axis(shape, spacing, choice) == axis


def test_other_slice_axis_gives_same_shape(phantom_pair, tiny_config):
    _, noisy = phantom_pair
    vol = np.ascontiguousarray(np.moveaxis(noisy, 0, 1))  # slices now along J, with spacing to match
    out, report = denoise(vol, (0.8, 2.0, 0.8), tiny_config.replace(slice_axis="auto"))
    assert report.slice_axis == 1 and out.shape == vol.shape


def test_cuda_request_without_gpu_is_a_clear_error():
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(DeviceError, match="CUDA"):
        resolve_device("cuda")
    assert resolve_device("auto").type == "cpu"


def test_device_is_a_parameter_of_the_same_code_path(phantom_pair, tiny_config):
    """The CUDA path is the same code with another device: run it on whatever 'auto' resolves to here."""
    _, noisy = phantom_pair
    out, report = denoise(noisy, config=tiny_config.replace(device="auto"))
    assert report.device.startswith(resolve_device("auto").type)
    assert np.isfinite(out).all()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_with_mixed_precision(phantom_pair):
    clean, noisy = phantom_pair
    cfg = make_config("default", device="cuda", **E2E_CONFIG)
    out, report = denoise(noisy, config=cfg)
    assert report.device.startswith("cuda")
    assert psnr(clean, out, 1000.0) - psnr(clean, noisy, 1000.0) > E2E_MARGIN_DB


@pytest.mark.parametrize(
    "options",
    [
        {"loss": {"lambda_rc": 0.5, "lambda_ic": 1.0}},
        {"loss": {"lambda_self": 0.0, "target_warmup": 0.0}, "weights": {"keep_factor": 0.0}},
        {"inference": {"tta": 8, "batch_size": 3}},
        {"training": {"mixed_precision": False, "threads": 1}},
    ],
)
def test_every_method_option_runs(phantom_pair, tiny_config, options):
    _, noisy = phantom_pair
    out, report = denoise(noisy, config=tiny_config.replace(**options))
    assert out.shape == noisy.shape and np.isfinite(out).all()
    assert len(report.matched_per_slice) == noisy.shape[0] - 2


def test_interslice_noise_correlation_tells_correlated_noise_apart(phantom_pair):
    from scipy import ndimage

    from NSN2NDenoiseLib.api import CORRELATION_WARNING
    from NSN2NDenoiseLib.noise_estimates import estimate_noise
    from NSN2NDenoiseLib.normalization import IntensityMap, NormalizedSlices

    clean, _ = phantom_pair
    rng = np.random.default_rng(0)
    white = rng.standard_normal(clean.shape)
    across = ndimage.gaussian_filter(white, (1.5, 0.7, 0.7))  # correlated between slices too
    inplane = ndimage.gaussian_filter(white, (0.0, 0.7, 0.7))
    values = {}
    for name, noise in (("across", across), ("inplane", inplane)):
        vol = clean + 60.0 * noise / noise.std()
        source = NormalizedSlices(vol.astype(np.float32), 0, IntensityMap(-1000.0, 2000.0))
        values[name] = estimate_noise(source, torch.device("cpu"))[1]
    assert values["inplane"] < CORRELATION_WARNING < values["across"], values
    vol = clean + 60.0 * across / across.std()
    _, report = denoise(vol, config=make_config("fast", device="cpu", training={"iterations": 2}))
    assert any("correlated" in w for w in report.warnings)


def test_axes_all_is_the_mean_of_the_network_along_each_axis(tiny_config):
    import torch

    from NSN2NDenoiseLib.inference import predict_into
    from NSN2NDenoiseLib.normalization import NormalizedSlices, fit_intensity_map
    from NSN2NDenoiseLib.training import build_network

    rng = np.random.default_rng(7)
    clean = make_phantom((12, 24, 20), seed=1)
    noisy = (clean + rng.normal(0, 30.0, clean.shape)).astype(np.float32)
    cfg = tiny_config.replace(
        inference={"axes": "all", "tta": 2, "neighbour_fusion": "off", "wiener": "off"}, training={"patch_size": 16}
    )
    out, report, state = denoise(noisy, config=cfg, return_model=True)
    net = build_network(cfg)
    net.load_state_dict(state)
    net.eval()
    imap = fit_intensity_map(noisy)
    along = []
    for a in range(3):
        o = np.empty(noisy.shape, dtype=np.float32)
        predict_into(net, NormalizedSlices(noisy, a, imap), np.moveaxis(o, a, 0), cfg.inference, torch.device("cpu"))
        along.append(o)
    np.testing.assert_allclose(out, np.mean(along, axis=0), rtol=1e-4, atol=1e-2)
    assert not np.allclose(out, along[0], atol=1e-2)
    assert report.prediction_axes == ["K", "J", "I"] and "'all'" in report.prediction_axes_reason
    single, rep1 = denoise(noisy, config=cfg.replace(inference={"axes": "slice"}))
    np.testing.assert_allclose(single, along[0], rtol=1e-4, atol=1e-2)
    assert rep1.prediction_axes == ["K"] and len(rep1.inplane_noise_lag1) == 2


def test_auto_axes_keep_the_slice_axis_for_anisotropic_voxels_and_report_why(phantom_pair, tiny_config):
    _, noisy = phantom_pair
    _, report = denoise(noisy, spacing=(3.0, 1.0, 1.0), config=tiny_config)
    assert report.prediction_axes == ["K"] and "not near-isotropic" in report.prediction_axes_reason
    steps = []
    denoise(
        noisy[:, :32, :32],
        spacing=(1.0, 1.0, 1.0),
        config=tiny_config.replace(inference={"axes": "all", "neighbour_fusion": "off"}),
        progress=lambda phase, step, total, loss: steps.append((phase, step, total)),
    )
    inference = [s for s in steps if s[0] == "inference"]
    # one count over the three axes and the Wiener stage's block rows
    assert inference[-1][1] == inference[-1][2] == 16 + 32 + 32 + wiener.row_count(16, tiny_config.inference.wiener)
    assert all(a[1] <= b[1] for a, b in zip(inference, inference[1:], strict=False))


def test_a_divergence_training_recovered_from_is_in_the_report_and_its_warnings(phantom_pair, tiny_config, monkeypatch):
    import dataclasses

    from NSN2NDenoiseLib import api, training

    real = training.train_network

    class Spiky(training.PatchSampler):
        def sample(self, ramp=1.0):
            batch = super().sample(ramp)
            self.draws = getattr(self, "draws", 0) + 1
            if self.draws == 25:
                return dataclasses.replace(batch, target=torch.full_like(batch.target, float("inf")))
            return batch

    def spiky(source, targets, cfg, device, progress=None, is_cancelled=None, init_state=None, on_recovery=None):
        t = cfg.training
        sampler = Spiky(source, targets, t.patch_size, t.batch_size, t.seed, device=device)
        return real(source, targets, cfg, device, progress, is_cancelled, sampler, init_state, on_recovery)

    monkeypatch.setattr(api, "train_network", spiky)
    _, noisy = phantom_pair
    out, report = denoise(noisy, config=tiny_config.replace(training={"iterations": 40}))
    assert np.all(np.isfinite(out))
    assert report.training_recoveries == [
        {"iteration": 30, "loss": None, "restored_iteration": 20, "learning_rate_scale": 0.5}
    ]
    assert [i for i, _ in report.loss_curve] == [10, 20, 40]
    assert "NaN" not in report.to_json() and "Infinity" not in report.to_json()
    assert any("Training diverged at iteration 30" in w and "iteration 20 were restored" in w for w in report.warnings)
    _, clean_report = denoise(noisy, config=tiny_config)
    assert clean_report.training_recoveries == [] and not any("diverged" in w for w in clean_report.warnings)
