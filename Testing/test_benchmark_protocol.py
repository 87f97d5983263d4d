"""The evaluation protocol (benchmarks/protocol.py) and the Colin27 loader: sweeps pick the best grid point at the
set's first seed and reuse it, stored runs are skipped only while their parameters hold, tables are mean ± sd over
the stored seeds, and the Colin27 loader reads only its allowed slices, in RAS and K,J,I order."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest

if importlib.util.find_spec("benchmarks") is None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from conftest import require  # noqa: E402

from benchmarks import data, datasets, metrics, multi_axis, protocol, wiener_grid  # noqa: E402


@pytest.fixture(autouse=True)
def _private_wiener_cache(tmp_path, monkeypatch):
    """Runs of NSN2N rows cache the network's output for wiener_grid: never in the repository's cache."""
    monkeypatch.setattr(wiener_grid, "CACHE", tmp_path / "wiener_cache")


def _dataset(seed: int) -> datasets.Dataset:
    rng = np.random.default_rng(seed)
    clean = np.zeros((8, 12, 12), dtype=np.float32)
    clean[:, 3:9, 3:9] = 100.0
    noisy = (clean + rng.normal(0, 10, clean.shape)).astype(np.float32)
    mask = np.ones(clean.shape, dtype=bool)
    return datasets.Dataset(
        "colin_rician5", "toy", clean, noisy, (1.0, 1.0, 1.0), "mri", mask, 100.0, "all", noise_sigma=10.0
    )


@pytest.fixture
def fake_methods(monkeypatch):
    """TV 'denoises' by moving toward the clean volume by an amount set by its weight: best at weight 0.7."""
    calls = []

    def run_method(name, ds, seed, params):
        calls.append((name, seed, dict(params)))
        if name == "tv_swept":
            w = params["weight_factor"]
            closeness = 0.9 - abs(w - 0.7)
            return ds.noisy + closeness * (ds.clean - ds.noisy), dict(params)
        return ds.noisy.copy(), {}

    monkeypatch.setattr(protocol, "_run_method", run_method)
    monkeypatch.setattr(protocol, "_build", lambda case, seed: _dataset(seed))
    return calls


def test_a_sweep_runs_at_the_first_seed_and_its_best_value_is_used_at_every_seed(tmp_path, fake_methods):
    protocol.run_case("colin_rician5", (1, 2, 3), ["noisy", "tv_swept"], root=tmp_path)
    sweep = json.loads(protocol.sweep_path("colin_rician5", "tv_swept", tmp_path).read_text())
    assert sweep["chosen"] == {"weight_factor": 0.7}
    assert sweep["seed"] == 1 and len(sweep["rows"]) == len(protocol.SWEEPS["tv_swept"]["weight_factor"])
    assert sweep["chosen_at_grid_edge"] == []
    grid_calls = [c for c in fake_methods if c[0] == "tv_swept" and c[1] == 1]
    assert len(grid_calls) == len(protocol.SWEEPS["tv_swept"]["weight_factor"]) + 1  # the grid, then the run
    for seed in (2, 3):
        runs = [c for c in fake_methods if c[0] == "tv_swept" and c[1] == seed]
        assert runs == [("tv_swept", seed, {"weight_factor": 0.7})]
        record = json.loads(protocol.result_path("colin_rician5", seed, "tv_swept", tmp_path).read_text())
        assert record["params"]["weight_factor"] == 0.7 and record["seed"] == seed
        assert (
            record["quality"]["psnr"]
            > json.loads(protocol.result_path("colin_rician5", seed, "noisy", tmp_path).read_text())["quality"]["psnr"]
        )


def test_the_sweep_is_done_at_the_sets_first_seed_even_when_a_run_covers_other_seeds(tmp_path, fake_methods):
    protocol.run_case("colin_rician5", (2,), ["tv_swept"], first_seed=1, root=tmp_path)
    assert json.loads(protocol.sweep_path("colin_rician5", "tv_swept", tmp_path).read_text())["seed"] == 1
    assert not protocol.result_path("colin_rician5", 1, "tv_swept", tmp_path).exists()


def test_a_best_value_at_the_grid_edge_is_flagged(tmp_path, fake_methods, monkeypatch):
    monkeypatch.setitem(protocol.SWEEPS, "tv_swept", {"weight_factor": (0.1, 0.3, 0.5)})
    protocol.run_case("colin_rician5", (1,), ["tv_swept"], root=tmp_path)
    sweep = json.loads(protocol.sweep_path("colin_rician5", "tv_swept", tmp_path).read_text())
    assert sweep["chosen"] == {"weight_factor": 0.5} and sweep["chosen_at_grid_edge"] == ["weight_factor"]
    assert "(grid edge)" in protocol.case_table("colin_rician5", (1,), tmp_path)


def test_stored_runs_are_skipped_until_their_parameters_change(tmp_path, fake_methods, monkeypatch):
    protocol.run_case("colin_rician5", (1,), ["noisy", "tv_swept"], root=tmp_path)
    n = len(fake_methods)
    protocol.run_case("colin_rician5", (1,), ["noisy", "tv_swept"], root=tmp_path)
    assert len(fake_methods) == n  # nothing recomputed
    monkeypatch.setattr(protocol, "PROTOCOL_VERSION", protocol.PROTOCOL_VERSION + 1)
    protocol.run_case("colin_rician5", (1,), ["noisy"], root=tmp_path)
    assert len(fake_methods) == n + 1  # a new protocol version reruns
    monkeypatch.setitem(protocol.SWEEPS, "tv_swept", {"weight_factor": (0.6, 0.7)})
    protocol.run_case("colin_rician5", (1,), ["tv_swept"], root=tmp_path)
    assert len(fake_methods) == n + 1 + 2 + 1  # a new grid re-sweeps, then the run


def test_nsn2n_results_are_keyed_by_the_whole_configuration():
    default, best = protocol.run_params("nsn2n", {}), protocol.run_params("nsn2n_best", {})
    assert default["config"]["training"]["iterations"] != best["config"]["training"]["iterations"]
    assert protocol.run_params("noisy", {}) == {"v": protocol.PROTOCOL_VERSION}


def test_rows_with_the_wiener_stage_are_keyed_by_its_filters_so_a_change_of_them_reruns_the_row(monkeypatch):
    from NSN2NDenoiseLib import block_matching, wiener

    default = protocol.run_params("nsn2n", {})
    one = {"block": 4, "step": 3, "group": 16, "search": (3, 5), "factor": 4.0, "window": 0.0}
    white = [one, {**one, "factor": 2.0}]
    assert default["wiener_filters"] == {"white": white, "correlated": [one]}
    filters = protocol.run_params("nsn2n_filters", {})
    assert filters["wiener_filters"] == [{"block": 8, "step": 3, "factors": {"white": 2.0, "correlated": 4.0}}]
    assert protocol.run_params("nsn2n_fast", {})["wiener_filters"] == filters["wiener_filters"]
    assert protocol.run_params("nsn2n_fast_matched", {})["wiener_filters"] == default["wiener_filters"]
    assert "wiener_filters" not in protocol.run_params("nsn2n_nowiener", {})
    assert protocol.run_params("supervised_wiener", {})["wiener_filters"] == default["wiener_filters"]
    assert "wiener_filters" not in protocol.run_params("supervised", {})
    monkeypatch.setattr(wiener, "PASSES", (*wiener.PASSES, wiener.WienerPass(4, 2, {"white": 2.0, "correlated": 4.0})))
    assert protocol.run_params("nsn2n_filters", {}) != filters and protocol.run_params("nsn2n", {}) == default
    assert default["matched_max_lag1"] == wiener.MATCHED_MAX_LAG1 and "matched_max_lag1" not in filters
    monkeypatch.setattr(wiener, "MATCHED_MAX_LAG1", 0.9)
    assert protocol.run_params("nsn2n", {}) != default
    monkeypatch.setattr(wiener, "MATCHED_MAX_LAG1", default["matched_max_lag1"])
    monkeypatch.setitem(block_matching.PASSES, "correlated", (block_matching.MatchedFilter(4, 3, 8, (3, 5), 4.0),))
    assert protocol.run_params("nsn2n", {}) != default
    monkeypatch.setitem(block_matching.PASSES, "correlated", (block_matching.MATCHED,))
    assert protocol.run_params("nsn2n", {}) == default
    monkeypatch.setitem(block_matching.PASSES, "white", block_matching.MATCHED_WHITE[:1])
    assert protocol.run_params("nsn2n", {}) != default
    monkeypatch.setitem(block_matching.PASSES, "white", block_matching.MATCHED_WHITE)
    assert default["network_free"] == {
        "share": {"white": 0.5, "correlated": 0.0},
        "hard_threshold": 2.7,
        "filters": [dataclasses.asdict(f) for f in block_matching.NETWORK_FREE],
    }
    first = (block_matching.MATCHED, block_matching.MATCHED)
    adopted = block_matching.NETWORK_FREE
    monkeypatch.setattr(block_matching, "NETWORK_FREE", first)  # the first estimate's rows: keyed as they were
    shares = {"white": 0.5, "correlated": 0.0}
    assert protocol.run_params("nsn2n", {})["network_free"] == {"share": shares, "hard_threshold": 2.7}
    monkeypatch.setattr(block_matching, "NETWORK_FREE", (block_matching.MATCHED, adopted[1]))
    assert protocol.run_params("nsn2n", {}) != default
    monkeypatch.setattr(block_matching, "NETWORK_FREE", adopted)
    assert "network_free" not in filters and "network_free" not in protocol.run_params("nsn2n_nowiener", {})
    monkeypatch.setattr(block_matching, "HARD_THRESHOLD", 3.0)
    assert protocol.run_params("nsn2n", {}) != default
    monkeypatch.setattr(block_matching, "HARD_THRESHOLD", 2.7)
    monkeypatch.setitem(block_matching.NETWORK_FREE_SHARE, "white", 0.0)  # the stage before the mix: keyed as it was
    assert "network_free" not in protocol.run_params("nsn2n", {})
    monkeypatch.setitem(block_matching.NETWORK_FREE_SHARE, "white", 0.5)
    assert protocol.run_params("nsn2n", {}) == default


def test_summaries_are_mean_and_sample_sd_over_seeds():
    s = protocol.summarise([30.0, 31.0, 32.0])
    assert (s.mean, s.sd, s.n) == (31.0, 1.0, 3)
    assert s.text() == "31.00 ± 1.00"
    assert protocol.summarise([30.0, 32.0]).text() == "31.00 ± 1.41 (2 seeds)"
    assert protocol.summarise([30.0]).text() == "30.00 (1 seed)"
    assert protocol.summarise([]).text() == "–"


def test_the_table_and_targets_come_from_the_stored_files_only(tmp_path):
    def store(method, seed, psnr, ssim=0.9):
        path = protocol.result_path("ctbrain_ld_1e5", seed, method, tmp_path)
        path.parent.mkdir(parents=True, exist_ok=True)
        quality = {"psnr": psnr, "ssim": ssim, "rmse_bone": 20.0 + psnr / 100, "rmse_soft": 10.0}
        path.write_text(json.dumps({"method": method, "quality": quality, "cost": {"seconds": 5.0}}))

    for seed, jitter in zip((1, 2, 3), (-0.1, 0.0, 0.1), strict=True):
        store("noisy", seed, 30 + jitter)
        store("nlm_true", seed, 36 + jitter)
        store("bm4d_swept", seed, 38 + jitter)
        store("nsn2n", seed, 37 + jitter)
        store("supervised_wiener", seed, 38.5 + jitter)
        store("bm4d_spectrum", seed, 37.5 + jitter)
        store("nsn2n_best", seed, 36.0 + jitter)  # its network alone: not the preset's figure
        store("nsn2n_best_wiener", seed, 37.8 + jitter)
    table = protocol.case_table("ctbrain_ld_1e5", (1, 2, 3), tmp_path)
    assert "| **NSN2N default** | 37.00 ± 0.10 |" in table
    assert table.index("noisy input") < table.index("BM4D, swept") < table.index("NSN2N default")
    t = protocol.targets("ctbrain_ld_1e5", (1, 2, 3), tmp_path)
    assert t["default_minus_nlm_true"] == pytest.approx(1.0)
    assert t["default_minus_bm4d_swept"] == pytest.approx(-1.0)
    assert t["seeds"] == 3 and t["bone_below_noisy"] is False
    assert t["ceiling_wiener_minus_bm4d_swept"] == pytest.approx(0.5) and "ceiling_minus_bm4d_swept" not in t
    assert t["best_minus_bm4d_swept"] == pytest.approx(-0.2)
    assert t["default_minus_bm4d_spectrum"] == pytest.approx(-0.5)
    assert protocol.targets("colin_rician5", (1, 2, 3), tmp_path) is None  # nothing stored


def test_the_sets_are_disjoint_and_every_case_is_a_known_dataset():
    tuning, reporting = set(protocol.TUNING_CASES), set(protocol.REPORTING_CASES)
    assert not tuning & reporting
    assert set(protocol.SETS["tuning"]["seeds"]).isdisjoint(protocol.SETS["reporting"]["seeds"])
    assert all(c in datasets.DATASETS for c in tuning | reporting)
    (k0, k1), _, _ = datasets.CT_BRAIN_BOX
    assert datasets.CT_TUNE_SLICES[1] < k0 and k1 <= datasets.CT_SLICES[1]


def test_colin27_reads_only_axial_slices_20_to_67_in_ras_and_kji(tmp_path, monkeypatch):
    nib = require("nibabel", "the test extra: pip install -e .[test]")
    vol = np.arange(6 * 7 * 80, dtype=np.uint8).reshape(6, 7, 80)  # stored I, J, K
    flip = np.diag([-1.0, 1.0, 1.0, 1.0])  # stored L-to-R reversed: LAS, so RAS flips the first axis
    path = tmp_path / "ch2.nii.gz"
    nib.save(nib.Nifti1Image(vol, flip), str(path))
    monkeypatch.setattr(data, "COLIN27_PATHS", (path,))
    loaded = data.load_colin27()
    expected = vol[::-1, :, 20:68].transpose(2, 1, 0).astype(np.float32)
    assert loaded.data.shape == (48, 7, 6)
    np.testing.assert_array_equal(loaded.data, expected)
    assert "slices 20-67" in loaded.crop


def test_colin27_missing_says_what_to_install(monkeypatch, tmp_path):
    monkeypatch.setattr(data, "COLIN27_PATHS", (tmp_path / "absent.nii.gz",))
    with pytest.raises(data.DataMissingError, match="apt-get install -y mricron-data"):
        data.load_colin27()


def test_the_headline_row_shows_the_best_user_run_baseline_and_the_gap_to_swept_bm4d(tmp_path, monkeypatch):
    monkeypatch.setitem(protocol.SETS, "reporting", {"cases": ("ctbrain_ld_1e5",), "seeds": (1, 2)})
    for seed in (1, 2):
        for method, psnr in (("noisy", 30.0), ("nlm_est", 35.0), ("tv_est", 36.0), ("bm4d_swept", 39.0)):
            path = protocol.result_path("ctbrain_ld_1e5", seed, method, tmp_path)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps({"method": method, "quality": {"psnr": psnr + seed / 10}}))
        path = protocol.result_path("ctbrain_ld_1e5", seed, "nsn2n", tmp_path)
        path.write_text(json.dumps({"method": "nsn2n", "quality": {"psnr": 38.0 + seed / 10}}))
        path = protocol.result_path("ctbrain_ld_1e5", seed, "supervised_wiener", tmp_path)
        path.write_text(json.dumps({"method": "supervised_wiener", "quality": {"psnr": 38.5 + seed / 10}}))
        ma = protocol.result_path("mnitune_rician10", seed, "multi_axis", tmp_path)
        ma.parent.mkdir(parents=True, exist_ok=True)
        psnr = {"k_only (default)": 29.0, "j_only": 28.8, "i_only": 28.9, "mean_kji": 29.8 + seed / 10}
        ma.write_text(json.dumps({"case": "mnitune_rician10", "seed": seed, "psnr": psnr}))
    row = protocol.headline_table("reporting", tmp_path).splitlines()[-1]
    assert row.startswith("| `ctbrain_ld_1e5` | 30.15 ± 0.07 (2 seeds) | 36.15 ± 0.07 (2 seeds) (TV (3D))")
    assert "| **38.15 ± 0.07 (2 seeds)** | -1.00 | not run |" in row  # spectrum, nlm_true, slice, ceiling missing
    assert row.endswith("| not run | 38.65 ± 0.07 (2 seeds) |")  # the ceiling alone missing, with the stage stored
    ma_row = protocol.multi_axis_table(tmp_path).splitlines()[-1]
    assert ma_row.startswith("| `mnitune_rician10` | along K (the default) | 1, 2 | 29.00 ± 0.00 (2 seeds) |")
    assert ma_row.endswith("| 0.95 ± 0.07 (2 seeds) |")


TINY = {"training": {"iterations": 4, "batch_size": 2, "patch_size": 16}, "network": {"width": 8}}
"""A width-8 network trained for 4 iterations: protocol plumbing, not quality."""


def _tiny_rows(monkeypatch, **axes_by_row: str) -> None:
    """Make the named NSN2N rows tiny `fast` runs with the given ``inference.axes``, without the Wiener stage (the
    network's rows; the stage's own row has its test)."""
    for row, axes in axes_by_row.items():
        monkeypatch.setitem(protocol.NSN2N_ROWS, row, ("fast", {**TINY, "inference": {"axes": axes, "wiener": "off"}}))


def _phantom_dataset(case: str, modality: str, noise_seed: int, phantom_seed: int) -> datasets.Dataset:
    """An 8x24x24 phantom (x100) with Gaussian noise of 20, isotropic, whole-volume mask, data range 100."""
    from NSN2NDenoiseLib.phantom import make_phantom

    rng = np.random.default_rng(noise_seed)
    clean = (make_phantom((8, 24, 24), seed=phantom_seed) * 100).astype(np.float32)
    noisy = (clean + rng.normal(0, 20, clean.shape)).astype(np.float32)
    mask = np.ones(clean.shape, dtype=bool)
    return datasets.Dataset(case, "t", clean, noisy, (1.0, 1.0, 1.0), modality, mask, 100.0, "all", None, 20.0)


def test_the_ceiling_with_the_wiener_stage_is_the_supervised_network_then_the_default_stage(tmp_path, monkeypatch):
    require("torch", "torch==2.13.0 first, see README")
    monkeypatch.setitem(protocol.NSN2N_ROWS, "nsn2n", ("fast", {**TINY, "inference": {"wiener": "matched"}}))
    ds = _phantom_dataset("colin_rician5", "mri", noise_seed=0, phantom_seed=2)
    monkeypatch.setattr(protocol, "_build", lambda case, seed: ds)
    protocol.run_case("colin_rician5", (1,), ["supervised_wiener"], root=tmp_path)
    stored = json.loads(protocol.result_path("colin_rician5", 1, "supervised_wiener", tmp_path).read_text())
    alone, info = protocol._supervised(ds, 1)  # the same seeded training
    assert stored["info"]["network_alone_psnr"] == pytest.approx(protocol._score(ds, alone)["psnr"], abs=1e-9)
    from NSN2NDenoiseLib.wiener import stage_kind

    assert stored["info"]["wiener"]["kind"] == stage_kind("matched", tuple(info["inplane_noise_lag1"]))
    assert stored["info"]["residual_check"] >= 0
    assert abs(stored["quality"]["psnr"] - stored["info"]["network_alone_psnr"]) > 1e-3  # the stage ran
    assert info["slice_axis"] == 0 and len(info["inplane_noise_lag1"]) == 2


def test_the_slice_only_row_derived_from_a_multi_axis_run_equals_its_own_run(tmp_path, monkeypatch):
    require("torch", "torch==2.13.0 first, see README")
    _tiny_rows(monkeypatch, nsn2n="all", nsn2n_slice="slice")
    ds = _phantom_dataset("colin_rician5", "mri", noise_seed=0, phantom_seed=2)
    monkeypatch.setattr(protocol, "_build", lambda case, seed: ds)
    protocol.run_case("colin_rician5", (1,), ["nsn2n"], root=tmp_path)
    derived = json.loads(protocol.result_path("colin_rician5", 1, "nsn2n_slice", tmp_path).read_text())
    multi = json.loads(protocol.result_path("colin_rician5", 1, "nsn2n", tmp_path).read_text())
    assert multi["info"]["prediction_axes"] == ["K", "J", "I"] and derived["info"]["prediction_axes"] == ["K"]
    assert derived["params"] == protocol.run_params("nsn2n_slice", {})
    out, _ = protocol._nsn2n(ds, 1, "nsn2n_slice")  # its own training and slice-only inference
    assert derived["quality"]["psnr"] == pytest.approx(protocol._score(ds, out)["psnr"], abs=1e-6)
    assert derived["quality"]["psnr"] != pytest.approx(multi["quality"]["psnr"], abs=1e-3)


def test_the_default_row_is_the_engine_with_its_wiener_stage_and_stores_the_network_alone_beside_it(
    tmp_path, monkeypatch
):
    """nsn2n (Wiener stage on) is trained once: its stored result is what the engine returns with the stage on,
    nsn2n_nowiener what it returns with the stage off, and the network's output is cached for wiener_grid."""
    require("torch", "torch==2.13.0 first, see README")
    from NSN2NDenoiseLib import denoise

    for row, wiener in (("nsn2n", "matched"), ("nsn2n_nowiener", "off")):
        monkeypatch.setitem(
            protocol.NSN2N_ROWS, row, ("fast", {**TINY, "inference": {"axes": "slice", "wiener": wiener}})
        )
    ds = _phantom_dataset("ct_gauss30", "ct", noise_seed=0, phantom_seed=2)
    monkeypatch.setattr(protocol, "_build", lambda case, seed: ds)
    protocol.run_case("ct_gauss30", (1,), ["nsn2n"], root=tmp_path)
    stored = {
        m: json.loads(protocol.result_path("ct_gauss30", 1, m, tmp_path).read_text())
        for m in ("nsn2n", "nsn2n_nowiener")
    }
    on, report = denoise(ds.noisy, spacing=ds.spacing, config=protocol.nsn2n_config("nsn2n", 1))
    off, _ = denoise(ds.noisy, spacing=ds.spacing, config=protocol.nsn2n_config("nsn2n_nowiener", 1))
    assert stored["nsn2n"]["quality"]["psnr"] == pytest.approx(protocol._score(ds, on)["psnr"], abs=1e-9)
    assert stored["nsn2n_nowiener"]["quality"]["psnr"] == pytest.approx(protocol._score(ds, off)["psnr"], abs=1e-9)
    assert stored["nsn2n"]["quality"]["psnr"] != pytest.approx(stored["nsn2n_nowiener"]["quality"]["psnr"], abs=1e-3)
    assert stored["nsn2n"]["info"]["wiener"] == report.wiener and report.wiener["applied"]
    assert stored["nsn2n_nowiener"]["info"]["wiener"]["applied"] is False
    assert stored["nsn2n"]["info"]["config"]["inference"]["wiener"] == "matched"
    assert stored["nsn2n_nowiener"]["params"] == protocol.run_params("nsn2n_nowiener", {})
    np.testing.assert_array_equal(np.load(wiener_grid.CACHE / "ct_gauss30_seed1.npy"), off)


