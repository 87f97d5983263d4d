import math

import numpy as np
import pytest
import torch

from NSN2NDenoiseLib import CancelledError, make_config, training
from NSN2NDenoiseLib.normalization import IntensityMap, NormalizedSlices
from NSN2NDenoiseLib.training import (
    Batch,
    PatchSampler,
    autocast,
    build_network,
    dihedral,
    inverse_dihedral,
    target_ramp,
    train_network,
)
from NSN2NDenoiseLib.weights import TrainingTargets, compute_targets

CPU = torch.device("cpu")


@pytest.mark.parametrize("k", range(8))
def test_dihedral_is_inverted_exactly(k):
    x = torch.arange(2 * 3 * 4 * 4, dtype=torch.float32).view(2, 3, 4, 4)
    assert torch.equal(inverse_dihedral(dihedral(x, k), k), x)


def test_eight_dihedral_transforms_are_distinct_and_start_with_the_identity():
    x = torch.arange(9, dtype=torch.float32).view(1, 3, 3)
    assert len({tuple(dihedral(x, k).flatten().tolist()) for k in range(8)}) == 8
    assert torch.equal(dihedral(x, 0), x)
    assert torch.equal(dihedral(x, 4), x.flip(-1))
    assert torch.equal(dihedral(x, 1), torch.rot90(x, 1, dims=(-2, -1)))


def _np_dihedral(a: np.ndarray, k: int) -> np.ndarray:
    if k >= 4:
        a = a[..., ::-1]
    return np.rot90(a, k % 4, axes=(-2, -1))


def _random_problem(n=7, h=12, w=14, seed=0, pairs=True):
    """Slices that differ from each other and are not spatially constant; maps of independent random bits."""
    rng = np.random.default_rng(seed)
    vol = rng.normal(100.0, 30.0, (n, h, w)).astype(np.float32)
    imap = IntensityMap(offset=50.0, scale=200.0)
    targets = TrainingTargets(
        weights=rng.integers(0, 2, (n, h, w), dtype=np.uint8),
        keep=rng.integers(0, 2, (n, h, w), dtype=np.uint8),
        pair_weights=rng.integers(0, 2, (n - 1, h, w), dtype=np.uint8) if pairs else None,
        matched_fraction=0.5,
        matched_per_slice=[0.5] * (n - 2),
    )
    return vol, imap, targets


@pytest.mark.parametrize("ramp", [1.0, 0.3])
def test_sampler_batch_equals_values_computed_by_hand(ramp):
    """Every field of a Batch against its definition, crop and flip/rotation computed here from the draws of the
    same seed: catches crossed fields (x/target, weights/keep), maps not rotated with their slices, and wrong
    neighbours in the target."""
    vol, imap, targets = _random_problem()
    n, h, w = vol.shape
    p, b, seed = 8, 24, 5
    sampler = PatchSampler(NormalizedSlices(vol, 0, imap), targets, p, b, seed, need_next=True)
    batch = sampler.sample(ramp)
    rng = np.random.default_rng(seed)
    centres = rng.integers(1, n - 1, b)
    ys, xs, ks = rng.integers(0, h - p + 1, b), rng.integers(0, w - p + 1, b), rng.integers(0, 8, b)
    assert len(set(ks.tolist())) > 4 and {1, n - 2} <= set(centres.tolist())
    norm = ((vol.astype(np.float64) - imap.offset) / imap.scale).astype(np.float64)
    for field in ("x", "target", "weights", "keep", "x_next", "pair_weights"):
        value = getattr(batch, field)
        assert value.shape == (b, 1, p, p) and value.dtype == torch.float32, field
    for j, (i, y, x, k) in enumerate(zip(centres, ys, xs, ks, strict=True)):

        def crop(a, i=i, y=y, x=x, k=k):
            return _np_dihedral(a[i, y : y + p, x : x + p].astype(np.float64), k)

        m1 = 0.5 * (norm[i - 1] + norm[i + 1])
        if 2 <= i <= n - 3:
            cubic = 4.0 / 3.0 * m1 - 1.0 / 3.0 * (0.5 * (norm[i - 2] + norm[i + 2]))
            target = m1 + ramp * (cubic - m1)
        else:
            target = m1
        expected = {
            "x": crop(norm),
            "target": crop(target[None], i=0),
            "weights": crop(targets.weights),
            "keep": crop(targets.keep),
            "x_next": crop(norm, i=i + 1),
            "pair_weights": crop(targets.pair_weights),
        }
        for field, value in expected.items():
            got = getattr(batch, field)[j, 0].numpy()
            assert np.allclose(got, value, atol=1e-5), (field, j, int(i), int(k))


