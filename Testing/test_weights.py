import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from NSN2NDenoiseLib import CancelledError, make_config, weights
from NSN2NDenoiseLib.config import WeightConfig
from NSN2NDenoiseLib.normalization import IntensityMap, NormalizedSlices
from NSN2NDenoiseLib.weights import (
    body_mask,
    box_mean,
    compute_targets,
    cubic_target,
    gaussian_blur,
    interpolate,
    masked_median,
    match_maps,
    robust_std,
)

UNIT = IntensityMap(offset=0.0, scale=1.0)
CPU = torch.device("cpu")


def _disc(size: int = 48, radius: float = 21.0) -> np.ndarray:
    yy, xx = np.mgrid[:size, :size]
    return (((yy - size // 2) ** 2 + (xx - size // 2) ** 2) <= radius**2).astype(np.float64)


def _volume_with_square_in_one_slice(n: int = 7, noise: float = 0.01, seed: int = 0):
    """A disc body (0.5) with independent noise on every slice; a bright square (+0.3) in slice n // 2 only."""
    rng = np.random.default_rng(seed)
    body = 0.5 * _disc()
    vol = body[None] + noise * rng.standard_normal((n, *body.shape))
    square = np.zeros(body.shape, dtype=bool)
    square[18:28, 20:30] = True
    vol[n // 2][square] += 0.3
    return vol.astype(np.float32), square


def _far_body(square: np.ndarray) -> np.ndarray:
    far = np.ones_like(square)
    far[10:36, 12:38] = False  # away from the square and its filter footprint
    return far & (np.hypot(*np.mgrid[-24:24, -24:24]) < 18)


def test_weight_is_one_where_slices_match_and_zero_on_one_slice_structure():
    vol, square = _volume_with_square_in_one_slice()
    n, mid = vol.shape[0], vol.shape[0] // 2
    t = compute_targets(NormalizedSlices(vol, 0, UNIT), make_config(device="cpu"), CPU)
    assert t.weights.dtype == np.uint8 and t.weights.shape == vol.shape
    assert t.keep.dtype == np.uint8 and t.keep.shape == vol.shape
    assert t.pair_weights is None  # lambda_rc = 0
    assert not t.weights[0].any() and not t.weights[n - 1].any(), "the end slices have no target"
    far = _far_body(square)
    # The square is only in slice mid: x_mid differs from its target, and the cubic targets of mid +- 1 carry
    # the square with weight 4/3 * 1/2, so they differ from their slices too.
    for i in (mid - 1, mid, mid + 1):
        assert np.all(t.weights[i][square] == 0), i
    assert np.all(t.keep[mid][square] == 1), "strong one-slice structure is kept by the self term"
    for i in range(1, n - 1):
        assert t.weights[i][far].mean() > 0.9, i
        assert t.keep[i][far].mean() < 0.05, i
    # Slice 1 has a single neighbour on one side: its target is the 3-slice mean of slices 0 and 2, no square.
    assert t.weights[1][square].mean() > 0.9
    assert len(t.matched_per_slice) == n - 2
    assert t.matched_per_slice[mid - 1] < min(t.matched_per_slice[0], t.matched_per_slice[-1])
    assert 0.5 < t.matched_fraction < 1.0


def test_keep_map_is_every_unmatched_pixel_with_keep_factor_zero():
    vol, _ = _volume_with_square_in_one_slice(noise=0.03)
    src = NormalizedSlices(vol, 0, UNIT)
    all_unmatched = compute_targets(src, make_config(device="cpu", weights={"keep_factor": 0.0}), CPU)
    inner = slice(1, vol.shape[0] - 1)
    assert np.array_equal(all_unmatched.keep[inner], 1 - all_unmatched.weights[inner])
    strong = compute_targets(src, make_config(device="cpu", weights={"keep_factor": 8.0}), CPU)
    assert np.array_equal(strong.weights, all_unmatched.weights)
    assert np.all(strong.keep <= all_unmatched.keep) and strong.keep.sum() < all_unmatched.keep.sum()
    assert np.all(strong.keep + strong.weights <= 1), "a kept pixel is never a matched one"


def _structured_volume(n: int = 11, size: int = 24, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size] / size
    slices = [0.4 + 0.3 * np.sin(6 * yy + 0.4 * k) * np.cos(5 * xx - 0.3 * k) for k in range(n)]
    vol = np.stack(slices) + 0.02 * rng.standard_normal((n, size, size))
    vol[n // 2, 5:12, 4:9] += 0.5
    return vol.astype(np.float32)


@pytest.mark.parametrize("slab", [1, 2, 3, 4])
def test_slab_wise_maps_equal_the_whole_volume_computation(monkeypatch, slab):
    vol = _structured_volume()
    src = NormalizedSlices(vol, 0, UNIT)
    cfg = make_config(device="cpu", loss={"lambda_rc": 0.5})
    monkeypatch.setattr(weights, "SLAB", 1000)
    whole = compute_targets(src, cfg, CPU)
    monkeypatch.setattr(weights, "SLAB", slab)
    calls = []
    slabs = compute_targets(src, cfg, CPU, progress=lambda *a: calls.append(a))
    assert np.array_equal(whole.weights, slabs.weights)
    assert np.array_equal(whole.keep, slabs.keep)
    assert np.array_equal(whole.pair_weights, slabs.pair_weights)
    assert whole.matched_per_slice == pytest.approx(slabs.matched_per_slice, abs=1e-12)
    assert whole.matched_fraction == pytest.approx(slabs.matched_fraction, abs=1e-12)
    expected = math.ceil((vol.shape[0] - 2) / slab)
    assert calls == [("weights", k + 1, expected, None) for k in range(expected)]


def test_maps_equal_match_maps_of_each_slice_against_its_cubic_target():
    """The whole-volume computation written out by hand: slice i against interpolate(m1, m2) of its neighbours."""
    vol = _structured_volume(n=8)
    n = vol.shape[0]
    cfg = make_config(device="cpu", loss={"lambda_rc": 1.0})
    t = compute_targets(NormalizedSlices(vol, 0, UNIT), cfg, CPU)
    x = torch.from_numpy(vol)
    weights_by_hand, keep_by_hand, share, bodies = [], [], [], []
    for i in range(1, n - 1):
        lo, hi = max(0, i - 2), min(n - 1, i + 2)
        m1 = 0.5 * (x[i - 1] + x[i + 1])
        m2 = 0.5 * (x[lo] + x[hi])
        target = interpolate(m1, m2, 2 <= i <= n - 3)
        matched, kp, body = match_maps(x[i : i + 1], target[None], cfg.weights)
        weights_by_hand.append(matched[0].numpy())
        keep_by_hand.append(kp[0].numpy())
        share.append(float((matched & body).sum() / body.sum()))
        bodies.append(float(body.sum()))
    assert np.array_equal(t.weights[1:-1], np.stack(weights_by_hand))
    assert np.array_equal(t.keep[1:-1], np.stack(keep_by_hand))
    assert t.matched_per_slice == pytest.approx(share)
    assert t.matched_fraction == pytest.approx(sum(w * b for w, b in zip(share, bodies, strict=True)) / sum(bodies))
    pm, _, _ = match_maps(x[:-1], x[1:], cfg.weights)
    assert np.array_equal(t.pair_weights, pm.numpy())
    assert t.pair_weights.shape == (n - 1, *vol.shape[1:]) and t.pair_weights.dtype == np.uint8


def test_compute_targets_is_cancelled_between_slabs():
    vol = _structured_volume(n=6)
    with pytest.raises(CancelledError, match="cancelled while building weight maps"):
        compute_targets(NormalizedSlices(vol, 0, UNIT), make_config(device="cpu"), CPU, is_cancelled=lambda: True)


def test_three_slices_give_one_target():
    vol = _structured_volume(n=3)
    t = compute_targets(NormalizedSlices(vol, 0, UNIT), make_config(device="cpu"), CPU)
    assert len(t.matched_per_slice) == 1 and not t.weights[0].any() and not t.weights[2].any()


@pytest.mark.parametrize("power", [1, 2, 3])
def test_cubic_target_is_exact_for_cubic_change_along_the_slices(power):
    """The cubic interpolation equals x_i for intensity changing as a polynomial of degree <= 3 along the slices,
    on every slice with two neighbours on each side; slices 1 and N - 2 get the 3-slice mean."""
    n = 9
    z = torch.arange(n, dtype=torch.float32).view(n, 1, 1).expand(n, 4, 4)
    x = (z / 4.0) ** power
    padded = torch.cat([x[:1], x[:1], x, x[-1:], x[-1:]])  # rows -2 .. n + 1
    target = cubic_target(padded, 0, n)  # targets of slices 0 .. n - 1
    assert target.shape == x.shape
    assert torch.allclose(target[2 : n - 2], x[2 : n - 2], atol=1e-5)
    mean = 0.5 * (x[:-2] + x[2:])
    assert torch.allclose(target[1], mean[0]) and torch.allclose(target[n - 2], mean[-1])
    half = cubic_target(padded, 0, n, ramp=0.5)
    assert torch.allclose(half[2 : n - 2], 0.5 * (x[2 : n - 2] + 0.5 * (x[1 : n - 3] + x[3 : n - 1])), atol=1e-5)
    mean_error = (mean - x[1:-1])[1:-1].abs().max()
    assert (power == 1) == bool(mean_error < 1e-5)


def test_interpolate_ramps_from_the_mean_to_the_cubic():
    m1, m2 = torch.full((2, 2), 3.0), torch.full((2, 2), 6.0)
    cubic = 4.0 / 3.0 * 3.0 - 1.0 / 3.0 * 6.0  # 2.0
    assert torch.allclose(interpolate(m1, m2, True), torch.full((2, 2), cubic))
    assert torch.allclose(interpolate(m1, m2, True, 0.0), m1)
    assert torch.allclose(interpolate(m1, m2, True, 0.25), torch.full((2, 2), 3.0 - 0.25))
    assert torch.equal(interpolate(m1, m2, False, 1.0), m1)
    mixed = interpolate(m1.expand(2, 2, 2), m2.expand(2, 2, 2), torch.tensor([True, False]).view(2, 1, 1))
    assert torch.allclose(mixed[0], torch.full((2, 2), cubic)) and torch.equal(mixed[1], m1)


def test_filters_keep_constants():
    img = torch.full((2, 20, 20), 3.0)
    assert torch.allclose(gaussian_blur(img, 2.0), img)
    assert torch.allclose(box_mean(img, 5), img)
    assert torch.equal(box_mean(img, 1), img)


def _torch_blur(images: torch.Tensor, sigma: float) -> torch.Tensor:
    radius = max(1, int(math.ceil(3.0 * sigma)))
    coords = torch.arange(-radius, radius + 1, dtype=torch.float64)
    kernel = torch.exp(-0.5 * (coords / sigma) ** 2)
    kernel = kernel / kernel.sum()
    mode = "reflect" if radius < min(images.shape[-2:]) else "replicate"
    x = F.pad(images.double().unsqueeze(1), (radius, radius, radius, radius), mode=mode)
    x = F.conv2d(x, kernel.view(1, 1, 1, -1))
    x = F.conv2d(x, kernel.view(1, 1, -1, 1))
    return x.squeeze(1).float()


@pytest.mark.parametrize(
    "shape, sigma",
    [((2, 20, 23), 2.0), ((1, 9, 12), 1.0), ((1, 5, 30), 2.0), ((1, 3, 12), 1.0), ((1, 12, 3), 1.0), ((1, 8, 8), 0.3)],
)
def test_gaussian_blur_is_a_reflect_padded_truncated_gaussian(shape, sigma):
    img = torch.rand(shape, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(gaussian_blur(img, sigma), _torch_blur(img, sigma), atol=1e-5)


def _torch_box(images: torch.Tensor, window: int) -> torch.Tensor:
    r = window // 2
    mode = "reflect" if r < min(images.shape[-2:]) else "replicate"
    x = F.pad(images.double().unsqueeze(1), (r, r, r, r), mode=mode)
    return F.avg_pool2d(x, window, stride=1).squeeze(1).float()


@pytest.mark.parametrize("shape", [(2, 9, 11), (1, 2, 9), (1, 9, 2), (1, 3, 3)])
@pytest.mark.parametrize("window", [3, 5])
def test_box_mean_is_a_reflect_padded_window_mean(shape, window):
    img = torch.rand(shape, generator=torch.Generator().manual_seed(2))
    out = box_mean(img, window)
    assert out.shape == img.shape
    assert torch.allclose(out, _torch_box(img, window), atol=1e-5)


def test_box_mean_is_the_window_mean():
    img = torch.rand(1, 9, 9, generator=torch.Generator().manual_seed(1))
    out = box_mean(img, 3)
    assert torch.isclose(out[0, 4, 4], img[0, 3:6, 3:6].mean())
    assert torch.isclose(out[0, 0, 0], img[0, torch.tensor([1, 0, 1])][:, torch.tensor([1, 0, 1])].mean())


def test_body_mask_falls_back_to_the_whole_image_without_body():
    low = torch.zeros(2, 20, 20)
    low[0, 2:5, 2:5] = 1.0  # 9 pixels: > 1 %
    low[1, 0, 0] = 1.0  # 1 pixel: < 1 %
    mask = body_mask(low)
    assert mask[0].sum() == 9 and mask[1].all()


def test_masked_median_and_robust_std():
    values = torch.tensor([[1.0, 2.0, 3.0, 100.0, -7.0]]).view(1, 1, 5)
    mask = torch.tensor([[True, True, True, True, False]]).view(1, 1, 5)
    assert masked_median(values, mask).item() == 2.0  # lower median of 1, 2, 3, 100
    g = torch.Generator().manual_seed(0)
    noise = 0.2 * torch.randn(1, 100, 100, generator=g) + 5.0
    noise[0, :10] = 50.0  # outliers on 10 % of the pixels
    assert robust_std(noise, torch.ones_like(noise, dtype=torch.bool)).item() == pytest.approx(0.2, rel=0.2)


@pytest.mark.skipif(not hasattr(weights, "MEDIAN_PIXELS"), reason="exact medians only")
def test_masked_median_of_large_images_uses_a_quarter_of_the_pixels(monkeypatch):
    values = torch.arange(64, dtype=torch.float32).view(1, 8, 8)
    mask = torch.ones_like(values, dtype=torch.bool)
    exact = masked_median(values, mask).item()
    monkeypatch.setattr(weights, "MEDIAN_PIXELS", 63)
    sub = masked_median(values, mask).item()
    assert sub == values[:, ::2, ::2].flatten().median().item() and sub != exact
    monkeypatch.setattr(weights, "MEDIAN_PIXELS", 64)
    assert masked_median(values, mask).item() == exact, "64 pixels are not more than 64"
    for shape in ((1, 4, 32), (1, 32, 4)):  # 128 pixels, neither side squared is above 100
        values = torch.arange(128, dtype=torch.float32).view(shape)
        monkeypatch.setattr(weights, "MEDIAN_PIXELS", 100)
        assert masked_median(values, torch.ones_like(values, dtype=torch.bool)).item() == (
            values[:, ::2, ::2].flatten().median().item()
        )


def test_match_maps_low_pass_threshold_rises_with_noise():
    """The low-pass threshold is at least cfg.tau and rises to 3x the residual's robust spread: a +0.05 square
    is unmatched at weak noise, matched at strong noise (or with a larger tau)."""
    g = torch.Generator().manual_seed(0)
    cfg = WeightConfig(energy_factor=100.0, keep_factor=0.0)

    def pair(noise):
        x = 0.5 + noise * torch.randn(1, 32, 32, generator=g)
        t = 0.5 + noise * torch.randn(1, 32, 32, generator=g)
        t[0, 10:20, 10:20] += 0.05
        return x, t

    x, t = pair(0.01)
    matched, keep, body = match_maps(x, t, cfg)
    assert body.all()
    assert not matched[0, 13:17, 13:17].any() and keep[0, 13:17, 13:17].all()
    assert matched[0, :4, :4].all() and not keep[0, :4, :4].any()
    assert match_maps(x, t, WeightConfig(tau=0.2, energy_factor=100.0))[0].all()
    x, t = pair(0.2)
    assert match_maps(x, t, cfg)[0][0, 13:17, 13:17].all()


def test_match_maps_energy_test_rejects_strong_local_difference():
    g = torch.Generator().manual_seed(1)
    x = 0.5 + 0.02 * torch.randn(1, 32, 32, generator=g)
    t = 0.5 + 0.02 * torch.randn(1, 32, 32, generator=g)
    t[0, 14:18, 14:18] += torch.tensor([0.3, -0.3]).repeat(8).view(4, 4)  # zero-mean: no low-pass residual
    matched, keep, _ = match_maps(x, t, WeightConfig(tau=1.0, keep_factor=8.0))
    assert not matched[0, 15:17, 15:17].any() and keep[0, 15:17, 15:17].all()
    assert matched[0, :6, :6].float().mean() > 0.8


@pytest.mark.parametrize("keep_factor, energy_factor", [(0.0, 2.0), (0.5, 1.0), (8.0, 2.0)])
def test_match_maps_equal_their_formula(keep_factor, energy_factor):
    g = torch.Generator().manual_seed(3)
    x = 0.4 + 0.05 * torch.randn(2, 24, 24, generator=g)
    t = 0.4 + 0.05 * torch.randn(2, 24, 24, generator=g)
    t[:, 5:12, 6:10] += 0.2
    x[1, :, :3] = -0.2  # some background
    cfg = WeightConfig(energy_factor=energy_factor, keep_factor=keep_factor)
    matched, keep, body = match_maps(x, t, cfg)
    lx, lt = gaussian_blur(x, cfg.lowpass_sigma), gaussian_blur(t, cfg.lowpass_sigma)
    assert torch.equal(body, body_mask(torch.maximum(lx, lt)))
    r = lt - lx
    tau = torch.clamp(3.0 * robust_std(r, body), min=cfg.tau).view(-1, 1, 1)
    energy = box_mean((t - x) ** 2, cfg.energy_window)
    ref = masked_median(energy, body).view(-1, 1, 1)
    expected = (r.abs() <= tau) & (energy <= energy_factor * ref)
    assert torch.equal(matched, expected)
    expected_keep = ~expected & (energy > keep_factor * ref) if keep_factor > 0 else ~expected
    assert torch.equal(keep, expected_keep)
    assert 0 < matched.float().mean() < 1 and keep.any()
    if energy_factor == 1.0:
        assert (energy == ref).any() and matched[energy == ref].any(), "the median pixel itself matches"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_filters_and_maps_equal_the_cpu_ones():
    """The filters have a SciPy path on the CPU and a torch path on the GPU: both give the same values."""
    cuda = torch.device("cuda")
    img = torch.rand(3, 20, 23, generator=torch.Generator().manual_seed(0))
    for sigma in (1.0, 2.0):
        assert torch.allclose(gaussian_blur(img.to(cuda), sigma).cpu(), gaussian_blur(img, sigma), atol=1e-5)
    for window in (1, 3, 5):
        assert torch.allclose(box_mean(img.to(cuda), window).cpu(), box_mean(img, window), atol=1e-5)
    small = torch.rand(1, 3, 30)
    assert torch.allclose(gaussian_blur(small.to(cuda), 2.0).cpu(), gaussian_blur(small, 2.0), atol=1e-5)
    vol = _structured_volume()
    cfg = make_config(device="cpu", loss={"lambda_rc": 0.5})
    on_cpu = compute_targets(NormalizedSlices(vol, 0, UNIT), cfg, CPU)
    on_gpu = compute_targets(NormalizedSlices(vol, 0, UNIT), cfg, cuda)
    for name in ("weights", "keep", "pair_weights"):
        a, b = getattr(on_cpu, name), getattr(on_gpu, name)
        assert (a != b).mean() < 0.002, name  # float rounding may flip a pixel at a threshold


@pytest.mark.parametrize("shape", [(2, 20, 23), (1, 64, 64), (1, 5, 40), (3, 7, 6), (1, 3, 30)])
def test_torch_and_scipy_filters_agree_on_the_cpu(shape):
    """The torch path (used on GPUs) equals the SciPy path (used on CPUs), including the padding-mode switch on
    slices smaller than the filter, for several sigmas and windows: checked on CPU tensors so every machine runs it."""
    img = torch.rand(*shape, generator=torch.Generator().manual_seed(sum(shape)))
    for sigma in (0.6, 1.0, 2.0, 3.5):
        a = gaussian_blur(img, sigma, backend="torch")
        b = gaussian_blur(img, sigma, backend="scipy")
        assert a.shape == img.shape and a.dtype == img.dtype
        assert torch.allclose(a, b, atol=1e-5), sigma
    for window in (1, 3, 5, 7):
        a = box_mean(img, window, backend="torch")
        b = box_mean(img, window, backend="scipy")
        assert a.shape == img.shape
        assert torch.allclose(a, b, atol=1e-5), window
    # Not trivially equal: the filters change the images.
    assert not torch.allclose(gaussian_blur(img, 2.0, backend="torch"), img, atol=1e-3)
    assert not torch.allclose(box_mean(img, 5, backend="torch"), img, atol=1e-3)