def test_each_row_caches_its_network_output_under_its_own_name_so_a_preset_never_stands_in_for_the_default(
    tmp_path, monkeypatch
):
    """A run of the fast (or best) row with the Wiener stage caches its network's output beside, not over, the
    default's, which wiener_grid reads as the pilot of the default."""
    require("torch", "torch==2.13.0 first, see README")
    from NSN2NDenoiseLib import denoise

    monkeypatch.setitem(protocol.NSN2N_ROWS, "nsn2n_fast", ("fast", {**TINY, "inference": {"axes": "slice"}}))
    ds = _phantom_dataset("ct_gauss30", "ct", noise_seed=0, phantom_seed=2)
    monkeypatch.setattr(protocol, "_build", lambda case, seed: ds)
    protocol.run_case("ct_gauss30", (1,), ["nsn2n_fast"], root=tmp_path)
    assert sorted(p.name for p in wiener_grid.CACHE.iterdir()) == [
        "ct_gauss30_seed1_nsn2n_fast.json",
        "ct_gauss30_seed1_nsn2n_fast.npy",
    ]
    off, _ = denoise(
        ds.noisy, spacing=ds.spacing, config=protocol.nsn2n_config("nsn2n_fast", 1).replace(inference={"wiener": "off"})
    )
    np.testing.assert_array_equal(np.load(wiener_grid.cache_path("ct_gauss30", 1, "nsn2n_fast")), off)
    assert wiener_grid.cache_path("ct_gauss30", 1) == wiener_grid.CACHE / "ct_gauss30_seed1.npy"