def test_sampler_without_next_slice_and_without_pair_maps():
    vol, imap, targets = _random_problem(pairs=False)
    src = NormalizedSlices(vol, 0, imap)
    batch = PatchSampler(src, targets, 8, 3, 0).sample()
    assert batch.x_next is None and batch.pair_weights is None
    batch = PatchSampler(src, targets, 8, 3, 0, need_next=True).sample()
    assert batch.x_next is not None and batch.pair_weights is None


def test_sampler_clips_the_patch_to_the_slice_and_repeats_with_its_seed():
    vol, imap, targets = _random_problem(h=10, w=13)
    src = NormalizedSlices(vol, 0, imap)
    a = PatchSampler(src, targets, 64, 4, 3).sample()
    assert a.x.shape == (4, 1, 10, 10)
    b = PatchSampler(src, targets, 64, 4, 3).sample()
    assert torch.equal(a.x, b.x) and torch.equal(a.weights, b.weights)
    c = PatchSampler(src, targets, 64, 4, 4).sample()
    assert not torch.equal(a.x, c.x)
    vol, imap, targets = _random_problem(h=13, w=10)
    assert PatchSampler(NormalizedSlices(vol, 0, imap), targets, 64, 2, 0).sample().x.shape == (2, 1, 10, 10)


def test_sampler_default_is_the_full_cubic_target():
    vol, imap, targets = _random_problem(n=9)
    src = NormalizedSlices(vol, 0, imap)
    assert torch.equal(
        PatchSampler(src, targets, 8, 6, 1).sample().target, PatchSampler(src, targets, 8, 6, 1).sample(1.0).target
    )
    assert not torch.equal(
        PatchSampler(src, targets, 8, 6, 1).sample().target, PatchSampler(src, targets, 8, 6, 1).sample(0.5).target
    )


def test_build_network_follows_the_configuration():
    cfg = make_config(network={"depth": 1, "width": 8}, training={"patch_size": 32})
    net = build_network(cfg)
    assert net.depth == 1 and net.head.in_channels == 8 and net.head.out_channels == 1 and net.residual


def test_autocast_runs_bf16_when_enabled():
    a = torch.rand(4, 4)
    with autocast(CPU, True):
        assert torch.mm(a, a).dtype == torch.bfloat16
    with autocast(CPU, False):
        assert torch.mm(a, a).dtype == torch.float32


def test_target_ramp_moves_from_mean_to_interpolation():
    assert target_ramp(1, 1000, 0.2) == pytest.approx(1 / 200)
    assert target_ramp(100, 1000, 0.2) == pytest.approx(0.5)
    assert target_ramp(200, 1000, 0.2) == 1.0 and target_ramp(900, 1000, 0.2) == 1.0
    assert target_ramp(1, 1000, 0.0) == 1.0


def _smooth_volume(n=8, size=32, seed=0):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size] / size
    clean = np.stack([0.5 + 0.3 * np.sin(5 * yy + 0.2 * k) * np.cos(4 * xx) for k in range(n)])
    return (clean + 0.1 * rng.standard_normal(clean.shape)).astype(np.float32)


def _problem(cfg, vol=None):
    vol = _smooth_volume() if vol is None else vol
    src = NormalizedSlices(vol, 0, IntensityMap(0.0, 1.0))
    return src, compute_targets(src, cfg, CPU)


def test_training_lowers_the_loss_and_logs_every_ten_iterations():
    cfg = make_config("fast", device="cpu", training={"iterations": 60, "batch_size": 4, "patch_size": 16})
    src, targets = _problem(cfg)
    calls = []
    net, curve = train_network(src, targets, cfg, CPU, progress=lambda *a: calls.append(a))
    assert [s for s, _ in curve] == list(range(10, 61, 10))
    assert curve[-1][1] < curve[0][1]
    assert [c[:3] for c in calls] == [("training", s, 60) for s in range(10, 61, 10)]
    assert calls[-1][3] == pytest.approx(curve[-1][1])
    assert not net.training


