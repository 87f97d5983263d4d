"""Denoising a cohort of volumes as tasks of Ray: ``nsn2n batch``.

Each volume is one Ray task that reads its file, calls :func:`api.denoise` and writes the output atomically
(:func:`volume_io.write_volume`). Ray schedules the tasks: on a local Ray started for the run (the default) or on
an existing cluster given by its address; each task asks for one GPU where the cluster has GPUs, else for
``threads`` CPUs (and torch uses that many threads). On a cluster of several machines every input and output path
must be visible to every node under the same name (a shared file system).

The summary (CSV, one row per volume, :data:`SUMMARY_FIELDS`) is rewritten atomically as each volume finishes, so
an interrupted or failed run keeps every finished row; a rerun skips volumes whose row says ``done`` and whose
output exists, unless ``force``. A task's error (an unreadable input, a volume NSN2N refuses, a crashed worker)
becomes that volume's ``failed`` row and the rest of the cohort goes on.

Ray is an optional dependency (``pip install .[cluster]``); it is imported only when a cohort runs.
"""

from __future__ import annotations

import csv
import glob
import os
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .config import NSN2NConfig
from .errors import InputError
from .volume_io import WRITE_SUFFIXES

SUMMARY_FIELDS = (
    "input",
    "output",
    "status",
    "seconds",
    "denoise_seconds",
    "device",
    "node",
    "matched_fraction",
    "noise_sigma",
    "iterations",
    "init_from",
    "warnings",
    "error",
)
"""Columns of the summary file; ``status`` is 'done', 'failed' or 'cancelled'; ``seconds`` is the task's wall time
(read, denoise, write), ``denoise_seconds`` the engine's part of it."""

SUMMARY_NAME = "summary.csv"
MODEL_NAME = "cohort_model.safetensors"
"""Where ``reuse`` keeps the network trained on the first volume, in the output folder."""
READ_SUFFIXES = (".nrrd", ".nhdr", ".nii", ".nii.gz", ".mha", ".mhd", ".dcm")
OBJECT_STORE_BYTES = 200 * 2**20
"""The local Ray's shared object store: tasks pass only paths and small rows through it."""
REUSE_FRACTION = 0.5
"""A warm-started volume with ``reuse`` trains this share of the configured iterations: on the development data a
warm start with half the iterations was within 0.15 dB of a cold start with all of them, and better than a cold
start with the same half (benchmarks/results/cohort/README.md)."""

RowFn = Callable[[dict[str, Any]], None]


@dataclass(frozen=True)
class CohortItem:
    """One volume of a cohort: where to read it and where to write its denoised version."""

    input: str
    output: str


def _suffix(name: str) -> str:
    lower = name.lower()
    return ".nii.gz" if lower.endswith(".nii.gz") else os.path.splitext(lower)[1]


def _stem(path: Path) -> str:
    name = path.name
    suffix = _suffix(name)
    return name[: len(name) - len(suffix)] if suffix else name