def test_the_three_axis_training_ablation_trains_on_each_axis_and_averages_the_default_axes(monkeypatch):
    """nsn2n_train3: a network trained on K, J and I pairs in turn (not the default's), denoised along the
    default's axes with its inference and averaged."""
    require("torch", "torch==2.13.0 first, see README")
    _tiny_rows(monkeypatch, nsn2n="all", nsn2n_train3="all", nsn2n_slice="slice")
    ds = _phantom_dataset("colin_rician5", "mri", noise_seed=1, phantom_seed=3)
    out, info = protocol._nsn2n_train3(ds, 1)
    assert info["training_axes"] == ["K", "J", "I"] and info["prediction_axes"] == ["K", "J", "I"]
    cfg = protocol.nsn2n_config("nsn2n_train3", 1)
    state = multi_axis.train_all_axes(ds, cfg)
    along = [protocol._slice_only(ds, cfg, state, a) for a in range(3)]
    np.testing.assert_allclose(out, np.mean(along, axis=0), rtol=1e-5, atol=1e-3)
    default, _ = protocol._nsn2n(ds, 1, "nsn2n")  # trained on K pairs only
    assert not np.allclose(out, default, atol=1e-2)


def test_the_training_axes_table_pairs_the_ablation_with_the_default_by_seed(tmp_path, monkeypatch):
    monkeypatch.setitem(protocol.SETS, "reporting", {"cases": ("colin_rician5", "ct_ld_1e5"), "seeds": (1, 2, 3)})
    figures = {"nsn2n": (34.0, 34.5, 34.1), "nsn2n_train3": (33.5, 33.7, 33.7), "nsn2n_slice": (32.5, 32.6, 32.7)}
    for method, values in figures.items():
        for seed, psnr in zip((1, 2, 3), values, strict=True):
            path = protocol.result_path("colin_rician5", seed, method, tmp_path)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps({"method": method, "seed": seed, "quality": {"psnr": psnr}}))
    ct = protocol.result_path("ct_ld_1e5", 1, "nsn2n", tmp_path)  # no ablation row: no line
    ct.parent.mkdir(parents=True, exist_ok=True)
    ct.write_text(json.dumps({"method": "nsn2n", "seed": 1, "quality": {"psnr": 30.0}}))
    lines = protocol.training_axes_table("reporting", tmp_path).splitlines()
    assert len(lines) == 3 and lines[-1].startswith("| `colin_rician5` | 32.60 ± 0.10 | **34.20 ± 0.26** |")
    assert lines[-1].endswith("| 33.63 ± 0.12 | -0.57 ± 0.21 (3 seeds) |")  # paired: -0.5, -0.8, -0.4