def test_regional_consistency_and_interslice_continuity_are_trained():
    cfg = make_config(
        "fast",
        device="cpu",
        loss={"lambda_rc": 0.5, "lambda_ic": 1.0},
        training={"iterations": 7, "batch_size": 2, "patch_size": 16},
    )
    src, targets = _problem(cfg)
    assert targets.pair_weights is not None and targets.pair_weights.shape == (7, 32, 32)
    assert 0 < targets.pair_weights.mean() <= 1
    _, curve = train_network(src, targets, cfg, CPU)
    assert [s for s, _ in curve] == [7] and math.isfinite(curve[-1][1])


@pytest.mark.parametrize("lambdas", [(0.5, 1.0), (0.5, 0.0), (0.0, 1.0), (0.0, 0.0)])
def test_each_loss_term_gets_the_network_output_of_its_own_input(monkeypatch, lambdas):
    """The fresh residual network is the identity: at the first step f(x_i) = x_i, f(x_i+1) = x_i+1 and
    f((x_i + x_i+1) / 2) is their mean, so the outputs handed to the loss show which input each one came from."""
    lambda_rc, lambda_ic = lambdas
    cfg = make_config(
        "fast",
        device="cpu",
        loss={"lambda_rc": lambda_rc, "lambda_ic": lambda_ic},
        training={"iterations": 1, "batch_size": 3, "patch_size": 16},
    )
    src, targets = _problem(cfg)
    seen = []
    real = training.total_loss

    def spy(outputs, batch, lcfg):
        seen.append((outputs, batch, lcfg))
        return real(outputs, batch, lcfg)

    monkeypatch.setattr(training, "total_loss", spy)
    train_network(src, targets, cfg, CPU)
    ((outputs, batch, lcfg),) = seen
    assert lcfg == cfg.loss
    assert torch.allclose(outputs.out, batch.x, atol=1e-6)
    if lambda_rc > 0 or lambda_ic > 0:
        assert not torch.allclose(batch.x, batch.x_next)
        assert torch.allclose(outputs.out_next, batch.x_next, atol=1e-6)
    else:
        assert outputs.out_next is None and batch.x_next is None
    if lambda_ic > 0:
        assert torch.allclose(outputs.out_mid, 0.5 * (batch.x + batch.x_next), atol=1e-6)
    else:
        assert outputs.out_mid is None
    assert (batch.pair_weights is not None) == (lambda_rc > 0)


def test_training_uses_the_sampler_it_is_given_and_the_warmup_ramp():
    cfg = make_config(
        "fast", device="cpu", loss={"target_warmup": 0.5}, training={"iterations": 4, "batch_size": 2, "patch_size": 16}
    )
    src, targets = _problem(cfg)
    ramps = []

    class Recording(PatchSampler):
        def sample(self, ramp: float = 1.0) -> Batch:
            ramps.append(ramp)
            return super().sample(ramp)

    sampler = Recording(src, targets, 16, 2, 0)
    train_network(src, targets, cfg, CPU, sampler=sampler)
    assert ramps == pytest.approx([0.5, 1.0, 1.0, 1.0])


def test_curve_is_the_mean_loss_of_each_ten_iterations_and_cpu_training_is_float32(monkeypatch):
    cfg = make_config("fast", device="cpu", training={"iterations": 23, "batch_size": 1, "patch_size": 16})
    src, targets = _problem(cfg)
    totals = []
    real = training.total_loss

    def spy(outputs, batch, lcfg):
        out = real(outputs, batch, lcfg)
        totals.append(float(out["total"].detach()))
        return out

    monkeypatch.setattr(training, "total_loss", spy)
    _, curve = train_network(src, targets, cfg, CPU)
    expected = [(10, np.mean(totals[:10])), (20, np.mean(totals[10:20])), (23, np.mean(totals[20:]))]
    assert [s for s, _ in curve] == [s for s, _ in expected]
    assert [v for _, v in curve] == pytest.approx([v for _, v in expected], rel=1e-5)
    monkeypatch.setattr(training, "total_loss", real)
    _, other = train_network(src, targets, cfg.replace(training={"mixed_precision": False}), CPU)
    assert other == curve, "mixed precision is for CUDA only: CPU training stays float32"


