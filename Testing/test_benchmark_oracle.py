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


def test_deep_baselines_build_the_network_from_a_configuration_section(tiny_dataset):
    from benchmarks import baselines, deep_baselines
    from NSN2NDenoiseLib import make_config

    ds = tiny_dataset
    cfg = make_config("fast", network={"width": 8})
    ctx = baselines.Context(
        ds.spacing,
        "ct",
        score=lambda estimate: 0.0,
        clean=ds.clean,
        iterations=3,
        network=cfg.to_dict()["network"],
        training={"patch_size": 16, "batch_size": 2},
    )
    out, facts = deep_baselines.supervised(ds.noisy, ctx)
    assert out.shape == ds.noisy.shape and np.isfinite(out).all()
    assert facts["network"] == {"depth": cfg.network.depth, "width": 8, "residual": True}


def test_ablation_table_compares_rows_cached_before_and_after_options_were_removed(tmp_path):
    import json

    from benchmarks import ablation_table
    from NSN2NDenoiseLib import make_config

    def row(name, cfg, psnr, seconds):
        quality = {"psnr": psnr, "ssim": 0.9, "rmse": 10.0}
        data = {"method": "nsn2n", "quality": quality, "cost": {"seconds": seconds}, "info": {"config": cfg}}
        (tmp_path / f"{name}.json").write_text(json.dumps(data))

    new = make_config("default").to_dict()
    old = json.loads(json.dumps(new))
    old["loss"].pop("target_warmup")
    old["weights"].update(soft=False, lowpass="gaussian")
    old["inference"].update(tta=True, safeguard=False)
    old_soft = json.loads(json.dumps(old))
    old_soft["weights"]["soft"] = True
    row("nsn2n_default_abc", {**new, "loss": {**new["loss"], "target_warmup": 0.0}}, 30.0, 10.0)
    row("nsn2n_old_def", old, 29.0, 11.0)
    row("nsn2n_soft_ghi", old_soft, 28.0, 12.0)
    lines = ablation_table.table(tmp_path, "nsn2n_default", ct=False).splitlines()
    by_name = {line.split(" | ")[0].lstrip("| "): line for line in lines[2:]}
    assert by_name["nsn2n_default"].endswith("(reference) |")
    assert by_name["nsn2n_old"].endswith("(reference) |"), "removed options at their kept value are no difference"
    assert by_name["nsn2n_soft"].endswith("weights.soft=True |")
    assert " -2.00 " in by_name["nsn2n_soft"]