def test_the_two_network_row_averages_seeds_s_and_s_plus_1000_and_stores_the_first_as_the_default(
    tmp_path, monkeypatch
):
    require("torch", "torch==2.13.0 first, see README")
    from NSN2NDenoiseLib import denoise

    _tiny_rows(monkeypatch, nsn2n="slice", nsn2n_ens2="slice")
    ds = _phantom_dataset("cttune_ld_1e5", "ct", noise_seed=2, phantom_seed=4)
    noisy = ds.noisy
    monkeypatch.setattr(protocol, "_build", lambda case, seed: ds)
    protocol.run_case("cttune_ld_1e5", (3,), ["nsn2n_ens2"], root=tmp_path)
    ens = json.loads(protocol.result_path("cttune_ld_1e5", 3, "nsn2n_ens2", tmp_path).read_text())
    first = json.loads(protocol.result_path("cttune_ld_1e5", 3, "nsn2n", tmp_path).read_text())
    assert [m["training_seed"] for m in ens["info"]["members"]] == [3, 1003]
    assert first["info"]["members"] == [{"training_seed": 3}] and first["params"] == protocol.run_params("nsn2n", {})
    cfg = protocol.nsn2n_config("nsn2n", 3)
    a, _ = denoise(noisy, config=cfg)
    b, _ = denoise(noisy, config=cfg.replace(training={"seed": 1003}))
    assert first["quality"]["psnr"] == pytest.approx(protocol._score(ds, a)["psnr"], abs=1e-6)
    assert ens["quality"]["psnr"] == pytest.approx(protocol._score(ds, 0.5 * (a + b))["psnr"], abs=1e-6)
    assert ens["quality"]["psnr"] != pytest.approx(first["quality"]["psnr"], abs=1e-3)


