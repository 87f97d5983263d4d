"""The neighbour network (docs/METHOD.md section 5): it never sees the slice it predicts, starts as the cubic
interpolation of the neighbours, is blended into the output with FUSION_WEIGHT where 'auto' says so, and the run
report and progress say what was done."""

import numpy as np
import pytest
import torch

from NSN2NDenoiseLib import CancelledError, denoise
from NSN2NDenoiseLib.inference import use_bf16
from NSN2NDenoiseLib.neighbours import (
    FUSION_WEIGHT,
    NeighbourSampler,
    blend_into,
    build_neighbour_network,
    fusion_applies,
    neighbour_config,
    neighbour_rows,
    network_input,
    train_neighbour_network,
)
from NSN2NDenoiseLib.normalization import IntensityMap, NormalizedSlices, fit_intensity_map
from NSN2NDenoiseLib.phantom import make_phantom


def test_the_neighbours_are_two_on_each_side_mirrored_at_the_ends_and_never_the_slice_itself():
    assert neighbour_rows(5, 10) == [3, 4, 6, 7]
    assert neighbour_rows(0, 10) == [2, 1, 1, 2]
    assert neighbour_rows(1, 10) == [3, 0, 2, 3]
    assert neighbour_rows(8, 10) == [6, 7, 9, 6]
    assert neighbour_rows(9, 10) == [7, 8, 8, 7]
    assert neighbour_rows(1, 3) == [2, 0, 2, 0]
    for n in (3, 4, 5, 8):
        for i in range(n):
            rows = neighbour_rows(i, n)
            assert i not in rows and all(0 <= r < n for r in rows)
    with pytest.raises(ValueError, match="at least 3"):
        neighbour_rows(0, 2)


def test_the_network_has_the_configured_depth_and_width(tiny_config):
    net = build_neighbour_network(tiny_config.replace(network={"depth": 1, "width": 8}))
    assert net.depth == 1 and len(net.encoders) == 1
    assert net.encoders[0][0].in_channels == 5 and net.encoders[0][0].out_channels == 8 and net.head.out_channels == 1


def test_the_network_starts_as_the_cubic_interpolation_of_the_neighbours(tiny_config):
    rng = np.random.default_rng(0)
    nb = torch.from_numpy(rng.normal(size=(2, 4, 16, 16)).astype(np.float32))
    x = network_input(nb)
    a, b, c, d = nb.unbind(1)
    torch.testing.assert_close(x[:, 2], (-a + 4 * b + 4 * c - d) / 6)
    torch.testing.assert_close(x[:, [0, 1, 3, 4]], nb)
    net = build_neighbour_network(tiny_config)
    with torch.no_grad():
        torch.testing.assert_close(net(x)[:, :1], x[:, 2:3])


def _index_volume(n=9, h=20, w=24):
    """Slice k holds the value k + 0.01 * column: a slice is recognisable by its values."""
    vol = np.arange(n, dtype=np.float32)[:, None, None] + 0.01 * np.arange(w, dtype=np.float32)[None, None, :]
    return np.broadcast_to(vol, (n, h, w)).copy()


def test_the_sampler_feeds_the_neighbours_and_targets_the_slice_itself():
    source = NormalizedSlices(_index_volume(), 0, IntensityMap(offset=0.0, scale=1.0))
    sampler = NeighbourSampler(source, patch=16, batch=16, seed=3, device=torch.device("cpu"))
    batch = sampler.sample()
    assert batch.x.shape == (16, 5, 16, 16) and batch.target.shape == (16, 1, 16, 16)
    slice_of = torch.floor(batch.x[:, :, 0, 0] + 1e-3)  # the slice index each channel came from (any transform)
    centre = torch.floor(batch.target[:, 0].amin(dim=(-2, -1)) + 1e-3)
    assert torch.all((centre >= 2) & (centre <= 6))  # two neighbours on each side
    offsets = torch.stack([slice_of[:, c] - centre for c in (0, 1, 3, 4)], dim=1)
    # every pixel of a channel comes from one slice, and never from the target's
    for c in (0, 1, 3, 4):
        lo, hi = batch.x[:, c].amin(dim=(-2, -1)), batch.x[:, c].amax(dim=(-2, -1))
        assert torch.all(torch.floor(lo + 1e-3) == torch.floor(hi + 1e-3))
    assert torch.all(offsets == torch.tensor([-2.0, -1.0, 1.0, 2.0]))
    assert len(set(centre.tolist())) > 1  # the slice drawn varies (not always the same stack)
    assert torch.equal(batch.weights, torch.ones_like(batch.target))
    assert torch.equal(batch.keep, torch.zeros_like(batch.target))
    with pytest.raises(ValueError, match="at least 5"):
        NeighbourSampler(NormalizedSlices(_index_volume(4), 0, IntensityMap(0.0, 1.0)), 16, 2, 0, torch.device("cpu"))