def collect_items(
    source: str | os.PathLike, output_dir: str | os.PathLike | None, suffix: str = ".nrrd"
) -> list[CohortItem]:
    """The cohort's volumes from a folder, a glob pattern or a CSV manifest.

    Parameters
    ----------
    source : path or pattern
        A folder (every volume file in it, and every sub-folder as a DICOM series), a glob pattern such as
        ``'scans/*.nii.gz'``, or a ``.csv`` manifest with the columns ``input`` and ``output`` (relative paths are
        relative to the manifest's folder).
    output_dir : path, optional
        Where outputs go for a folder or a pattern: ``<output_dir>/<input name><suffix>``. Ignored by a manifest.
    suffix : str
        Output file type for a folder or a pattern.

    Raises
    ------
    InputError
        Nothing found, a manifest without its columns, an output folder missing, or two volumes with the same
        output.
    """
    src = str(source)
    if src.lower().endswith(".csv") and os.path.isfile(src):
        items = _read_manifest(Path(src))
    else:
        if os.path.isdir(src):
            paths = sorted(
                p for p in Path(src).iterdir() if (p.is_file() and _suffix(p.name) in READ_SUFFIXES) or p.is_dir()
            )
        elif glob.has_magic(src):
            paths = sorted(Path(p) for p in glob.glob(src))
        else:
            raise InputError(f"{src} is neither a folder, a glob pattern nor a .csv manifest: check the path.")
        if output_dir is None:
            raise InputError("Give an output folder (--output-dir) for a folder or a pattern of inputs.")
        suffix = suffix.lower() if suffix.startswith(".") else "." + suffix.lower()
        if suffix not in WRITE_SUFFIXES:
            raise InputError(f"Cannot write {suffix!r} files: choose .nrrd, .nii.gz, .nii, .mha, .mhd or .nhdr.")
        out = Path(output_dir)
        items = [CohortItem(str(p), str(out / (_stem(p) + suffix))) for p in paths]
    if not items:
        raise InputError(f"No volumes found in {src}.")
    outputs = [os.path.abspath(i.output) for i in items]
    if len(set(outputs)) != len(outputs):
        dup = next(o for o in outputs if outputs.count(o) > 1)
        raise InputError(f"Two volumes would be written to {dup}: give each volume its own output.")
    return items


def _read_manifest(path: Path) -> list[CohortItem]:
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames is None or not {"input", "output"} <= set(reader.fieldnames):
            raise InputError(f"The manifest {path} needs a header with the columns 'input' and 'output'.")
        rows = list(reader)
    base = path.parent
    return [
        CohortItem(str(base / r["input"].strip()), str(base / r["output"].strip()))
        for r in rows
        if r.get("input") and r["input"].strip()
    ]


def read_summary(path: str | os.PathLike) -> dict[str, dict[str, str]]:
    """The rows of a summary file keyed by input path ({} when there is none)."""
    p = Path(path)
    if not p.is_file():
        return {}
    with open(p, newline="") as f:
        return {row["input"]: row for row in csv.DictReader(f)}


def write_summary(path: str | os.PathLike, rows: Iterable[dict[str, Any]]) -> None:
    """Write the summary atomically (a temporary file moved into place): a reader never sees half a file."""
    p = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=".nsn2n-summary-", suffix=".csv", dir=p.parent)
    try:
        with os.fdopen(fd, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=SUMMARY_FIELDS, extrasaction="ignore")
            writer.writeheader()
            for row in rows:
                writer.writerow({k: row.get(k, "") for k in SUMMARY_FIELDS})
        os.replace(tmp, p)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def denoise_file(
    item: CohortItem,
    config: dict[str, Any],
    init_from: str | None = None,
    save_model: str | None = None,
) -> dict[str, Any]:
    """Denoise one file and return its summary row; every error becomes a 'failed' row (the body of a task).

    ``config`` is ``NSN2NConfig.to_dict()``; ``init_from`` a model file to warm-start from; ``save_model`` where
    to save the trained network.
    """
    from .api import denoise
    from .errors import explain
    from .volume_io import check_output_path, check_paths_differ, read_volume, write_volume

    t0 = time.perf_counter()
    row: dict[str, Any] = {"input": item.input, "output": item.output, "init_from": init_from or ""}
    try:
        row["node"] = _node_id()
        cfg = NSN2NConfig.from_dict(config)
        row["iterations"] = cfg.training.iterations
        out = check_output_path(item.output)
        check_paths_differ(item.input, out)
        from .model_io import start_from

        cfg, init_state = start_from(cfg, init_from)  # the model decides the network, as in nsn2n denoise
        loaded = read_volume(item.input)
        result, report, state = denoise(loaded.array, loaded.spacing_kji, cfg, init_model=init_state, return_model=True)
        write_volume(out, result, loaded.image)
        if save_model:
            from .model_io import save_model as save

            save(save_model, state, cfg, trained_on=os.path.basename(item.input))
        row.update(
            status="done",
            denoise_seconds=round(report.total_seconds, 2),
            device=report.device_name,
            matched_fraction=round(report.matched_fraction, 4),
            noise_sigma=round(report.noise_sigma, 4),
            warnings=" | ".join(report.warnings),
        )
    except Exception as exc:  # noqa: BLE001 - one volume's failure is its row, never the cohort's
        row.update(status="failed", error=str(explain(exc)))
    row["seconds"] = round(time.perf_counter() - t0, 2)
    return row