def test_the_neighbour_fusion_row_blends_only_where_the_default_used_three_axes(monkeypatch):
    """nsn2n_nbfuse: the default without the engine's neighbour network, blended with the benchmark's own g where
    it used three axes; nsn2n_nbfuse_all blends also where it used one."""
    require("torch", "torch==2.13.0 first, see README")
    from benchmarks import neighbour_fusion
    from NSN2NDenoiseLib.normalization import NormalizedSlices, fit_intensity_map

    def rows(axes: str) -> None:
        for row in ("nsn2n_nofusion", "nsn2n_nbfuse", "nsn2n_nbfuse_all"):
            monkeypatch.setitem(
                protocol.NSN2N_ROWS,
                row,
                ("fast", {**TINY, "inference": {"axes": axes, "neighbour_fusion": "off", "wiener": "off"}}),
            )

    rows("all")
    ds = _phantom_dataset("colin_rician5", "mri", noise_seed=1, phantom_seed=3)
    out, info = protocol._run_method("nsn2n_nbfuse", ds, 1, {})
    default, default_info = protocol._nsn2n(ds, 1, "nsn2n_nofusion")
    assert default_info["prediction_axes"] == ["K", "J", "I"]
    fusion = info["neighbour_fusion"]
    assert fusion["applied"] and set(fusion["psnr"]) >= {"default", "neighbour_network_alone", "blend_0.3"}
    source = NormalizedSlices(ds.noisy, 0, fit_intensity_map(ds.noisy))
    cfg = protocol.nsn2n_config("nsn2n_nbfuse", 1)
    net = neighbour_fusion.train_interpolator(source, cfg)
    g = neighbour_fusion.predict_interpolator(net, source, cfg.inference.tta)
    np.testing.assert_allclose(out, 0.7 * default + 0.3 * g, rtol=1e-5, atol=1e-3)
    assert not np.allclose(out, default, atol=1e-2)
    rows("slice")
    out1, info1 = protocol._run_method("nsn2n_nbfuse", ds, 1, {})
    np.testing.assert_array_equal(out1, protocol._nsn2n(ds, 1, "nsn2n_nofusion")[0])
    assert info1["neighbour_fusion"]["applied"] is False
    out2, info2 = protocol._run_method("nsn2n_nbfuse_all", ds, 1, {})
    assert info2["neighbour_fusion"]["applied"] is True and not np.allclose(out2, out1, atol=1e-2)
    assert protocol.run_params("nsn2n_nbfuse", {})["fusion_weight"] == neighbour_fusion.FUSION_WEIGHT


