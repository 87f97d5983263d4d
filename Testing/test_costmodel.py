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
    for device in ("cpu", "cuda"):
        on = estimate(shape, CFG, device, bf16=False)
        off = estimate(shape, NET, device, bf16=False)
        assert on.seconds["inference"] - off.seconds["inference"] == pytest.approx(
            costmodel.WIENER_S_PER_VOXEL * voxels
        )
        assert on.seconds["training"] == off.seconds["training"] and on.seconds["weights"] == off.seconds["weights"]
        assert on.host_bytes == off.host_bytes
