import pytest

from NSN2NDenoiseLib import costmodel, make_config
from NSN2NDenoiseLib.costmodel import PHASES, estimate, overall_fraction
from NSN2NDenoiseLib.errors import (
    EXIT_CANCELLED,
    EXIT_DEVICE,
    EXIT_FAILED,
    EXIT_INPUT,
    EXIT_OK,
    OUT_OF_MEMORY_ADVICE,
    CancelledError,
    ConfigError,
    DeviceError,
    InputError,
    NSN2NError,
    exit_code,
    explain,
)

CFG = make_config("default")
NET = CFG.replace(inference={"wiener": "off"})
"""The default without the Wiener stage: its inference time is the network's alone."""


def test_estimates_grow_linearly_with_voxels_and_iterations():
    a = estimate((10, 100, 100), CFG)
    b = estimate((20, 100, 100), CFG)
    # weights: a fixed cost plus a cost per voxel
    assert b.seconds["weights"] - a.seconds["weights"] == pytest.approx(costmodel.WEIGHTS_S_PER_VOXEL * 10 * 100 * 100)
    c = estimate((30, 100, 100), CFG)
    assert c.seconds["weights"] - b.seconds["weights"] == pytest.approx(b.seconds["weights"] - a.seconds["weights"])
    assert b.seconds["inference"] == pytest.approx(2 * a.seconds["inference"])
    assert b.seconds["training"] == pytest.approx(a.seconds["training"])
    assert b.host_bytes - a.host_bytes == costmodel.HOST_BYTES_PER_VOXEL * 10 * 100 * 100
    more = estimate((10, 100, 100), CFG.replace(training={"iterations": 3000}))
    assert more.seconds["training"] == pytest.approx(2 * a.seconds["training"])
    assert more.seconds["weights"] == a.seconds["weights"]
    assert a.total_seconds == pytest.approx(sum(a.seconds.values()))
    assert set(a.seconds) == set(PHASES)


def test_estimates_follow_width_tta_batch_precision_and_device():
    base = estimate((10, 64, 64), NET, bf16=False)
    wide = estimate((10, 64, 64), NET.replace(network={"width": 32}), bf16=False)
    assert wide.seconds["training"] == pytest.approx(4 * base.seconds["training"])
    tta1 = estimate((10, 64, 64), NET.replace(inference={"tta": 1}), bf16=False)
    assert base.seconds["inference"] == pytest.approx(8 * tta1.seconds["inference"])
    batch = estimate((10, 64, 64), NET.replace(training={"batch_size": 16}), bf16=False)
    assert batch.seconds["training"] == pytest.approx(2 * base.seconds["training"])
    fast = estimate((10, 64, 64), NET, bf16=True)
    assert fast.seconds["inference"] < base.seconds["inference"]
    off = estimate((10, 64, 64), NET.replace(training={"mixed_precision": False}), bf16=True)
    assert off.seconds["inference"] == pytest.approx(base.seconds["inference"])
    gpu = estimate((10, 64, 64), NET, "cuda", bf16=False)
    for phase in PHASES:
        assert gpu.seconds[phase] == pytest.approx(base.seconds[phase] / costmodel.GPU_SPEEDUP)


def test_overall_fraction_is_monotone_and_reaches_one():
    est = estimate((40, 256, 256), CFG)
    values = [overall_fraction(p, s, 10, est) for p in PHASES for s in range(11)]
    assert values[0] == 0.0 and values[-1] == pytest.approx(1.0)
    assert all(b >= a for a, b in zip(values[:-1], values[1:], strict=True))
    assert overall_fraction("training", 0, 10, est) == pytest.approx(overall_fraction("weights", 10, 10, est))
    assert overall_fraction("unknown", 3, 10, est) == 0.0
    assert overall_fraction("inference", 20, 10, est) == pytest.approx(1.0)
    assert overall_fraction("training", 0, 0, est) == overall_fraction("training", 5, 0, est)
    # the share of a phase is its predicted time
    w = est.seconds
    assert overall_fraction("weights", 10, 10, est) == pytest.approx(w["weights"] / est.total_seconds)


@pytest.mark.parametrize(
    "exc, code",
    [
        (None, EXIT_OK),
        (CancelledError("x"), EXIT_CANCELLED),
        (KeyboardInterrupt(), EXIT_CANCELLED),
        (DeviceError("x"), EXIT_DEVICE),
        (MemoryError(), EXIT_DEVICE),
        (InputError("x"), EXIT_INPUT),
        (ConfigError("x"), EXIT_INPUT),
        (NSN2NError("x"), EXIT_FAILED),
        (RuntimeError("x"), EXIT_FAILED),
    ],
)
def test_exit_code_table(exc, code):
    assert exit_code(exc) == code