def test_the_neighbour_fusion_table_pairs_each_blend_and_the_engine_with_their_defaults(tmp_path, monkeypatch):
    monkeypatch.setitem(protocol.SETS, "tuning", {"cases": ("mnitune_rician5",), "seeds": (100, 101)})
    monkeypatch.setitem(protocol.SETS, "reporting", {"cases": ("colin_rician5", "ct_ld_1e5"), "seeds": (1, 2)})

    def write(case, seed, method, psnr, fusion=None):
        path = protocol.result_path(case, seed, method, tmp_path)
        path.parent.mkdir(parents=True, exist_ok=True)
        info = {"neighbour_fusion": {"psnr": fusion}} if fusion else {}
        path.write_text(json.dumps({"method": method, "seed": seed, "quality": {"psnr": psnr}, "info": info}))

    for seed, base in ((100, 33.0), (101, 33.2)):
        blends = {"blend_0.2": base + 0.3, "blend_0.3": base + 0.4, "blend_0.4": base + 0.1, "blend_0.5": base - 0.2}
        fusion = {"default": base, "neighbour_network_alone": base - 2.0, **blends}
        write("mnitune_rician5", seed, "nsn2n_nbfuse", base + 0.4, fusion)
    for seed, (new, old) in ((1, (33.7, 33.5)), (2, (33.6, 33.5))):
        write("colin_rician5", seed, "nsn2n_fusion", new)
        write("colin_rician5", seed, "nsn2n", old)
    write("ct_ld_1e5", 1, "nsn2n", 30.0)  # no ablation row and no engine row with it: no line
    lines = protocol.neighbour_fusion_table(tmp_path).splitlines()
    assert len(lines) == 4
    assert lines[2] == (
        "| `mnitune_rician5` | 100, 101 | 33.10 ± 0.14 (2 seeds) | -2.00 ± 0.00 | +0.30 ± 0.00 | +0.40 ± 0.00 "
        "| +0.10 ± 0.00 | -0.20 ± 0.00 | – | – |"
    )
    assert lines[3].startswith("| `colin_rician5` | – | 33.50 ± 0.00 (2 seeds) | – |")
    assert lines[3].endswith("| 33.65 ± 0.07 (2 seeds) | +0.15 ± 0.07 (2 seeds) |")  # paired: +0.2, +0.1


def test_the_wiener_grid_table_averages_each_grid_point_over_seeds_and_marks_the_first_versions_choice(tmp_path):
    require("torch", "torch==2.13.0 first, see README")
    chosen = "2|0.5"
    entries = {}
    for seed, gains in ((100, (0.1, 0.3)), (101, (0.3, 0.5))):
        entries[f"mnitune_rician5/seed{seed}"] = {
            "case": "mnitune_rician5",
            "seed": seed,
            "noise_class": "white",
            "network_psnr": 30.0 + seed - 100,
            "gain_db": {"0.5|0.3": gains[0], chosen: gains[1]},
            "engine": {"gain_db": gains[1]},
        }
    (tmp_path / "wiener_grid.json").write_text(json.dumps(entries))
    row = wiener_grid.table(tmp_path).splitlines()[-1]
    assert row.startswith("| `mnitune_rician5` | white | 100, 101 | 30.50 ± 0.71 (2 seeds) |")
    assert "0.5 x 0.3: +0.20 ± 0.14" in row
    assert "**2 x 0.5: +0.40 ± 0.14**" in row
    assert row.endswith("| **+0.40 ± 0.14** | not run |")
    entries["mnitune_rician5/seed100"]["bm4d_pilot_true_sigma_gain_db"] = 1.5
    (tmp_path / "wiener_grid.json").write_text(json.dumps(entries))
    assert wiener_grid.table(tmp_path).splitlines()[-1].endswith("| **+0.40 ± 0.14** | +1.50 ± 0.00 (1) |")
    assert wiener_grid.table(tmp_path / "absent") == ""


def test_the_filters_table_marks_the_engines_filters_and_pairs_the_engine_with_the_first_version(tmp_path):
    require("torch", "torch==2.13.0 first, see README")

    chosen = wiener_grid.TWO_FILTERS["correlated"]
    assert chosen == "8:4|4:4"
    entries = {}
    for seed, gains in ((100, (0.1, 0.4)), (101, (0.3, 0.6))):
        key = f"cttune_ld_1e5/seed{seed}"
        entries[key] = {
            "case": "cttune_ld_1e5",
            "seed": seed,
            "noise_class": "correlated",
            "network_psnr": 34.0 + seed - 100,
            "single_share_0.5": {"8:4": 0.2, "8:2": 9.0},
            "pair_thirds": {"8:2|4:4": gains[0], chosen: gains[1]},
            "pair_network_weight": {"0.25": gains[0]},
            "pair_plus_6_quarters": {"6:4": gains[1]},
            "engine": {"gain_db": gains[1]},
        }
    (tmp_path / "wiener_filters.json").write_text(json.dumps(entries))
    row = wiener_grid.filters_table(tmp_path).splitlines()[-1]
    assert row.startswith(
        "| `cttune_ld_1e5` | correlated | 100, 101 | 34.50 ± 0.71 (2 seeds) | 8:4: +0.20 ± 0.00; 8:2:"
    )
    assert "| 8:2 & 4:4: +0.20 ± 0.14; **8:4 & 4:4: +0.50 ± 0.14** | w 0.25: +0.20 ± 0.14 | 6:4: +0.50 ± 0.14 |" in row
    assert row.endswith("| **+0.50 ± 0.14** | +0.30 ± 0.14 |")  # paired with the first version: +0.2, +0.4
    entries["cttune_ld_1e5/seed100/nsn2n_best_wiener"] = {
        **entries["cttune_ld_1e5/seed100"],
        "row": "nsn2n_best_wiener",
    }
    (tmp_path / "wiener_filters.json").write_text(json.dumps(entries))
    lines = wiener_grid.filters_table(tmp_path).splitlines()
    assert lines[-2].startswith("| `cttune_ld_1e5` | correlated | 100, 101 |")
    assert lines[-1].startswith(
        "| `cttune_ld_1e5`, `nsn2n_best_wiener`'s network | correlated | 100 | 34.00 (1 seed) |"
    )
    assert lines[-1].endswith("| **+0.40 ± 0.00** | +0.20 ± 0.00 |")
    assert wiener_grid.filters_table(tmp_path / "absent") == ""


