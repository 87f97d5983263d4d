import pytest

from NSN2NDenoiseLib import ConfigError, NSN2NConfig, make_config


def test_presets_differ_and_validate():
    fast, default, best = (make_config(p) for p in ("fast", "default", "best"))
    assert fast.training.iterations < default.training.iterations < best.training.iterations
    assert best.inference.tta and not fast.inference.tta
    assert {c.preset for c in (fast, default, best)} == {"fast", "default", "best"}


def test_round_trip_through_dict():
    cfg = make_config("best", device="cpu", training={"iterations": 7}, weights={"soft": True})
    again = NSN2NConfig.from_dict(cfg.to_dict())
    assert again == cfg
    assert again.training.iterations == 7 and again.weights.soft


@pytest.mark.parametrize(
    "changes, field",
    [
        ({"training": {"iterations": 0}}, "training.iterations"),
        ({"training": {"iterations": 2.5}}, "training.iterations"),
        ({"loss": {"lambda_rc": -1.0}}, "loss.lambda_rc"),
        ({"weights": {"energy_window": 4}}, "weights.energy_window"),
        ({"weights": {"lowpass": "wavelet"}}, "weights.lowpass"),
        ({"device": "tpu"}, "config.device"),
        ({"slice_axis": "z"}, "config.slice_axis"),
        ({"training": {"patch_size": 36}, "network": {"depth": 3}}, "training.patch_size"),
        ({"inference": {"tta": "yes"}}, "inference.tta"),
        ({"loss": {"target": "cubic", "three_slice_weights": "product"}}, "loss.target"),
        ({"network": {"context_slices": 2}}, "network.context_slices"),
        ({"network": {"context_slices": 1}, "loss": {"target": "cubic"}}, "network.context_slices"),
        ({"network": {"context_slices": 1}, "loss": {"target": "three_slice", "lambda_rc": 0.5}}, "network.context"),
    ],
)
def test_bad_values_name_the_field(changes, field):
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        make_config("default", **changes)


@pytest.mark.parametrize("changes", [{"trainig": {}}, {"training": {"iters": 3}}, {"weights": {"sigma": 1}}])
def test_unknown_keys_are_errors(changes):
    with pytest.raises(ConfigError, match="unknown"):
        make_config("default", **changes)


def test_unknown_preset():
    with pytest.raises(ConfigError, match="preset"):
        make_config("ultra")


def test_frozen():
    cfg = make_config()
    with pytest.raises(AttributeError):
        cfg.device = "cpu"  # type: ignore[misc]
