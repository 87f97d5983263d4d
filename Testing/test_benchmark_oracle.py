"""Smoke test of benchmarks/target_oracle.py on a tiny phantom: every row trains and scores, and the supervised
row, whose target is the clean slice, ends closer to the clean volume than the noisy input."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

if importlib.util.find_spec("benchmarks") is None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import datasets, metrics, target_oracle  # noqa: E402
from NSN2NDenoiseLib.phantom import add_inplane_correlated_noise, make_phantom  # noqa: E402


@pytest.fixture(scope="module")
def tiny_dataset() -> datasets.Dataset:
    clean = make_phantom((10, 32, 32), seed=0).astype(np.float32)
    noisy = add_inplane_correlated_noise(clean, 60.0, 1.0, seed=1)
    mask = np.ones(clean.shape, dtype=bool)
    return datasets.Dataset("phantom", "tiny phantom", clean, noisy, (1.0, 1.0, 1.0), "ct", mask, 1000.0, "all")


@pytest.mark.parametrize("row", target_oracle.ROWS)
def test_every_oracle_row_runs(row, tiny_dataset):
    psnr, seconds = target_oracle.run_row(row, tiny_dataset, iterations=4)
    assert np.isfinite(psnr) and seconds > 0


def test_supervised_row_beats_the_noisy_input(tiny_dataset):
    ds = tiny_dataset
    noisy = metrics.psnr(ds.clean, ds.noisy, ds.mask, ds.data_range)
    psnr, _ = target_oracle.run_row("supervised", ds, iterations=300)
    assert psnr > noisy + 3.0  # measured +6.8 dB


@pytest.mark.parametrize("row", ["supervised", "oracle_unbiased_all", "cubic_clean_all", "mean"])
def test_oracle_targets_are_the_clean_volumes_in_the_same_crops(row, tiny_dataset):
    """The oracle sampler draws the crops of NSN2N's sampler (same seed) and swaps only the target."""
    import torch

    from NSN2NDenoiseLib import make_config
    from NSN2NDenoiseLib.normalization import NormalizedSlices, fit_intensity_map
    from NSN2NDenoiseLib.training import PatchSampler
    from NSN2NDenoiseLib.weights import compute_targets

    ds = tiny_dataset
    imap = fit_intensity_map(ds.noisy)
    source, clean = NormalizedSlices(ds.noisy, 0, imap), NormalizedSlices(ds.clean, 0, imap)
    targets = compute_targets(source, make_config(device="cpu"), torch.device("cpu"))
    oracle = target_oracle.oracle_sampler_class()(source, targets, clean, row, 16, 6, 3).sample(1.0)
    noisy = PatchSampler(source, targets, 16, 6, 3).sample(0.0)
    noisy_cubic = PatchSampler(source, targets, 16, 6, 3).sample(1.0)
    ref = PatchSampler(clean, targets, 16, 6, 3).sample(0.0)
    ref_cubic = PatchSampler(clean, targets, 16, 6, 3).sample(1.0)
    assert torch.equal(oracle.x, noisy.x) and torch.equal(oracle.weights, noisy.weights)
    expected = {
        "supervised": ref.x,
        "oracle_unbiased_all": noisy.target - ref.target + ref.x,
        "cubic_clean_all": noisy.target - ref.target + ref_cubic.target,
        "mean": noisy.target,
    }[row]
    assert torch.allclose(oracle.target, expected, atol=1e-5)
    assert not torch.allclose(oracle.target, noisy_cubic.target, atol=1e-3)