def test_the_passes_table_gives_each_sequence_and_pairs_it_with_the_one_before(tmp_path):
    from NSN2NDenoiseLib import block_matching

    assert wiener_grid.PASS_SEQUENCES[0] == (block_matching.MATCHED.factor,)  # the first pass is the engine's
    seqs = wiener_grid.PASS_SEQUENCES
    assert all(a == b[: len(a)] for a, b in zip(seqs, seqs[1:], strict=False))  # each extends the one before
    entries = {}
    for seed, gains in ((1, (0.6, 0.5, 0.3, 0.2)), (2, (0.8, 0.9, 0.5, 0.2))):
        names = [">".join(f"{k:g}" for k in seq) for seq in wiener_grid.PASS_SEQUENCES]
        entries[f"colin_gauss5/seed{seed}"] = {
            "case": "colin_gauss5",
            "seed": seed,
            "noise_class": "white",
            "network_psnr": 34.0 + seed,
            "network_ssim": 0.97,
            "sequences": {n: {"gain_db": g, "ssim": 0.9 + g / 10} for n, g in zip(names, gains, strict=True)},
        }
    (tmp_path / "wiener_passes.json").write_text(json.dumps(entries))
    lines = wiener_grid.passes_table(tmp_path).splitlines()
    assert len(lines) == 3 and lines[0].count("|") == lines[1].count("|") == lines[2].count("|") == 12
    assert lines[2] == (
        "| `colin_gauss5` | white | 1, 2 | 35.50 ± 0.71 (2 seeds) / 0.9700 | +0.70 ± 0.14 / 0.9700 | +0.70 ± 0.28 / "
        "0.9700 | +0.40 ± 0.14 / 0.9400 | +0.20 ± 0.00 / 0.9200 | +0.00 ± 0.14 | -0.30 ± 0.14 | -0.20 ± 0.14 |"
    )
    assert wiener_grid.passes_table(tmp_path / "absent") == ""


def test_an_experiment_entry_is_stored_with_its_command_time_and_machine_and_written_at_once(tmp_path, monkeypatch):
    logged = []
    monkeypatch.setattr(protocol, "log", logged.append)
    out = tmp_path / "wiener_x.json"
    stored = {"a/seed1": {"case": "a"}}
    wiener_grid._record(stored, out, "b/seed2", {"case": "b", "gain_db": 0.5}, "b seed 2: +0.5")
    on_disk = json.loads(out.read_text())
    assert on_disk == stored and list(on_disk) == ["a/seed1", "b/seed2"] and logged == ["b seed 2: +0.5"]
    entry = on_disk["b/seed2"]
    assert list(entry)[:2] == ["case", "gain_db"] and entry["gain_db"] == 0.5
    assert entry["command"] == protocol._command() and entry["machine"] == metrics.machine()
    assert len(entry["when"]) == len("2026-11-30 14:00")


def test_a_stored_command_names_the_benchmark_module_that_ran(monkeypatch):
    """``python -m benchmarks.correlated_free --set tuning`` runs with argv[0] the module's file: the stored command
    names that module, not the protocol's."""
    here = Path(protocol.__file__).parent
    monkeypatch.setattr(sys, "argv", [str(here / "correlated_free.py"), "--set", "tuning", "--variants", "wide x2"])
    assert protocol._command() == "python -m benchmarks.correlated_free --set tuning --variants 'wide x2'"
    monkeypatch.setattr(sys, "argv", [str(here / "protocol.py"), "run", "--set", "reporting"])
    assert protocol._command() == "python -m benchmarks.protocol run --set reporting"
    monkeypatch.setattr(sys, "argv", ["/usr/bin/pytest", "-q"])  # not a benchmark: the protocol's name
    assert protocol._command() == "python -m benchmarks.protocol -q"


def test_the_gate_table_orders_cases_by_their_noise_correlation_and_pairs_matching_with_the_filter(tmp_path):
    def entry(case, seed, lag, matched, filters):
        return {
            "case": case,
            "seed": seed,
            "inplane_noise_lag1": [lag, -0.01],
            "network": {"psnr": 30.0, "ssim": 0.9},
            "matched": {"psnr": matched[0], "ssim": matched[1]},
            "filters": {"psnr": filters[0], "ssim": filters[1]},
            "engine_runs": "filters" if lag > 0.75 else "matched",
        }

    entries = {
        "strong/1": entry("ct_inplane30", 1, 0.9, (33.0, 0.92), (33.1, 0.94)),
        "strong/2": entry("ct_inplane30", 2, 0.8, (33.2, 0.92), (33.2, 0.95)),
        "weak/1": entry("ct_ld_1e5", 1, 0.3, (35.5, 0.975), (35.0, 0.97)),
    }
    (tmp_path / "wiener_gate.json").write_text(json.dumps(entries))
    lines = wiener_grid.gate_table(tmp_path).splitlines()
    assert len(lines) == 4 and all(line.count("|") == 10 for line in lines)
    assert lines[2] == (
        "| `ct_ld_1e5` | 1 | 0.30 | 30.00 (1 seed) / 0.9000 | 35.50 (1 seed) / 0.9750 | 35.00 (1 seed) / 0.9700 "
        "| +0.50 ± 0.00 | +0.0050 ± 0.0000 | matched |"
    )
    assert lines[3] == (
        "| `ct_inplane30` | 1, 2 | 0.85 | 30.00 ± 0.00 (2 seeds) / 0.9000 | 33.10 ± 0.14 (2 seeds) / 0.9200 "
        "| 33.15 ± 0.07 (2 seeds) / 0.9450 | -0.05 ± 0.07 | -0.0250 ± 0.0071 | filters |"
    )
    assert wiener_grid.gate_table(tmp_path / "absent") == ""


def test_the_wiener_table_pairs_the_default_with_the_network_alone_on_the_seeds_both_have(tmp_path, monkeypatch):
    monkeypatch.setitem(protocol.SETS, "reporting", {"cases": ("colin_rician5", "ct_ld_1e5"), "seeds": (1, 2, 3)})
    figures = {
        "nsn2n": (34.0, 34.5, 34.1, None),
        "nsn2n_nowiener": (33.5, 33.7, 33.7, 30.0),
        "nsn2n_filters": (33.8, 34.0, None, None),
    }
    for method, values in figures.items():
        for seed, psnr in zip((1, 2, 3, 4), values, strict=True):
            if psnr is None:
                continue
            path = protocol.result_path("colin_rician5", seed, method, tmp_path)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps({"method": method, "seed": seed, "quality": {"psnr": psnr}}))
    ct = protocol.result_path("ct_ld_1e5", 1, "nsn2n", tmp_path)  # no network-alone row: no line
    ct.parent.mkdir(parents=True, exist_ok=True)
    ct.write_text(json.dumps({"method": "nsn2n", "seed": 1, "quality": {"psnr": 30.0}}))
    lines = protocol.wiener_table("reporting", tmp_path).splitlines()
    assert len(lines) == 3
    assert lines[-1] == (
        "| `colin_rician5` | 1, 2, 3 | 33.63 ± 0.12 | 33.90 ± 0.14 (2 seeds) | not run | **34.20 ± 0.26** "
        "| +0.57 ± 0.21 | +0.35 ± 0.21 | – |"  # paired: +0.2, +0.5; filters at seeds 1, 2 only
    )