def _node_id() -> str:
    try:
        import ray

        if ray.is_initialized():
            return ray.get_runtime_context().get_node_id()[:12]
    except Exception:  # noqa: BLE001 - the node is informative only
        pass
    return ""


def _import_ray():
    try:
        import ray
    except ImportError as exc:
        raise InputError(
            "nsn2n batch runs volumes as tasks of Ray, which is not installed: pip install 'nsn2n[cluster]' "
            "(or pip install .[cluster] in the source folder)."
        ) from exc
    return ray


def _package_path() -> str:
    """The folder that holds NSN2NDenoiseLib, for the workers' PYTHONPATH (a source checkout is not installed)."""
    return str(Path(__file__).resolve().parents[1])


def start_ray(address: str | None, workers: int, threads: int) -> bool:
    """Connect to the cluster at ``address``, or start a local Ray with ``workers * threads`` CPUs.

    Returns whether this call started (or connected) Ray, i.e. whether the caller should shut it down.
    """
    ray = _import_ray()
    if ray.is_initialized():
        return False
    env = {"PYTHONPATH": os.pathsep.join(p for p in (_package_path(), os.environ.get("PYTHONPATH", "")) if p)}
    common = {"runtime_env": {"env_vars": env}, "log_to_driver": False, "configure_logging": False}
    if address:
        ray.init(address=address, **common)
    else:
        ray.init(
            address="local",  # a new Ray even where 'ray start' left the address of another one
            num_cpus=workers * threads,
            object_store_memory=OBJECT_STORE_BYTES,
            include_dashboard=False,
            **common,
        )
    return True


