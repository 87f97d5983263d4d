"""Cohorts (cohort.py, ``nsn2n batch``): volumes as Ray tasks on a local Ray and on a two-node cluster started by
the test, a summary kept up to date, resume after an interrupted run, a corrupt input isolated to its row, and
warm starts from the first volume (``reuse``).

The Ray tests skip where Ray is not installed (``pip install .[cluster]``); the manifest and summary tests run
everywhere.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
from conftest import plumbing_config, require, smooth_noisy_volume

from NSN2NDenoiseLib import cohort
from NSN2NDenoiseLib.errors import CancelledError, InputError

sitk = pytest.importorskip("SimpleITK")
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def ray():
    """Ray, or a skip that says what to install."""
    return require("ray", "pip install .[cluster], the cohort extra")


def write_tiny(path: Path, seed: int) -> np.ndarray:
    """An 8x32x32 (K,J,I) smooth volume with noise, as a volume file."""
    volume = np.concatenate([smooth_noisy_volume(seed), smooth_noisy_volume(seed + 100)[:2]])
    image = sitk.GetImageFromArray(volume)
    image.SetSpacing((1.0, 1.0, 3.0))
    sitk.WriteImage(image, str(path))
    return volume


@pytest.fixture
def cohort_dir(tmp_path):
    """inputs/ with three tiny volumes, and outputs/ (empty)."""
    (tmp_path / "inputs").mkdir()
    (tmp_path / "outputs").mkdir()
    for n in range(3):
        write_tiny(tmp_path / "inputs" / f"vol{n}.nrrd", seed=n)
    return tmp_path


def config(iterations: int = 5):
    return plumbing_config(iterations)


# -- inputs and the summary (no Ray) --------------------------------------------------------------------------------


def test_items_from_a_folder_a_pattern_and_a_manifest(cohort_dir):
    inputs, outputs = cohort_dir / "inputs", cohort_dir / "outputs"
    (inputs / "notes.txt").write_text("not a volume")
    from_folder = cohort.collect_items(inputs, outputs, ".nii.gz")
    assert [Path(i.input).name for i in from_folder] == ["vol0.nrrd", "vol1.nrrd", "vol2.nrrd"]
    assert [Path(i.output).name for i in from_folder] == ["vol0.nii.gz", "vol1.nii.gz", "vol2.nii.gz"]
    from_glob = cohort.collect_items(str(inputs / "vol[12].nrrd"), outputs)
    assert [Path(i.input).name for i in from_glob] == ["vol1.nrrd", "vol2.nrrd"]
    manifest = cohort_dir / "cohort.csv"
    manifest.write_text("input,output\ninputs/vol2.nrrd,outputs/x.nrrd\n\n")
    (item,) = cohort.collect_items(manifest, None)
    assert item == cohort.CohortItem(str(cohort_dir / "inputs/vol2.nrrd"), str(cohort_dir / "outputs/x.nrrd"))


def test_bad_inputs_are_clear_errors(cohort_dir):
    with pytest.raises(InputError, match="No volumes found"):
        cohort.collect_items(str(cohort_dir / "*.none"), cohort_dir)
    with pytest.raises(InputError, match="output folder"):
        cohort.collect_items(cohort_dir / "inputs", None)
    with pytest.raises(InputError, match="neither a folder"):
        cohort.collect_items(cohort_dir / "missing", cohort_dir)
    manifest = cohort_dir / "m.csv"
    manifest.write_text("in,out\na,b\n")
    with pytest.raises(InputError, match="'input' and 'output'"):
        cohort.collect_items(manifest, None)
    manifest.write_text("input,output\na.nrrd,same.nrrd\nb.nrrd,same.nrrd\n")
    with pytest.raises(InputError, match="Two volumes would be written"):
        cohort.collect_items(manifest, None)


def test_summary_round_trip(tmp_path):
    rows = [{"input": "a", "output": "b", "status": "done", "seconds": 1.5, "warnings": "x, y"}]
    cohort.write_summary(tmp_path / "s.csv", rows)
    back = cohort.read_summary(tmp_path / "s.csv")
    assert back["a"]["status"] == "done" and back["a"]["warnings"] == "x, y" and back["a"]["error"] == ""
    assert list(back["a"]) == list(cohort.SUMMARY_FIELDS)
    assert cohort.read_summary(tmp_path / "none.csv") == {}


def test_one_file_failure_is_a_row(tmp_path):
    bad = tmp_path / "bad.nrrd"
    bad.write_bytes(b"NRRD0004\ntype: garbage\n")
    row = cohort.denoise_file(cohort.CohortItem(str(bad), str(tmp_path / "out.nrrd")), config().to_dict())
    assert row["status"] == "failed" and "Cannot read" in row["error"]
    assert not (tmp_path / "out.nrrd").exists()


def test_the_batch_command_says_what_to_install_without_ray(cohort_dir, monkeypatch, capsys):
    from NSN2NDenoiseLib.cli import main

    monkeypatch.setitem(sys.modules, "ray", None)  # import ray now raises ImportError
    code = main(["batch", str(cohort_dir / "inputs"), "--output-dir", str(cohort_dir / "outputs"), "--quiet"])
    assert code == 2
    assert "pip install 'nsn2n[cluster]'" in capsys.readouterr().err


# -- a local Ray ----------------------------------------------------------------------------------------------------


def test_local_ray_two_workers_with_a_corrupt_input_then_resume(ray, cohort_dir):
    inputs, outputs = cohort_dir / "inputs", cohort_dir / "outputs"
    (inputs / "corrupt.nii.gz").write_bytes(b"\x1f\x8b this is not a gzip stream")
    items = cohort.collect_items(inputs, outputs)
    summary = outputs / "summary.csv"
    seen = []
    rows = cohort.run_cohort(items, config(), summary, workers=2, threads=1, on_row=seen.append)
    assert not ray.is_initialized()  # the local Ray started for the run is shut down
    by_name = {Path(r["input"]).name: r for r in rows}
    assert by_name["corrupt.nii.gz"]["status"] == "failed"
    assert "Cannot read" in by_name["corrupt.nii.gz"]["error"]
    for n in range(3):
        row = by_name[f"vol{n}.nrrd"]
        assert row["status"] == "done", row
        assert row["device"] == "CPU" and 0 <= float(row["matched_fraction"]) <= 1 and float(row["noise_sigma"]) > 0
        out = sitk.ReadImage(row["output"])
        assert out.GetSize() == (32, 32, 8) and out.GetSpacing() == (1.0, 1.0, 3.0)
    assert len(seen) == 4
    assert {r["status"] for r in cohort.read_summary(summary).values()} == {"done", "failed"}
    # A rerun skips the finished volumes (their files are not touched) and tries the failed one again.
    mtimes = {o: os.stat(o).st_mtime_ns for o in (r["output"] for r in rows if r["status"] == "done")}
    again = []
    cohort.run_cohort(items, config(), summary, workers=2, threads=1, on_row=again.append)
    assert [Path(r["input"]).name for r in again] == ["corrupt.nii.gz"]
    assert {o: os.stat(o).st_mtime_ns for o in mtimes} == mtimes


def test_cancel_keeps_finished_volumes_and_a_rerun_completes(ray, cohort_dir):
    items = cohort.collect_items(cohort_dir / "inputs", cohort_dir / "outputs")
    summary = cohort_dir / "outputs" / "summary.csv"
    finished = []
    with pytest.raises(CancelledError, match="finished volumes are kept"):
        cohort.run_cohort(
            items, config(40), summary, workers=1, threads=1, on_row=finished.append, cancel=lambda: bool(finished)
        )
    statuses = {Path(k).name: r["status"] for k, r in cohort.read_summary(summary).items()}
    done = [name for name, status in statuses.items() if status == "done"]
    assert len(done) >= 1 and set(statuses.values()) <= {"done", "cancelled"}
    assert len(done) < 3, "cancel came too late to test anything: the volumes finished first"
    assert not list((cohort_dir / "outputs").glob(".nsn2n-summary-*"))
    rest = []
    rows = cohort.run_cohort(items, config(40), summary, workers=1, threads=1, on_row=rest.append)
    assert sorted(Path(r["input"]).name for r in rest) == sorted({Path(i.input).name for i in items} - set(done))
    assert all(r["status"] == "done" for r in rows)


def test_reuse_trains_the_first_volume_and_warm_starts_the_rest(ray, cohort_dir):
    items = cohort.collect_items(cohort_dir / "inputs", cohort_dir / "outputs")
    summary = cohort_dir / "outputs" / "summary.csv"
    rows = cohort.run_cohort(items, config(6), summary, workers=2, threads=1, reuse=True, reuse_iterations=2)
    model = cohort_dir / "outputs" / cohort.MODEL_NAME
    assert model.exists()
    assert [r["status"] for r in rows] == ["done"] * 3
    assert rows[0]["init_from"] == "" and str(rows[0]["iterations"]) == "6"
    assert all(r["init_from"] == str(model) and str(r["iterations"]) == "2" for r in rows[1:])


# -- two Ray nodes on this machine, and the command line ------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def two_node_cluster(ray, tmp_path):
    """(address, environment) of a head and a second node, one CPU each, on this machine.

    They run with token authentication (Ray's default for a new cluster) and a token of their own, so that the test
    neither reads nor writes the user's. 'ray start --block' keeps each node in the foreground: stopping these two
    processes stops exactly this cluster (no 'ray stop', which would stop every Ray of the user)."""
    exe = str(Path(sys.executable).with_name("ray"))
    port = _free_port()
    token = tmp_path / "ray_token"
    token.write_text(uuid.uuid4().hex + uuid.uuid4().hex)
    env = dict(
        os.environ,
        PYTHONPATH=str(ROOT / "NSN2NDenoise"),
        OMP_NUM_THREADS="1",
        RAY_USAGE_STATS_ENABLED="0",
        RAY_AUTH_MODE="token",
        RAY_AUTH_TOKEN_PATH=str(token),
    )
    env.pop("RAY_AUTH_TOKEN", None)
    common = ["--num-cpus=1", "--num-gpus=0", f"--object-store-memory={100 * 2**20}", "--block"]
    head = [exe, "start", "--head", f"--port={port}", "--include-dashboard=false", "--node-ip-address=127.0.0.1"]
    head += [f"--ray-client-server-port={_free_port()}", f"--dashboard-agent-listen-port={_free_port()}"]
    node = [exe, "start", f"--address=127.0.0.1:{port}", "--node-ip-address=127.0.0.1"]
    node += [f"--dashboard-agent-listen-port={_free_port()}"]
    logs = [open(tmp_path / f"ray_{n}.log", "w") for n in ("head", "node")]
    procs = [subprocess.Popen(head + common, env=env, stdout=logs[0], stderr=subprocess.STDOUT)]
    address = f"127.0.0.1:{port}"
    try:
        _wait_for_nodes(address, 1, procs, env)
        procs.append(subprocess.Popen(node + common, env=env, stdout=logs[1], stderr=subprocess.STDOUT))
        _wait_for_nodes(address, 2, procs, env)
        yield address, env
    finally:
        for p in reversed(procs):
            p.terminate()
        for p in reversed(procs):
            try:
                p.wait(timeout=60)
            except subprocess.TimeoutExpired:
                p.kill()
        for f in logs:
            f.close()
        # 'ray start --head' records its address for a later bare ray.init(); this cluster is gone.
        current = Path(tempfile.gettempdir()) / "ray" / "ray_current_cluster"
        if current.is_file() and current.read_text().strip().endswith(f":{port}"):
            current.unlink()


NODES_ALIVE = """
import sys, time, ray
ray.init(address=sys.argv[1], log_to_driver=False)
for _ in range(60):
    alive = sum(n["Alive"] for n in ray.nodes())
    if alive >= int(sys.argv[2]):
        break
    time.sleep(1)
print("alive", alive)
"""


def _wait_for_nodes(address: str, count: int, procs, env, timeout: float = 90.0) -> None:
    """Wait until the cluster has ``count`` live nodes (polled in a subprocess: a driver of another cluster, or
    Ray's authentication state, in this process must not leak into the test)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(p.poll() is not None for p in procs):
            pytest.fail("'ray start' exited early; see the ray_*.log files in the test's tmp_path")
        run = subprocess.run(
            [sys.executable, "-c", NODES_ALIVE, address, str(count)], capture_output=True, text=True, env=env
        )
        if f"alive {count}" in run.stdout:
            return
        time.sleep(1.0)
    pytest.fail(f"the Ray cluster at {address} did not reach {count} nodes in {timeout:.0f} s")


def test_two_nodes_through_the_command_line(two_node_cluster, cohort_dir):
    outputs = cohort_dir / "outputs"
    (cohort_dir / "inputs" / "vol3.nrrd").write_bytes((cohort_dir / "inputs" / "vol0.nrrd").read_bytes())
    cmd = [sys.executable, "-m", "NSN2NDenoiseLib.cli", "batch", str(cohort_dir / "inputs"), "--output-dir"]
    address, env = two_node_cluster
    cmd += [str(outputs), "--address", address, "--threads-per-task", "1", "--iterations", "30"]
    cmd += ["--preset", "fast", "--device", "cpu"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=str(cohort_dir))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "4 of 4 volumes done" in proc.stderr
    rows = cohort.read_summary(outputs / "summary.csv")
    assert [r["status"] for r in rows.values()] == ["done"] * 4
    assert len({r["node"] for r in rows.values()}) == 2, "both nodes should have run volumes"


def test_ctrl_c_on_the_command_line_keeps_finished_volumes(ray, cohort_dir):
    outputs = cohort_dir / "outputs"
    summary = outputs / "summary.csv"
    # Eight volumes, so that work is left when the first is done: with three, a fast machine finished the other two
    # between the poll that saw the first and the interrupt (exit 0, every volume done).
    for n in range(3, 8):
        (cohort_dir / "inputs" / f"vol{n}.nrrd").write_bytes((cohort_dir / "inputs" / f"vol{n % 3}.nrrd").read_bytes())
    cmd = [sys.executable, "-m", "NSN2NDenoiseLib.cli", "batch", str(cohort_dir / "inputs"), "--output-dir"]
    cmd += [str(outputs), "--workers", "1", "--iterations", "300", "--preset", "fast", "--device", "cpu", "--quiet"]
    env = dict(os.environ, PYTHONPATH=str(ROOT / "NSN2NDenoise"), OMP_NUM_THREADS="1")
    # A shell starts background jobs with SIGINT ignored, and a child inherits that (Python then installs no
    # KeyboardInterrupt handler): give the batch the default disposition a terminal's Ctrl+C meets.
    proc = subprocess.Popen(
        cmd,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=str(cohort_dir),
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        start = time.monotonic()
        while time.monotonic() < start + 240 and proc.poll() is None:
            if any(r["status"] == "done" for r in cohort.read_summary(summary).values()):
                break
            time.sleep(0.2)
        # what the interrupt met, for the message of a failure (a timing flake shows here)
        when = {
            "seconds": round(time.monotonic() - start, 1),
            "exited_before_the_interrupt": proc.poll() is not None,
            "done_before_the_interrupt": sum(r["status"] == "done" for r in cohort.read_summary(summary).values()),
        }
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, f"{when}: {err[-2000:]}"
    assert "every finished volume is kept" in err
    rows = cohort.read_summary(summary)
    done = {Path(k).name for k, r in rows.items() if r["status"] == "done"}
    assert 1 <= len(done) < 8, "the interrupt came too late to test anything: the volumes finished first"
    assert all(Path(r["output"]).exists() for r in rows.values() if r["status"] == "done")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=str(cohort_dir), timeout=240)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert {r["status"] for r in cohort.read_summary(summary).values()} == {"done"}