def test_every_row_with_the_wiener_stage_names_a_network_alone_row_without_it():
    for row, alone in protocol.NETWORK_ALONE.items():
        with_stage = protocol.nsn2n_config(row, 1)
        without = protocol.nsn2n_config(alone, 1)
        assert with_stage.inference.wiener != "off" and without.inference.wiener == "off"
        assert with_stage.replace(inference={"wiener": "off"}) == without
    stage_rows = {r for r in protocol.NSN2N_ROWS if protocol.nsn2n_config(r, 1).inference.wiener != "off"}
    assert stage_rows == set(protocol.NETWORK_ALONE)


def test_wiener_grid_reads_another_rows_network_output_only_from_its_cache(monkeypatch):
    calls = []
    monkeypatch.setattr(protocol, "_nsn2n", lambda *a: calls.append(a))
    with pytest.raises(FileNotFoundError, match="run the protocol's nsn2n_best_wiener row on colin_rician5 at seed 1"):
        wiener_grid.network_output("colin_rician5", 1, None, "nsn2n_best_wiener")
    assert calls == []
    np.save(wiener_grid.cache_path("colin_rician5", 1, "nsn2n_best_wiener"), np.ones((2, 3, 4), np.float32))
    wiener_grid.cache_path("colin_rician5", 1, "nsn2n_best_wiener").with_suffix(".json").write_text('{"slice_axis": 0}')
    out, info = wiener_grid.network_output("colin_rician5", 1, None, "nsn2n_best_wiener")
    assert out.shape == (2, 3, 4) and info == {"slice_axis": 0} and calls == []


def test_reuse_network_applies_the_stage_to_the_cached_output_of_the_same_training_and_trains_only_when_it_differs(
    tmp_path, monkeypatch
):
    """--reuse-network: a row with the Wiener stage whose training's network output is cached and scores exactly as
    the stored network-alone result gets the stage applied to it (no training); otherwise it trains."""
    require("torch", "torch==2.13.0 first, see README")
    import NSN2NDenoiseLib
    from NSN2NDenoiseLib.wiener import apply_wiener

    for row, wiener in (("nsn2n", "matched"), ("nsn2n_nowiener", "off"), ("nsn2n_filters", "filters")):
        monkeypatch.setitem(
            protocol.NSN2N_ROWS, row, ("fast", {**TINY, "inference": {"axes": "slice", "wiener": wiener}})
        )
    ds = _phantom_dataset("ct_gauss30", "ct", noise_seed=0, phantom_seed=2)
    monkeypatch.setattr(protocol, "_build", lambda case, seed: ds)
    protocol.run_case("ct_gauss30", (1,), ["nsn2n"], root=tmp_path)
    alone = json.loads(protocol.result_path("ct_gauss30", 1, "nsn2n_nowiener", tmp_path).read_text())
    network = np.load(wiener_grid.cache_path("ct_gauss30", 1))
    trainings = []
    real = NSN2NDenoiseLib.denoise
    monkeypatch.setattr(NSN2NDenoiseLib, "denoise", lambda *a, **k: trainings.append(1) or real(*a, **k))
    monkeypatch.setattr(protocol, "REUSE_ROOT", tmp_path)
    protocol.run_case("ct_gauss30", (1,), ["nsn2n_filters"], root=tmp_path)
    assert trainings == []
    stored = json.loads(protocol.result_path("ct_gauss30", 1, "nsn2n_filters", tmp_path).read_text())
    expected = network.copy()
    info = json.loads(wiener_grid.cache_path("ct_gauss30", 1).with_suffix(".json").read_text())
    axis = info["slice_axis"]
    apply_wiener(
        np.moveaxis(ds.noisy, axis, 0), np.moveaxis(expected, axis, 0), tuple(info["inplane_noise_lag1"]), "filters"
    )
    assert stored["quality"]["psnr"] == pytest.approx(protocol._score(ds, expected)["psnr"], abs=1e-9)
    assert stored["info"]["wiener"]["kind"] == "filters" and stored["params"] == protocol.run_params(
        "nsn2n_filters", {}
    )
    assert stored["info"]["network_reused"]["network_alone_psnr"] == alone["quality"]["psnr"]
    assert stored["cost"]["seconds"] == pytest.approx(
        alone["cost"]["seconds"] + stored["info"]["phase_seconds"]["wiener"]
    )
    # a cache that is not the stored network output: trained again
    np.save(wiener_grid.cache_path("ct_gauss30", 1), network + 1.0)
    protocol.run_case("ct_gauss30", (1,), ["nsn2n_filters"], force=True, root=tmp_path)
    assert trainings == [1]
    again = json.loads(protocol.result_path("ct_gauss30", 1, "nsn2n_filters", tmp_path).read_text())
    assert again["quality"]["psnr"] == pytest.approx(stored["quality"]["psnr"], abs=1e-6)
    assert "network_reused" not in again["info"]


def test_bm4d_given_the_true_spectrum_needs_a_noise_of_known_spectrum_and_passes_it_on(monkeypatch):
    """bm4d itself is optional (non-commercial licence, not in the test extra): what it is given is checked."""
    from benchmarks import baselines, noise

    ds = _phantom_dataset("ct_inplane30", "ct", noise_seed=0, phantom_seed=1)
    with pytest.raises(ValueError, match="needs a noise of known spectrum"):
        protocol._run_method("bm4d_spectrum", ds, 1, {})
    ds.noise_psd = noise.white_psd(ds.noisy.shape, 20.0)
    given = {}

    def bm4d(z, sigma_psd):
        given.update(z=z, psd=sigma_psd)
        return z * 0.5

    monkeypatch.setattr(baselines, "_import_bm4d", lambda: type("bm4d", (), {"bm4d": staticmethod(bm4d)}))
    out, info = protocol._run_method("bm4d_spectrum", ds, 1, {})
    np.testing.assert_array_equal(given["psd"], ds.noise_psd)
    np.testing.assert_array_equal(given["z"], ds.noisy)
    assert given["psd"].dtype == np.float64 and out.dtype == np.float32
    np.testing.assert_allclose(out, ds.noisy * 0.5)
    assert info["sigma_source"] == "the noise's true spectrum" and info["true_sigma"] == 20.0
