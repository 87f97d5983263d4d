import pytest

from NSN2NDenoiseLib import ConfigError, make_config
from NSN2NDenoiseLib.config import PRESETS
from NSN2NDenoiseLib.options import BY_NAME, BY_SLICER_NAME, OPTIONS, from_config, to_config


def _field(cfg, option):
    value = cfg
    for part in option.field:
        value = getattr(value, part)
    return value


@pytest.mark.parametrize("preset", PRESETS)
def test_every_default_is_the_engine_configuration_value(preset):
    cfg = make_config(preset)
    for option in OPTIONS:
        expected = preset if not option.field else _field(cfg, option)
        assert option.default(preset) == expected, option.name
        assert type(option.default(preset)) is option.type, option.name


def test_names_are_unique_and_flags_follow_them():
    assert len(BY_NAME) == len(OPTIONS) == len(BY_SLICER_NAME)
    assert BY_NAME["slice_axis"].flag == "--slice-axis" and BY_NAME["lambda_self"].flag == "--lambda-self"


@pytest.mark.parametrize("option", OPTIONS, ids=lambda o: o.name)
def test_bounds_and_choices_agree_with_the_engine(option):
    if option.choices:
        for value in option.choices:
            to_config({option.name: value})
        assert option.low is None and option.high is None
    else:
        to_config({option.name: option.type(option.low)})
        to_config({option.name: option.type(option.high)})
        with pytest.raises(ConfigError):
            to_config({option.name: option.type(option.high) * 2 + 1})


@pytest.mark.parametrize("preset", PRESETS)
def test_to_config_round_trips_with_from_config(preset):
    cfg = make_config(
        preset,
        device="cpu",
        slice_axis="j",
        training={"iterations": 33, "seed": 4, "threads": 2},
        loss={"lambda_rc": 0.25, "lambda_ic": 0.5, "lambda_self": 1.5},
        inference={"tta": 2, "axes": "slice"},
    )
    values = from_config(cfg)
    assert set(values) == set(BY_NAME)
    assert to_config(values) == cfg
    assert from_config(to_config(values)) == values


def test_to_config_applies_the_preset_first_and_keeps_none_values():
    cfg = to_config({"iterations": 7, "preset": "best", "tta": None})
    assert cfg.preset == "best" and cfg.training.iterations == 7
    assert cfg.inference.tta == make_config("best").inference.tta
    assert to_config({}) == make_config()
    base = make_config("fast")
    assert to_config({"seed": 3}, base=base) == base.replace(training={"seed": 3})
    assert to_config({"iterations": 12.0}).training.iterations == 12


@pytest.mark.parametrize("values", [{"iteration": 5}, {"target": "cubic"}, {"safeguard": True}, {"soft": True}])
def test_unknown_options_raise(values):
    with pytest.raises(ConfigError, match="unknown option"):
        to_config(values)


def test_bad_values_raise():
    with pytest.raises(ConfigError):
        to_config({"tta": 3})
    with pytest.raises(ConfigError):
        to_config({"iterations": 0})
    with pytest.raises(ConfigError):
        to_config({"preset": "ultra"})