def test_exit_codes_are_distinct():
    assert len({EXIT_OK, EXIT_FAILED, EXIT_INPUT, EXIT_DEVICE, EXIT_CANCELLED}) == 5 and EXIT_CANCELLED == 130


def test_explain_turns_errors_into_actionable_ones():
    e = InputError("bad")
    assert explain(e) is e
    assert isinstance(explain(KeyboardInterrupt()), CancelledError)
    oom = explain(RuntimeError("CUDA out of memory. Tried to allocate"))
    assert isinstance(oom, DeviceError) and OUT_OF_MEMORY_ADVICE in str(oom)
    assert isinstance(explain(MemoryError()), DeviceError)
    other = explain(ValueError("boom"))
    assert type(other) is NSN2NError and "ValueError" in str(other) and "boom" in str(other)


def test_inference_time_counts_the_axes_auto_may_use():
    no_fusion = NET.replace(inference={"neighbour_fusion": "off"})
    iso = estimate((10, 64, 64), no_fusion, bf16=False, spacing_kji=(1.0, 1.0, 1.0))
    aniso = estimate((10, 64, 64), no_fusion, bf16=False, spacing_kji=(3.0, 1.0, 1.0))
    unknown = estimate((10, 64, 64), no_fusion, bf16=False)
    assert iso.seconds["inference"] == pytest.approx(3 * aniso.seconds["inference"])
    assert unknown.seconds["inference"] == pytest.approx(aniso.seconds["inference"])
    single = estimate((10, 64, 64), NET.replace(inference={"axes": "slice"}), bf16=False, spacing_kji=(1, 1, 1))
    assert single.seconds["inference"] == pytest.approx(aniso.seconds["inference"])
    assert iso.seconds["training"] == pytest.approx(aniso.seconds["training"])


def test_the_neighbour_network_doubles_training_and_adds_one_pass_where_it_applies():
    """'auto' trains it where three axes are expected (near-isotropic voxels), 'on' everywhere, 'off' never."""
    iso, aniso = (1.0, 1.0, 1.0), (3.0, 1.0, 1.0)
    base = estimate((10, 64, 64), NET.replace(inference={"neighbour_fusion": "off"}), bf16=False, spacing_kji=aniso)
    auto = NET.replace(inference={"neighbour_fusion": "auto"})
    auto_iso = estimate((10, 64, 64), auto, bf16=False, spacing_kji=iso)
    auto_aniso = estimate((10, 64, 64), auto, bf16=False, spacing_kji=aniso)
    on_aniso = estimate((10, 64, 64), NET.replace(inference={"neighbour_fusion": "on"}), bf16=False, spacing_kji=aniso)
    assert auto_iso.seconds["training"] == pytest.approx(2 * base.seconds["training"])
    assert auto_iso.seconds["inference"] == pytest.approx(4 * base.seconds["inference"])  # three axes + g
    assert auto_aniso.seconds == pytest.approx(base.seconds)
    assert on_aniso.seconds["training"] == pytest.approx(2 * base.seconds["training"])
    assert on_aniso.seconds["inference"] == pytest.approx(2 * base.seconds["inference"])


def test_the_wiener_stage_adds_its_cpu_time_per_voxel_whatever_the_device():
    shape = (10, 64, 48)
    voxels = 10 * 64 * 48
    assert CFG.inference.wiener == "matched"
    for device in ("cpu", "cuda"):
        on = estimate(shape, CFG, device, bf16=False)
        off = estimate(shape, NET, device, bf16=False)
        assert on.seconds["inference"] - off.seconds["inference"] == pytest.approx(
            costmodel.WIENER_S_PER_VOXEL["matched"] * voxels
        )
        filters = estimate(shape, CFG.replace(inference={"wiener": "filters"}), device, bf16=False)
        assert filters.seconds["inference"] - off.seconds["inference"] == pytest.approx(
            costmodel.WIENER_S_PER_VOXEL["filters"] * voxels
        )
        assert costmodel.WIENER_S_PER_VOXEL["filters"] != costmodel.WIENER_S_PER_VOXEL["matched"]
        assert on.seconds["training"] == off.seconds["training"] and on.seconds["weights"] == off.seconds["weights"]
        assert on.host_bytes == off.host_bytes