def run_cohort(
    items: list[CohortItem],
    config: NSN2NConfig,
    summary_path: str | os.PathLike,
    *,
    address: str | None = None,
    workers: int = 1,
    threads: int = 1,
    force: bool = False,
    init_from: str | None = None,
    reuse: bool = False,
    reuse_iterations: int | None = None,
    on_row: RowFn | None = None,
    cancel: Callable[[], bool] | None = None,
) -> list[dict[str, Any]]:
    """Denoise ``items`` as Ray tasks and keep ``summary_path`` up to date; return every volume's row.

    Parameters
    ----------
    items : list of CohortItem
    config : NSN2NConfig
        The configuration of every volume (``training.threads`` is set to ``threads`` on CPU tasks).
    summary_path : path
        The CSV summary; its 'done' rows whose output exists are skipped unless ``force``.
    address : str, optional
        An existing Ray cluster (``host:port``, or 'auto'); None starts a local Ray with ``workers`` CPU tasks at a
        time, shut down at the end.
    workers, threads : int
        Tasks at a time on the local Ray, and CPU threads (Ray CPUs) per task where the cluster has no GPU.
    init_from : str, optional
        A model file (:mod:`model_io`) every volume starts from.
    reuse : bool
        Train the first volume to run fully and save its network beside the summary (:data:`MODEL_NAME`), then
        start every other volume from it with ``reuse_iterations`` iterations (default: :data:`REUSE_FRACTION` of
        the configured iterations).
    on_row : callable(row), optional
        Called in this process with each row as its volume finishes (the command line's progress bar).
    cancel : callable returning bool, optional
        Checked about every half second; when true, running tasks are cancelled, their rows say 'cancelled', and
        :class:`errors.CancelledError` is raised after the summary is written.

    Raises
    ------
    InputError
        Ray is not installed, or the summary's folder does not exist.
    CancelledError
        ``cancel()`` turned true (or the run was interrupted); finished volumes are kept.
    """
    from .errors import CancelledError

    summary_path = Path(summary_path)
    if not summary_path.parent.is_dir():
        raise InputError(f"The summary's folder {summary_path.parent} does not exist: create it first.")
    ray = _import_ray()
    previous = {} if force else read_summary(summary_path)
    rows: dict[str, dict[str, Any]] = {}
    todo: list[CohortItem] = []
    for item in items:
        old = previous.get(item.input)
        if old is not None and old.get("status") == "done" and os.path.exists(item.output):
            rows[item.input] = old
        else:
            todo.append(item)
    # Rows of volumes that are no longer in the cohort stay in the summary.
    kept = {k: v for k, v in previous.items() if k not in {i.input for i in items}}

    def flush() -> None:
        order = [rows[i.input] for i in items if i.input in rows]
        write_summary(summary_path, [*kept.values(), *order])

    def record(row: dict[str, Any]) -> None:
        rows[row["input"]] = row
        flush()
        if on_row is not None:
            on_row(row)

    flush()
    if not todo:
        return [rows[i.input] for i in items]

    pending: dict[Any, CohortItem] = {}

    def drain() -> None:
        """Wait for every pending task, recording each row as it comes; honour ``cancel``."""
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1, timeout=0.5)
            for ref in done:
                record(_result(ray, ref, pending.pop(ref)))
            if cancel is not None and cancel():
                raise CancelledError("The cohort was cancelled; finished volumes are kept.")

    started = start_ray(address, workers, threads)
    try:
        base = config.to_dict()
        if ray.cluster_resources().get("GPU", 0) > 0:
            options = {"num_gpus": 1, "num_cpus": 1}
        else:
            options = {"num_cpus": threads}
            base["device"] = "cpu"
            base["training"]["threads"] = threads
        # max_retries: a task whose worker died (e.g. killed for memory) runs once more, then is a failed row.
        task = ray.remote(max_retries=1)(denoise_file).options(**options)
        queue = list(todo)
        model_path = str(summary_path.parent / MODEL_NAME)
        if reuse and init_from is None and os.path.exists(model_path) and not force:
            init_from = model_path  # the first volume of an earlier run already trained it
        if reuse and init_from is None:
            first = queue.pop(0)
            pending[task.remote(first, base, None, model_path)] = first
            drain()
            init_from = model_path if rows[first.input]["status"] == "done" else None
        cfg = base
        if reuse and init_from:
            warm = reuse_iterations or max(1, round(REUSE_FRACTION * config.training.iterations))
            cfg = {**base, "training": {**base["training"], "iterations": warm}}
        for item in queue:
            pending[task.remote(item, cfg, init_from)] = item
        drain()
    except (KeyboardInterrupt, CancelledError) as exc:
        for ref, item in pending.items():
            ray.cancel(ref, force=True)
            rows[item.input] = {"input": item.input, "output": item.output, "status": "cancelled"}
        flush()
        if isinstance(exc, KeyboardInterrupt):
            raise CancelledError("Interrupted; finished volumes are kept.") from exc
        raise
    finally:
        if started:
            ray.shutdown()
    return [rows[i.input] for i in items]


def _result(ray, ref, item: CohortItem) -> dict[str, Any]:
    """The row a task returned, or a 'failed' row when the task itself died (a crashed worker or node)."""
    try:
        return ray.get(ref)
    except Exception as exc:  # noqa: BLE001 - a dead task is its volume's failure only
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        error = f"{type(exc).__name__}: {first}"
        return {"input": item.input, "output": item.output, "status": "failed", "error": error}


__all__ = ["CohortItem", "collect_items", "read_summary", "write_summary", "denoise_file", "run_cohort", "start_ray"]
