import pytest

from NSN2NDenoiseLib import ConfigError, NSN2NConfig, make_config


def test_presets_differ_and_validate():
    fast, default, best = (make_config(p) for p in ("fast", "default", "best"))
    assert fast.training.iterations < default.training.iterations < best.training.iterations
    assert best.inference.tta == 8 and fast.inference.tta == 1
    assert best.network.width > default.network.width
    assert {c.preset for c in (fast, default, best)} == {"fast", "default", "best"}


def test_round_trip_through_dict():
    cfg = make_config("best", device="cpu", training={"iterations": 7}, weights={"keep_factor": 0.0})
    again = NSN2NConfig.from_dict(cfg.to_dict())
    assert again == cfg
    assert again.training.iterations == 7 and again.weights.keep_factor == 0.0


@pytest.mark.parametrize(
    "changes, field",
    [
        ({"training": {"iterations": 0}}, "training.iterations"),
        ({"training": {"iterations": 2.5}}, "training.iterations"),
        ({"training": {"mixed_precision": 1}}, "training.mixed_precision"),
        ({"loss": {"lambda_rc": -1.0}}, "loss.lambda_rc"),
        ({"loss": {"target_warmup": 1.5}}, "loss.target_warmup"),
        ({"weights": {"energy_window": 4}}, "weights.energy_window"),
        ({"weights": {"tau": "small"}}, "weights.tau"),
        ({"device": "tpu"}, "config.device"),
        ({"slice_axis": "z"}, "config.slice_axis"),
        ({"training": {"patch_size": 36}, "network": {"depth": 3}}, "training.patch_size"),
        ({"inference": {"tta": 3}}, "inference.tta"),
        ({"inference": {"tta": True}}, "inference.tta"),
        ({"inference": {"tta": "yes"}}, "inference.tta"),
    ],
)
def test_bad_values_name_the_field(changes, field):
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        make_config("default", **changes)


@pytest.mark.parametrize(
    "changes",
    [
        {"trainig": {}},
        {"training": {"iters": 3}},
        {"weights": {"sigma": 1}},
        # options removed from the engine stay removed
        {"weights": {"soft": True}},
        {"weights": {"lowpass": "gaussian"}},
        {"loss": {"target": "cubic"}},
        {"loss": {"symmetric": True}},
        {"network": {"residual": False}},
        {"network": {"context_slices": 1}},
        {"inference": {"safeguard": True}},
        {"normalization_percentiles": [1, 99]},
    ],
)
def test_unknown_keys_are_errors(changes):
    with pytest.raises(ConfigError, match="unknown"):
        make_config("default", **changes)


def test_section_must_be_a_mapping():
    with pytest.raises(ConfigError, match="mapping"):
        make_config("default", training=5)


def test_unknown_preset():
    with pytest.raises(ConfigError, match="preset"):
        make_config("ultra")
    with pytest.raises(ConfigError, match=r"config\.preset"):
        NSN2NConfig.from_dict({"preset": "ultra"})


def test_frozen():
    cfg = make_config()
    with pytest.raises(AttributeError):
        cfg.device = "cpu"  # type: ignore[misc]