def test_same_seed_same_network_and_curve():
    cfg = make_config("fast", device="cpu", training={"iterations": 3, "batch_size": 2, "patch_size": 16})
    src, targets = _problem(cfg)
    a, ca = train_network(src, targets, cfg, CPU)
    b, cb = train_network(src, targets, cfg, CPU)
    assert ca == cb
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))


def _record_adam_rates(monkeypatch) -> list[float]:
    """The learning rate of every Adam step taken from now on, in order."""
    lrs: list[float] = []
    real_step = torch.optim.Adam.step

    def step(self, *args, **kwargs):
        lrs.append(self.param_groups[0]["lr"])
        return real_step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.Adam, "step", step)
    return lrs


def test_learning_rate_decays_by_a_cosine_to_its_final_fraction(monkeypatch):
    cfg = make_config(
        "fast",
        device="cpu",
        training={"iterations": 4, "batch_size": 1, "patch_size": 16, "learning_rate": 0.01, "final_lr_fraction": 0.1},
    )
    src, targets = _problem(cfg)
    lrs = _record_adam_rates(monkeypatch)
    train_network(src, targets, cfg, CPU)
    expected = [0.01 * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * s / 4))) for s in range(4)]
    assert lrs == pytest.approx(expected)


def test_training_can_be_cancelled():
    cfg = make_config("fast", device="cpu", training={"iterations": 50, "batch_size": 2, "patch_size": 16})
    src, targets = _problem(cfg)
    steps = []
    with pytest.raises(CancelledError, match="Training was cancelled"):
        train_network(src, targets, cfg, CPU, progress=lambda *a: steps.append(a[1]), is_cancelled=lambda: bool(steps))
    assert steps == [10]


class _Spiky:
    """A PatchSampler whose batches at the given (1-based) draws get a target far from the input (or NaN)."""

    def __init__(self, inner, spikes, value=1e4):
        self.inner, self.spikes, self.value, self.draws = inner, set(spikes), value, 0

    def sample(self, ramp=1.0):
        import dataclasses

        self.draws += 1
        batch = self.inner.sample(ramp)
        if self.draws in self.spikes:
            bad = torch.full_like(batch.target, self.value)
            return dataclasses.replace(batch, target=bad, weights=torch.ones_like(batch.weights))
        return batch


def _guard_problem(iterations):
    cfg = make_config(
        "fast",
        device="cpu",
        training={"iterations": iterations, "batch_size": 2, "patch_size": 16, "final_lr_fraction": 1.0},
        loss={"target_warmup": 0.0},
    )
    src, targets = _problem(cfg)
    return cfg, src, targets, PatchSampler(src, targets, 16, 2, cfg.training.seed)


def test_a_spike_restores_the_last_kept_weights_halves_the_rate_and_is_reported():
    cfg, src, targets, inner = _guard_problem(30)
    seen = []
    net, curve = train_network(src, targets, cfg, CPU, sampler=_Spiky(inner, range(21, 31)), on_recovery=seen.append)
    assert [s for s, _ in curve] == [10, 20]  # the spiking window is not recorded
    assert len(seen) == 1 and seen[0].iteration == 30 and seen[0].restored_iteration == 20
    assert seen[0].learning_rate_scale == 0.5 and seen[0].loss > training.SPIKE_FACTOR * min(v for _, v in curve)
    # Constant rate, no warm-up: the restored network is the one 20 plain iterations give.
    cfg20, _, _, inner20 = _guard_problem(20)
    ref, ref_curve = train_network(src, targets, cfg20, CPU, sampler=inner20)
    assert ref_curve == curve
    for p, q in zip(net.state_dict().values(), ref.state_dict().values(), strict=True):
        assert torch.equal(p, q)


