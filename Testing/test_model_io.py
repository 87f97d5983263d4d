"""Saving and loading a trained network (model_io), warm starts through denoise(init_model=...), and the command
line's --save-model / --init-from. Files that could run code, or whose tensors do not match their configuration,
must be refused with a message that says why."""

from __future__ import annotations

import json
import os
import pickle

import numpy as np
import pytest
import torch
from conftest import plumbing_config, require, smooth_noisy_volume

from NSN2NDenoiseLib import denoise, make_config
from NSN2NDenoiseLib.errors import EXIT_INPUT, ConfigError, InputError

safetensors_torch = require("safetensors.torch", "pip install safetensors, or .[cluster]")

from NSN2NDenoiseLib import model_io  # noqa: E402
from NSN2NDenoiseLib.training import build_network  # noqa: E402


@pytest.fixture(scope="module")
def trained():
    """(config, state, volume, output) of a short run on a small smooth volume."""
    cfg = plumbing_config(iterations=20)
    volume = smooth_noisy_volume(seed=1)
    out, _, state = denoise(volume, (3.0, 1.0, 1.0), cfg, return_model=True)
    return cfg, state, volume, out


def test_denoise_without_return_model_still_returns_a_pair(tiny_config):
    result = denoise(smooth_noisy_volume(), config=tiny_config)
    assert len(result) == 2


def test_round_trip_keeps_every_tensor_and_the_configuration(trained, tmp_path):
    cfg, state, _, _ = trained
    path = model_io.save_model(tmp_path / "m.safetensors", state, cfg, trained_on="vol.nrrd")
    saved = model_io.load_model(path)
    assert saved.config == cfg
    assert set(saved.state) == set(state)
    for name, tensor in state.items():
        assert torch.equal(saved.state[name], tensor), name
    assert saved.metadata["format"] == "nsn2n-model"
    assert saved.metadata["trained_on"] == "vol.nrrd"
    assert json.loads(saved.metadata["config"])["network"]["width"] == cfg.network.width
    assert [p.name for p in tmp_path.iterdir()] == ["m.safetensors"]  # no temporary file left behind


def test_warm_start_starts_from_the_saved_weights(trained):
    cfg, state, volume, trained_out = trained
    # One step at a negligible learning rate: the output is the starting network's.
    frozen = cfg.replace(training={"iterations": 1, "learning_rate": 1e-6})
    warm, _ = denoise(volume, (3.0, 1.0, 1.0), frozen, init_model=state)
    cold, _ = denoise(volume, (3.0, 1.0, 1.0), frozen)
    assert np.abs(warm - trained_out).max() < 0.05 * np.abs(trained_out - volume).max()
    # A cold start is the identity network (zero-initialised head): it returns its input.
    assert np.abs(cold - volume).max() < 1e-2 * np.abs(volume).max()
    assert np.abs(warm - volume).mean() > 10 * np.abs(cold - volume).mean()


def test_denoise_refuses_weights_of_another_network(trained):
    _, state, volume, _ = trained
    wider = plumbing_config(iterations=1).replace(network={"width": 16})
    with pytest.raises(ConfigError, match="network.width = 16"):
        denoise(volume, (3.0, 1.0, 1.0), wider, init_model=state)


def test_check_compatible_names_the_differing_field(trained, tmp_path):
    cfg, state, _, _ = trained
    saved = model_io.load_model(model_io.save_model(tmp_path / "m.safetensors", state, cfg))
    model_io.check_compatible(saved, cfg)
    with pytest.raises(ConfigError, match="network.depth = 2 in the model, 3 in this run"):
        model_io.check_compatible(saved, cfg.replace(network={"depth": 3}))