def _code_volume(n, h, w):
    """Voxel (k, y, x) holds 10000 k + 100 y + x: a patch's minimum is its corner, whatever the transform."""
    k, y, x = np.meshgrid(np.arange(n), np.arange(h), np.arange(w), indexing="ij")
    return (10000.0 * k + 100.0 * y + x).astype(np.float32)


def test_the_sampler_draws_every_slice_position_and_transform_and_clips_the_patch_to_the_slice():
    n, h, w = 5, 12, 40  # 5 slices: only slice 2 has two neighbours on each side
    source = NormalizedSlices(_code_volume(n, h, w), 0, IntensityMap(offset=0.0, scale=1.0))
    sampler = NeighbourSampler(source, patch=16, batch=256, seed=0, device=torch.device("cpu"))
    assert sampler.size == 12  # min(patch, h, w)
    batch = sampler.sample()
    assert batch.target.shape == (256, 1, 12, 12)
    corner = batch.target.amin(dim=(1, 2, 3))
    slices, rows, cols = corner // 10000, (corner % 10000) // 100, corner % 100
    assert set(slices.tolist()) == {2}
    assert set(rows.tolist()) == {0} and set(cols.tolist()) == set(range(0, w - 12 + 1))
    t = batch.target[:, 0]
    identity = (t[:, 0, 0] == corner) & (t[:, 0, 1] == corner + 1) & (t[:, 1, 0] == corner + 100)
    assert identity.any() and not identity.all()  # the identity is one of the 8 transforms drawn
    wide = NeighbourSampler(
        NormalizedSlices(_code_volume(6, 40, 12), 0, IntensityMap(0.0, 1.0)), 16, 256, 1, torch.device("cpu")
    )
    corner = wide.sample().target.amin(dim=(1, 2, 3))
    assert set(((corner % 10000) // 100).tolist()) == set(range(0, 40 - 12 + 1))
    assert set((corner // 10000).tolist()) == {2, 3}


def test_its_loss_is_plain_noise2noise_on_every_pixel(tiny_config):
    cfg = neighbour_config(tiny_config.replace(loss={"lambda_self": 0.7, "lambda_rc": 0.5, "lambda_ic": 1.0}))
    assert (cfg.loss.lambda_self, cfg.loss.lambda_rc, cfg.loss.lambda_ic) == (0.0, 0.0, 0.0)
    assert cfg.training == tiny_config.training and cfg.network == tiny_config.network


THREE = "denoised along three axes (near-isotropic voxels, white in-plane noise)"
ONE = "denoised along the slice axis only (anisotropic voxels or in-plane correlated noise)"


@pytest.mark.parametrize(
    ("choice", "axes", "n", "applies", "why"),
    [
        ("auto", [0, 1, 2], 10, True, THREE),
        ("auto", [0], 10, False, ONE),
        ("on", [0], 10, True, "inference.neighbour_fusion = 'on'"),
        ("off", [0, 1, 2], 10, False, "inference.neighbour_fusion = 'off'"),
        ("on", [0, 1, 2], 4, False, "fewer than 5 slices along the slice axis"),
        ("auto", [0, 1, 2], 5, True, THREE),
    ],
)
def test_auto_follows_the_prediction_axes(choice, axes, n, applies, why):
    assert fusion_applies(choice, axes, n) == (applies, why)


class _Centre(torch.nn.Module):
    """A stand-in g: returns its middle input channel (the cubic interpolation) scaled by 2."""

    def forward(self, x):
        return 2.0 * x[:, 2:3]


@pytest.mark.parametrize("tta", [1, 8])
def test_the_blend_is_one_minus_the_weight_of_f_plus_the_weight_of_g_in_the_input_units(tta):
    vol = _index_volume(7, 12, 12)
    imap = IntensityMap(offset=10.0, scale=4.0)
    source = NormalizedSlices(vol * 4.0 + 10.0, 0, imap)  # normalised: the index volume
    f = np.full(vol.shape, 50.0, dtype=np.float32)
    out = f.copy()
    seen = []
    blend_into(_Centre(), source, out, tta, torch.device("cpu"), progress=seen.append)
    q = np.stack(
        [
            (-vol[a] + 4 * vol[b] + 4 * vol[c] - vol[d]) / 6
            for a, b, c, d in map(lambda i: neighbour_rows(i, 7), range(7))
        ]
    )
    g = 2.0 * q * 4.0 + 10.0
    np.testing.assert_allclose(out, (1 - FUSION_WEIGHT) * f + FUSION_WEIGHT * g, rtol=1e-5, atol=1e-4)
    assert seen == list(range(7))


def test_the_blend_stops_when_cancelled():
    source = NormalizedSlices(_index_volume(7, 12, 12), 0, IntensityMap(0.0, 1.0))
    out = np.zeros((7, 12, 12), dtype=np.float32)
    with pytest.raises(CancelledError, match="^Inference was cancelled; no result was produced.$"):
        blend_into(_Centre(), source, out, 1, torch.device("cpu"), is_cancelled=lambda: True)


def test_the_blend_runs_in_float32_unless_bf16_is_asked_for(tiny_config):
    torch.manual_seed(0)
    net = build_neighbour_network(tiny_config.replace(network={"width": 8}))
    torch.nn.init.normal_(net.head.weight, std=0.5)  # no longer the identity start
    net.eval()
    rng = np.random.default_rng(1)
    vol = rng.normal(size=(6, 16, 16)).astype(np.float32)
    source = NormalizedSlices(vol, 0, IntensityMap(0.0, 1.0))
    default, fp32, bf16 = (np.zeros_like(vol) for _ in range(3))
    blend_into(net, source, default, 1, torch.device("cpu"))
    blend_into(net, source, fp32, 1, torch.device("cpu"), bf16=False)
    blend_into(net, source, bf16, 1, torch.device("cpu"), bf16=True)
    np.testing.assert_array_equal(default, fp32)
    assert np.abs(bf16 - fp32).max() > 1e-4  # bf16 autocast is applied when asked for
    # with test-time augmentation, g is the mean over the transforms, each undone
    tta8 = np.zeros_like(vol)
    blend_into(net, source, tta8, 8, torch.device("cpu"))
    from NSN2NDenoiseLib.inference import TTA_ORDER
    from NSN2NDenoiseLib.training import dihedral, inverse_dihedral

    with torch.no_grad():
        for i in (0, 3):
            x = network_input(torch.from_numpy(vol[neighbour_rows(i, 6)])[None])
            g = torch.stack([inverse_dihedral(net(dihedral(x, k)), k) for k in TTA_ORDER]).mean(0)[0, 0].numpy()
            np.testing.assert_allclose(tta8[i], FUSION_WEIGHT * g, rtol=1e-4, atol=1e-5)
    assert np.abs(tta8 - fp32).max() > 1e-3  # not the identity transform alone


def _isotropic_pair():
    rng = np.random.default_rng(5)
    clean = make_phantom((10, 32, 32), seed=2)
    return (clean + rng.normal(0, 30.0, clean.shape)).astype(np.float32)


def test_a_run_trains_it_where_auto_says_and_blends_it_into_the_output(tiny_config):
    noisy = _isotropic_pair()
    cfg = tiny_config.replace(
        inference={"axes": "all", "tta": 2, "neighbour_fusion": "auto", "wiener": "off"}, training={"patch_size": 16}
    )
    steps = []
    out, report = denoise(noisy, config=cfg, progress=lambda *a: steps.append(a))
    off, report_off = denoise(noisy, config=cfg.replace(inference={"neighbour_fusion": "off"}))
    fusion = report.to_dict()["neighbour_fusion"]
    assert fusion["applied"] is True and fusion["weight"] == FUSION_WEIGHT and "three axes" in fusion["reason"]
    assert len(fusion["loss_curve"]) == 1 and fusion["recoveries"] == []
    assert report_off.neighbour_fusion["applied"] is False and report_off.neighbour_fusion["weight"] == 0.0
    # the output is (1 - w) f + w g, with f the run without it (same seed, same training of f)
    source = NormalizedSlices(noisy, 0, fit_intensity_map(noisy))
    t = cfg.training
    g, _ = train_neighbour_network(source, cfg, torch.device("cpu"))
    expected = off.copy()
    cpu = torch.device("cpu")
    blend_into(g, source, expected, cfg.inference.tta, cpu, use_bf16(cpu, cfg.training.mixed_precision))
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-3)
    assert not np.allclose(out, off, atol=1e-2)
    # one training count over both networks, one inference count over three axes and g's slices
    training = [s for s in steps if s[0] == "training"]
    assert training[-1][1] == training[-1][2] == 2 * t.iterations
    assert [s[1] for s in training] == sorted(s[1] for s in training)
    inference = [s for s in steps if s[0] == "inference"]
    assert inference[-1][1] == inference[-1][2] == 10 + 32 + 32 + 10


def test_it_is_off_by_default_and_auto_leaves_an_anisotropic_run_exactly_as_without_it(tiny_config):
    assert tiny_config.inference.neighbour_fusion == "off"
    _, report_default = denoise(_isotropic_pair(), config=tiny_config.replace(inference={"axes": "all"}))
    assert report_default.neighbour_fusion["applied"] is False and "'off'" in report_default.neighbour_fusion["reason"]
    noisy = _isotropic_pair()
    auto = tiny_config.replace(inference={"neighbour_fusion": "auto"})
    out, report = denoise(noisy, spacing=(3.0, 1.0, 1.0), config=auto)
    off, _ = denoise(noisy, spacing=(3.0, 1.0, 1.0), config=tiny_config)
    assert np.array_equal(out, off)
    assert report.neighbour_fusion["applied"] is False and "slice axis only" in report.neighbour_fusion["reason"]