def test_block_matching_is_counted_as_its_two_white_noise_passes_where_three_axes_may_run():
    shape, voxels = (10, 64, 48), 10 * 64 * 48
    off = NET.replace(inference={"neighbour_fusion": "off"})
    on = CFG.replace(inference={"neighbour_fusion": "off"})
    for spacing, kind in (((1.0, 1.0, 1.0), "matched_white"), ((3.0, 1.0, 1.0), "matched"), (None, "matched")):
        added = estimate(shape, on, spacing_kji=spacing).seconds["inference"]
        added -= estimate(shape, off, spacing_kji=spacing).seconds["inference"]
        assert added == pytest.approx(costmodel.WIENER_S_PER_VOXEL[kind] * voxels), spacing
        more = (
            estimate(shape, on, spacing_kji=spacing).host_bytes - estimate(shape, off, spacing_kji=spacing).host_bytes
        )
        assert more == (costmodel.NETWORK_FREE_BYTES_PER_VOXEL * voxels if kind == "matched_white" else 0), spacing
    assert costmodel.NETWORK_FREE_BYTES_PER_VOXEL == 4
    assert costmodel.WIENER_S_PER_VOXEL["matched_white"] > 1.5 * costmodel.WIENER_S_PER_VOXEL["matched"]
    filters = CFG.replace(inference={"neighbour_fusion": "off", "wiener": "filters"})
    added = estimate(shape, filters, spacing_kji=(1.0, 1.0, 1.0)).seconds["inference"]
    added -= estimate(shape, off, spacing_kji=(1.0, 1.0, 1.0)).seconds["inference"]
    assert added == pytest.approx(costmodel.WIENER_S_PER_VOXEL["filters"] * voxels)


def test_the_estimate_is_the_documented_model_in_absolute_seconds_and_bytes():
    """Every constant and factor at once, away from the defaults (width 32, batch 16, patch 32), where a ratio test
    cannot see a wrong absolute value."""
    shape = (30, 200, 100)
    voxels = 30 * 200 * 100
    cfg = CFG.replace(network={"width": 32}, training={"batch_size": 16, "patch_size": 32, "iterations": 700})
    est = estimate(shape, cfg)  # the default device and bf16: 'cpu' with native bf16
    width = (32 / 16) ** 2
    assert est.seconds["weights"] == pytest.approx(costmodel.WEIGHTS_S_FIXED + costmodel.WEIGHTS_S_PER_VOXEL * voxels)
    per_iteration = costmodel.TRAINING_S_PER_ITERATION * width * (16 / 8) * (32 / 64) ** 2
    assert est.seconds["training"] == pytest.approx(per_iteration * 700)
    network = costmodel.INFERENCE_S_PER_VOXEL_BF16 * width * voxels * 8
    assert est.seconds["inference"] == pytest.approx(network + costmodel.WIENER_S_PER_VOXEL["matched"] * voxels)
    assert est.host_bytes == int(costmodel.HOST_BYTES_PER_VOXEL * voxels + costmodel.HOST_BYTES_FIXED)
    fp32 = estimate(shape, cfg, bf16=False)
    network32 = costmodel.INFERENCE_S_PER_VOXEL_FP32 * width * voxels * 8
    assert fp32.seconds["inference"] == pytest.approx(network32 + costmodel.WIENER_S_PER_VOXEL["matched"] * voxels)


def test_overall_fraction_weighs_short_phases_by_their_own_time_and_handles_one_and_zero_steps():
    est = costmodel.Estimate(seconds={"weights": 2.0, "training": 6.0, "inference": 0.01}, host_bytes=0)
    total = 8.01
    assert overall_fraction("training", 10, 10, est) == pytest.approx(8.0 / total)  # a 0.01 s phase stays small
    assert overall_fraction("training", 1, 1, est) == pytest.approx(8.0 / total)  # one step: the phase is done
    assert overall_fraction("training", 0, 0, est) == pytest.approx(2.0 / total)  # no steps: nothing of it yet
    assert overall_fraction("inference", 1, 2, est) == pytest.approx((8.0 + 0.005) / total)
    assert overall_fraction("residual_check", 1, 1, est) == 0.0


def test_a_phase_the_estimate_lacks_counts_as_no_time():
    est = costmodel.Estimate(seconds={"weights": 1.0, "training": 3.0}, host_bytes=0)
    assert overall_fraction("training", 5, 5, est) == pytest.approx(1.0)
    assert overall_fraction("inference", 0, 5, est) == pytest.approx(1.0)