def test_after_a_recovery_training_goes_on_at_half_the_rate(monkeypatch):
    cfg, src, targets, inner = _guard_problem(40)
    lrs = _record_adam_rates(monkeypatch)
    seen = []
    _, curve = train_network(src, targets, cfg, CPU, sampler=_Spiky(inner, [15], float("nan")), on_recovery=seen.append)
    assert [(r.iteration, r.restored_iteration) for r in seen] == [(20, 10)] and math.isnan(seen[0].loss)
    assert [s for s, _ in curve] == [10, 30, 40]
    base = cfg.training.learning_rate
    assert lrs[:20] == pytest.approx([base] * 20) and lrs[20:] == pytest.approx([base / 2] * 20)


def test_a_run_that_never_spikes_is_unchanged_by_the_guard():
    cfg, src, targets, inner = _guard_problem(30)
    seen = []
    a, ca = train_network(src, targets, cfg, CPU, sampler=inner, on_recovery=seen.append)
    _, _, _, inner_b = _guard_problem(30)
    b, cb = train_network(src, targets, cfg, CPU, sampler=_Spiky(inner_b, []))
    assert seen == [] and ca == cb and len(ca) == 3
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))


def test_training_that_keeps_diverging_stops_with_a_clear_error():
    from NSN2NDenoiseLib.errors import TrainingDivergedError, exit_code

    cfg, src, targets, inner = _guard_problem(100)
    seen = []
    message = r"diverged 4 times .* even at 1/8 of the learning rate; no result was produced\. Use a smaller training\."
    with pytest.raises(TrainingDivergedError, match=message) as info:
        train_network(src, targets, cfg, CPU, sampler=_Spiky(inner, range(11, 101)), on_recovery=seen.append)
    assert [r.learning_rate_scale for r in seen] == [0.5, 0.25, 0.125] == [0.5**k for k in (1, 2, 3)]
    assert [r.restored_iteration for r in seen] == [10, 10, 10] and training.MAX_RECOVERIES == 3
    assert exit_code(info.value) == 1


def test_a_non_finite_first_window_restores_the_start():
    cfg, src, targets, inner = _guard_problem(20)
    seen = []
    net, curve = train_network(
        src, targets, cfg, CPU, sampler=_Spiky(inner, [3], float("nan")), on_recovery=seen.append
    )
    assert [(r.iteration, r.restored_iteration, r.learning_rate_scale) for r in seen] == [(10, 0, 0.5)]
    assert [s for s, _ in curve] == [20]


def test_a_kept_state_can_be_restored_again_after_training_went_on_from_it():
    import copy

    cfg = make_config("fast", device="cpu", network={"width": 4, "depth": 1})
    net = build_network(cfg)
    opt = torch.optim.Adam(net.parameters(), lr=0.01)
    x = torch.randn(2, 1, 8, 8)

    def step():
        opt.zero_grad()
        (net(x) - 1.0).pow(2).mean().backward()
        opt.step()

    step()
    kept = training._keep(net, opt)
    weights = copy.deepcopy(net.state_dict())
    moments = copy.deepcopy(opt.state_dict()["state"])
    for _ in range(2):
        training._restore(net, opt, kept)
        step()  # Adam updates its moments in place: they must not be the kept ones
    training._restore(net, opt, kept)
    for k, v in net.state_dict().items():
        assert torch.equal(v, weights[k])
    for i, st in opt.state_dict()["state"].items():
        for k, v in st.items():
            assert torch.equal(v, moments[i][k]), (i, k)


@pytest.mark.parametrize("factor, recovers", [(5.0, False), (8.0, False), (14.0, True), (40.0, True)])
def test_a_spike_is_a_window_mean_more_than_ten_times_the_lowest(monkeypatch, factor, recovers):
    """The healthy warm-up rise is < 2x; SPIKE_FACTOR = 10 separates it from a divergence."""
    cfg, src, targets, inner = _guard_problem(30)
    real = training.total_loss
    calls = []

    def scaled(outputs, batch, lcfg):
        out = real(outputs, batch, lcfg)
        calls.append(1)
        if 21 <= len(calls) <= 30:  # the third window's losses, `factor` times the first's scale or more
            out = {**out, "total": out["total"] * factor}
        return out

    monkeypatch.setattr(training, "total_loss", scaled)
    seen = []
    train_network(src, targets, cfg, CPU, sampler=inner, on_recovery=seen.append)
    assert training.SPIKE_FACTOR == 10.0
    assert bool(seen) is recovers