class _Payload:
    """Unpickling this would create a file: proof that the loader never unpickles."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.parametrize("kind", ["torch.save", "pickle"])
def test_a_pickle_is_refused_unread(trained, tmp_path, kind):
    _, state, _, _ = trained
    marker = tmp_path / "code_ran"
    path = tmp_path / "model.safetensors"  # the name does not make it safe
    if kind == "torch.save":
        torch.save({"state": state, "payload": _Payload(str(marker))}, path)
    else:
        path.write_bytes(pickle.dumps({"payload": _Payload(str(marker))}, protocol=4))
    with pytest.raises(InputError, match="pickle.*arbitrary code.*refused"):
        model_io.load_model(path)
    assert not marker.exists()


def test_safetensors_without_nsn2n_metadata_is_refused(trained, tmp_path):
    _, state, _, _ = trained
    path = tmp_path / "other.safetensors"
    safetensors_torch.save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    with pytest.raises(InputError, match="not an NSN2N model"):
        model_io.load_model(path)


def test_tensors_that_do_not_match_the_stored_configuration_are_refused(trained, tmp_path):
    cfg, state, _, _ = trained
    path = tmp_path / "lying.safetensors"
    metadata = {"format": "nsn2n-model", "format_version": "1", "config": json.dumps(cfg.to_dict())}
    other = build_network(cfg.replace(network={"width": 4})).state_dict()
    safetensors_torch.save_file({k: v.contiguous() for k, v in other.items()}, str(path), metadata=metadata)
    with pytest.raises(ConfigError, match="does not fit the network"):
        model_io.load_model(path)
    # Extra tensors (a payload riding along) are refused as well.
    extra = {**{k: v.contiguous() for k, v in state.items()}, "payload": torch.zeros(3)}
    safetensors_torch.save_file(extra, str(path), metadata=metadata)
    with pytest.raises(ConfigError, match="unexpected payload"):
        model_io.load_model(path)


def test_a_stored_configuration_that_is_invalid_is_refused(trained, tmp_path):
    cfg, state, _, _ = trained
    bad = cfg.to_dict()
    bad["training"]["unknown_knob"] = 1
    path = tmp_path / "bad.safetensors"
    metadata = {"format": "nsn2n-model", "format_version": "1", "config": json.dumps(bad)}
    safetensors_torch.save_file({k: v.contiguous() for k, v in state.items()}, str(path), metadata=metadata)
    with pytest.raises(ConfigError, match="invalid configuration.*unknown_knob"):
        model_io.load_model(path)


@pytest.mark.parametrize("content", [b"", b"\x10\x00\x00\x00\x00\x00\x00\x00{not json", b"hello world, not a model"])
def test_garbage_is_refused(tmp_path, content):
    path = tmp_path / "garbage.safetensors"
    path.write_bytes(content)
    with pytest.raises(InputError, match="not a valid safetensors model file"):
        model_io.load_model(path)


def test_save_needs_the_suffix_and_a_matching_state(trained, tmp_path):
    cfg, state, _, _ = trained
    with pytest.raises(InputError, match=r"must end in \.safetensors"):
        model_io.save_model(tmp_path / "m.pt", state, cfg)
    with pytest.raises(ConfigError, match="does not fit"):
        model_io.save_model(tmp_path / "m.safetensors", state, make_config("default"))
    with pytest.raises(InputError, match="does not exist"):
        model_io.load_model(tmp_path / "missing.safetensors")


def test_command_line_saves_a_model_and_starts_from_it(tmp_path, capsys):
    sitk = pytest.importorskip("SimpleITK")
    from NSN2NDenoiseLib.cli import main

    image = sitk.GetImageFromArray(smooth_noisy_volume(seed=2))
    image.SetSpacing((1.0, 1.0, 3.0))
    src = tmp_path / "in.nrrd"
    sitk.WriteImage(image, str(src))
    model = tmp_path / "m.safetensors"
    common = ["--device", "cpu", "--iterations", "3", "--threads", "1", "--quiet"]
    assert main(["denoise", str(src), str(tmp_path / "a.nrrd"), "--save-model", str(model), *common]) == 0
    assert model_io.load_model(model).config.training.iterations == 3
    assert main(["denoise", str(src), str(tmp_path / "b.nrrd"), "--init-from", str(model), *common]) == 0
    assert os.path.exists(tmp_path / "b.nrrd")
    bad = tmp_path / "bad.safetensors"
    torch.save({"x": torch.zeros(1)}, bad)
    capsys.readouterr()
    assert main(["denoise", str(src), str(tmp_path / "c.nrrd"), "--init-from", str(bad), *common]) == EXIT_INPUT
    assert "arbitrary code" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "c.nrrd")
    assert main(["denoise", str(src), str(tmp_path / "d.nrrd"), "--save-model", str(tmp_path / "m.pt"), *common]) == 2
