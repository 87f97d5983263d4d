"""A background denoising job with no Qt: the worker process (:mod:`.worker`) runs the engine.

Why a process and not a thread: inside 3D Slicer the main thread holds Python's lock (the GIL) between GUI
events, so a training thread in Slicer's own interpreter is starved (4.3 times slower, measured). A separate
process trains at full speed whatever the main thread does, a cancel ends it (GPU memory included), and a crash
in torch cannot take Slicer down.

A job owns a temporary folder. :meth:`DenoiseJob.start` checks the configuration and the interpreter, then
returns at once; the job's own daemon thread writes the volume there as NRRD, starts
``python -m NSN2NDenoiseLib.worker input.nrrd output.nrrd --report report.json <option flags>`` (with
``--config config.json`` for a configuration beyond the option table, and ``--save-model`` / ``--init-from``
with absolute paths when the job saves or starts from a model), waits for it to end, reads the result
back and removes the folder, whatever the outcome. SimpleITK releases Python's lock while it converts, writes
and reads, so none of that file work stalls the caller's thread (a Qt timer in Slicer): :meth:`DenoiseJob.poll`
only reads the state. One daemon thread per pipe does nothing but blocking ``readline()`` calls (which release
the GIL) and stores the parsed progress records and error lines under a lock.

Only one job runs at a time in a process: training uses every core or the whole GPU, and two jobs would only
slow each other down and double the memory. :func:`start_job` raises :class:`BusyError` while one is running.
"""

from __future__ import annotations

import atexit
import collections
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from . import errors
from .errors import CancelledError, ConfigError, DeviceError, InputError, NSN2NError

PENDING = "pending"
RUNNING = "running"
DONE = "done"
FAILED = "failed"
CANCELLED = "cancelled"
FINISHED_STATES = (DONE, FAILED, CANCELLED)

PROGRESS_PREFIX = "nsn2n-progress "
"""Prefix of the worker's JSON progress lines (``worker.PROGRESS_PREFIX``; restated so that this module imports
without the engine's dependencies, and checked equal by the tests)."""
ERROR_PREFIX = "nsn2n: error: "
WARNING_PREFIX = "nsn2n: warning: "

YIELD_S = 0.003
"""Seconds each poll() of a running job releases Python's lock for the job's threads (see :meth:`DenoiseJob.poll`)."""
KILL_GRACE_S = 5.0
"""Seconds a cancelled worker gets to exit after SIGTERM before the whole process tree is killed."""
FILL_POLL_INTERVAL_S = 0.005
"""Seconds :func:`wait` sleeps between polls while a job copies its result into the scene."""
REMAINING_MIN_FRACTION = 0.02
"""Time left is estimated only once this share of the run is done; earlier it is mostly start-up time."""

LIB_PARENT = str(Path(__file__).resolve().parent.parent)
"""The folder holding ``NSN2NDenoiseLib``, prepended to the worker's PYTHONPATH."""

_DEVICE_IN_START = re.compile(r"<filter-start>.*<filter-comment>.* on (\w+)</filter-comment>")
_ERROR_TYPES = {
    errors.EXIT_INPUT: InputError,
    errors.EXIT_DEVICE: DeviceError,
    errors.EXIT_CANCELLED: CancelledError,
}


class BusyError(NSN2NError):
    """Another denoising job is still running in this process."""


@dataclass(frozen=True)
class Progress:
    """Where a run stands, from the worker's last progress record.

    Attributes
    ----------
    phase : str
        'weights', 'training' or 'inference' (the engine's phases).
    step, total : int
        Steps done and steps in this phase (iterations in 'training').
    loss : float or None
        Training loss of the last steps, in normalised intensity units squared; None outside training.
    fraction : float
        Share 0..1 of the whole run (all phases, weighed by the cost model) that is done.
    elapsed_s : float
        Seconds since the job started its process.
    remaining_s : float or None
        Estimated seconds left, ``elapsed * (1 - f) / f`` at the last record, counted down since; None until
        :data:`REMAINING_MIN_FRACTION` of the run is done.
    device : str or None
        'cpu' or 'cuda' as the worker announced it, or None before it did.
    """

    phase: str
    step: int
    total: int
    loss: float | None
    fraction: float
    elapsed_s: float
    remaining_s: float | None
    device: str | None = None

    def describe(self) -> str:
        """One human line, e.g. ``'training 300/1500 on CPU, loss 0.00213, about 2 min 05 s left'``."""
        text = f"{self.phase} {self.step}/{self.total}"
        if self.device:
            text += f" on {'GPU' if self.device == 'cuda' else self.device.upper()}"
        if self.loss is not None:
            text += f", loss {self.loss:.4g}"
        if self.remaining_s is not None:
            text += f", about {format_seconds(self.remaining_s)} left"
        return text


def format_seconds(seconds: float) -> str:
    """Format a duration in seconds as '45 s', '2 min 05 s' or '1 h 02 min'."""
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {(seconds % 3600) // 60:02d} min"


def write_input(path: str | os.PathLike, volume: np.ndarray, spacing_kji) -> None:
    """Write a K,J,I volume as an uncompressed NRRD file with the given K,J,I spacing (mm).

    Only the voxels and the spacing matter to the engine; the caller keeps the geometry. ``volume`` may be a view
    (e.g. ``slicer.util.arrayFromVolume``): it is read once, here, and not kept. SimpleITK releases Python's lock
    while it copies and writes, so this may run in a background thread without stalling the main thread.
    """
    import SimpleITK as sitk

    image = sitk.GetImageFromArray(np.asarray(volume))  # K,J,I array -> x=I, y=J, z=K image
    image.SetSpacing(tuple(float(s) for s in reversed(tuple(spacing_kji))))
    sitk.WriteImage(image, str(path), False)


def read_output(path: str | os.PathLike) -> np.ndarray:
    """The K,J,I float32 voxels of the worker's output file.

    A view of the SimpleITK image's buffer when the file holds float32 (the worker's output), so no copy; the
    view keeps the image alive. Reading releases Python's lock (safe in a background thread).
    """
    import SimpleITK as sitk

    image = sitk.ReadImage(str(path))
    view = sitk.GetArrayViewFromImage(image)
    if view.dtype != np.float32:
        return np.asarray(view, dtype=np.float32)
    return np.asarray(_KeepAlive(view, image))


class _KeepAlive:
    """Exposes a view of a SimpleITK image's buffer and holds the image: ``np.asarray`` of it is a plain array
    whose ``base`` keeps the buffer alive (``GetArrayViewFromImage`` alone does not)."""

    def __init__(self, view: np.ndarray, image) -> None:
        self.__array_interface__ = view.__array_interface__
        self._view, self._image = view, image


def expressible_by_options(config) -> bool:
    """True when the option flags of :data:`options.OPTIONS` reproduce ``config`` exactly."""
    from .options import from_config, to_config

    return to_config(from_config(config)) == config


def worker_arguments(config, folder: str | os.PathLike | None = None) -> list[str]:
    """The worker's arguments that reproduce ``config``.

    A configuration of the option table (:data:`options.OPTIONS`) goes as option flags. Any other one (e.g. a
    narrower network for a test, or a run report's ``config``) is written as ``config.json`` into ``folder``
    (the job's temporary folder) and passed with ``--config``, with the option flags of its values on top (which
    change nothing). Without a folder such a configuration raises :class:`ConfigError`.
    """
    from .options import OPTIONS, from_config

    values = from_config(config)
    args: list[str] = []
    if not expressible_by_options(config):
        if folder is None:
            raise ConfigError(
                "This configuration sets fields beyond the module's options (preset, "
                + ", ".join(o.name for o in OPTIONS[1:])
                + "); the worker receives it as a --config file, which needs the job's folder."
            )
        path = Path(folder) / "config.json"
        path.write_text(json.dumps(config.to_dict(), indent=1))
        args += ["--config", str(path)]
    for option in OPTIONS:
        args += [option.flag, str(values[option.name])]
    return args


def _kill_tree(process: subprocess.Popen, hard: bool) -> None:
    """Signal the worker and everything it started (a Slicer launcher's child included)."""
    if process.poll() is not None:
        return
    try:
        if os.name == "nt":
            # taskkill /T ends the whole tree; there is no gentle signal for a console-less child on Windows.
            subprocess.run(
                ["taskkill", "/T", "/F", "/PID", str(process.pid)], capture_output=True, check=False, timeout=30
            )
        else:
            os.killpg(process.pid, signal.SIGKILL if hard else signal.SIGTERM)  # its own session: pgid == pid
    except (ProcessLookupError, PermissionError, OSError, subprocess.SubprocessError):
        pass  # already gone


class DenoiseJob:
    """One run of the worker process on one volume.

    Parameters
    ----------
    volume : numpy.ndarray
        Volume in K,J,I order (slice, row, column), any real dtype. Written to the job's folder by the job's
        thread right after :meth:`start` and then released, so a view of a volume node's voxels is enough. The
        caller must not change those voxels in place until :attr:`input_written` is True (a second or two for a
        large volume); replacing the node's image data is safe, since the view keeps the old buffer alive.
    spacing : tuple of 3 floats
        Voxel spacing in mm in the same K,J,I order.
    config : NSN2NConfig
        The run's configuration; see :func:`worker_arguments` for how the worker receives it.
    python : str, optional
        The interpreter that runs the worker; ``sys.executable`` by default. Inside Slicer it must be
        ``PythonSlicer`` (the Slicer module picks it), since ``sys.executable`` is Slicer itself there.
    save_model : path, optional
        Where the worker saves the trained model (``.safetensors``, written atomically after a successful run;
        see :mod:`.model_io`). None saves nothing.
    init_model : path, optional
        A model saved before, to start training from (the worker uses its network settings; a model that does
        not fit or a file that is not a safetensors model fails the job with one line). None starts from scratch.
    trained_on : str, optional
        The name the saved model records as the volume it was trained on (e.g. the volume node's name).

    Notes
    -----
    Use :func:`start_job` to create and start a job, so that only one runs at a time. Every method and property
    may be used from any thread: the file work (input, result, folder) happens in the job's own thread, so
    :meth:`poll` only reads the state and returns in microseconds. Nothing here needs Qt.
    """

    def __init__(
        self,
        volume: np.ndarray,
        spacing,
        config,
        python: str | None = None,
        save_model: str | os.PathLike | None = None,
        init_model: str | os.PathLike | None = None,
        trained_on: str | None = None,
    ):
        self._volume: np.ndarray | None = volume
        self._spacing = tuple(float(s) for s in spacing)
        self.config = config
        self.python = python or sys.executable
        # Absolute: the worker runs in the job's folder.
        self.save_model = str(Path(save_model).expanduser().resolve()) if save_model else None
        self.init_model = str(Path(init_model).expanduser().resolve()) if init_model else None
        self.trained_on = trained_on
        self._lock = threading.RLock()
        self._state = PENDING
        self._cancel_requested = False
        self._process: subprocess.Popen | None = None
        self._readers: list[threading.Thread] = []
        self._runner: threading.Thread | None = None
        self._command: list[str] = []
        self._folder: Path | None = None
        self._record: dict[str, Any] | None = None
        self._record_time = 0.0
        self._device: str | None = None
        self._error_line: str | None = None
        self.warnings: list[str] = []
        """The worker's warning lines (without the prefix)."""
        self._log: collections.deque[str] = collections.deque(maxlen=40)
        self._result: np.ndarray | None = None
        self._report: dict[str, Any] | None = None
        self._error: NSN2NError | None = None
        self.traceback: str | None = None
        """The worker's last stderr lines after an unexpected failure, for the log; None otherwise."""
        self.returncode: int | None = None
        """The worker's exit status once it has ended."""
        self._start_time: float | None = None
        self._end_time: float | None = None

    # -- control ---------------------------------------------------------------------------------------------

    def start(self) -> None:
        """Check the configuration and the interpreter, then start the job's thread, which writes the input and
        starts the worker. Returns at once. Prefer :func:`start_job`, which enforces one job at a time.

        Raises
        ------
        NSN2NError
            If the job was started before, or the interpreter is not an executable file. (A failure to write the
            input or to start the process afterwards makes the state 'failed'.)
        """
        with self._lock:
            if self._state != PENDING:
                raise NSN2NError("This job has already been started; create a new job to run again.")
            if shutil.which(self.python) is None:
                raise NSN2NError(f"Could not start the denoising process with {self.python!r}: no such executable.")
            self._folder = Path(tempfile.mkdtemp(prefix="nsn2n-"))
            try:
                args = worker_arguments(self.config, self._folder)
                if self.save_model:
                    args += ["--save-model", self.save_model]
                    if self.trained_on:
                        args += ["--trained-on", self.trained_on]
                if self.init_model:
                    args += ["--init-from", self.init_model]
            except BaseException:
                self._remove_folder()
                raise
            self._command = [
                self.python, "-m", "NSN2NDenoiseLib.worker",
                str(self._folder / "input.nrrd"), str(self._folder / "output.nrrd"),
                "--report", str(self._folder / "report.json"), "--no-compress", *args,
            ]  # fmt: skip
            self._state = RUNNING
            self._start_time = time.monotonic()
            self._runner = threading.Thread(target=self._run, name="NSN2N job", daemon=True)
            self._runner.start()

    @property
    def input_written(self) -> bool:
        """True once the input volume has been written to the job's file (or the job ended before); from then on
        the array given to the job is not read any more."""
        with self._lock:
            return self._volume is None

    # -- the job's thread: input file, process, result file, folder ------------------------------------------

    def _run(self) -> None:
        try:
            if not self._start_process():
                return
            process = self._process
            process.wait()
            # The readers end at the pipes' EOF, right after the exit; the last error line must be in first.
            for reader in self._readers:
                reader.join(5.0)
            self._collect(process.returncode)
        except BaseException as exc:  # noqa: BLE001 - never leave the job running with nobody to end it
            self._end(FAILED, errors.explain(exc) if isinstance(exc, Exception) else NSN2NError(str(exc)))

    def _start_process(self) -> bool:
        try:
            write_input(self._folder / "input.nrrd", self._volume, self._spacing)
        except Exception as exc:  # noqa: BLE001 - e.g. a full disk: a failure with a message
            self._end(FAILED, errors.explain(exc))
            return False
        with self._lock:
            self._volume = None
            if self._cancel_requested:
                self._end(CANCELLED, CancelledError("The run was cancelled before it started."))
                return False
            env = dict(os.environ)
            env["PYTHONPATH"] = os.pathsep.join(p for p in (LIB_PARENT, env.get("PYTHONPATH")) if p)
            env["PYTHONUNBUFFERED"] = "1"
            kwargs: dict[str, Any] = {}
            if os.name == "nt":
                kwargs["creationflags"] = subprocess.CREATE_NEW_PROCESS_GROUP | subprocess.CREATE_NO_WINDOW
            else:
                kwargs["start_new_session"] = True  # its own process group: a cancel kills the whole tree
            try:
                # Large buffers: when a reader thread gets the GIL it drains everything the pipe holds at once.
                self._process = subprocess.Popen(
                    self._command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                    env=env, cwd=str(self._folder), bufsize=1 << 16, **kwargs,
                )  # fmt: skip
            except OSError as exc:
                self._end(FAILED, NSN2NError(f"Could not start the denoising process with {self.python!r}: {exc}"))
                return False
            self._start_time = time.monotonic()
        for stream, handle in ((self._process.stdout, self._on_stdout), (self._process.stderr, self._on_stderr)):
            reader = threading.Thread(target=self._read, args=(stream, handle), name="NSN2N pipe reader", daemon=True)
            reader.start()
            self._readers.append(reader)
        return True

    def _collect(self, code: int) -> None:
        """The end of a run: the result and report when it succeeded, else the error; then the folder goes."""
        self.returncode = code
        self._end_time = time.monotonic()
        if self._cancel_requested:
            self._end(CANCELLED, CancelledError("The run was cancelled; no result was kept."))
            return
        if code != errors.EXIT_OK:
            with self._lock:
                error = self._worker_error(code)
            self._end(FAILED, error)
            return
        try:
            result = read_output(self._folder / "output.nrrd")  # releases the GIL while it reads
            report_path = self._folder / "report.json"
            report = json.loads(report_path.read_text()) if report_path.is_file() else {}
        except Exception as exc:  # noqa: BLE001 - e.g. no memory for the result: a failure with a message
            self._end(FAILED, errors.explain(exc))
            return
        with self._lock:
            if self._cancel_requested:  # cancelled while the result was read: keep nothing
                self._end(CANCELLED, CancelledError("The run was cancelled; no result was kept."))
                return
            self._result, self._report = result, report
            self._end(DONE, None)

    def _end(self, state: str, error: NSN2NError | None) -> None:
        with self._lock:
            self._volume = None
            if self._end_time is None:
                self._end_time = time.monotonic()
            self._remove_folder()
            _release(self)  # before the state changes: a caller that sees the end may start the next job
            self._state, self._error = state, error

    def cancel(self) -> None:
        """Stop the run: SIGTERM to the worker's process tree, SIGKILL after :data:`KILL_GRACE_S`. Returns at once."""
        with self._lock:
            self._cancel_requested = True
            if self._state == PENDING:
                self._state = CANCELLED
                self._error = CancelledError("The run was cancelled before it started.")
                self._volume = None
                return
            process = self._process
        if process is None or process.poll() is not None:
            return  # still writing the input (the job's thread checks the flag) or already ended
        _kill_tree(process, hard=False)
        threading.Thread(target=self._reap, args=(process,), name="NSN2N reaper", daemon=True).start()

    @staticmethod
    def _reap(process: subprocess.Popen) -> None:
        try:
            process.wait(KILL_GRACE_S)
        except subprocess.TimeoutExpired:
            _kill_tree(process, hard=True)

    @property
    def cancel_requested(self) -> bool:
        """True once :meth:`cancel` was called (the process may still be winding down)."""
        return self._cancel_requested

    def wait(self, timeout: float | None = None, poll_interval: float = 0.1, callback: Callable | None = None) -> bool:
        """Block until the run ends or ``timeout`` seconds pass; True when it has ended. See :func:`wait`."""
        return wait(self, timeout, poll_interval, callback) in FINISHED_STATES

    # -- state -----------------------------------------------------------------------------------------------

    def poll(self) -> str:
        """The state now: :data:`PENDING`, :data:`RUNNING`, :data:`DONE`, :data:`FAILED` or :data:`CANCELLED`.

        Only reads it: the job's thread writes the input, reads the result back (so :attr:`result` is set before
        the state becomes 'done') and removes the folder. Cheap from any thread.

        While the job runs, the call also gives up Python's lock for :data:`YIELD_S`: inside Slicer the main thread
        holds the lock between events, and this timer callback is when the job's own threads (writing the input,
        reading the worker's progress and result) get it.
        """
        with self._lock:
            state = self._state
        if state in (PENDING, RUNNING):
            time.sleep(YIELD_S)
        return state

    @property
    def finished(self) -> bool:
        """True when the job is done, failed or cancelled."""
        return self.poll() in FINISHED_STATES

    @property
    def progress(self) -> Progress | None:
        """The latest :class:`Progress`, or None before the worker's first record."""
        with self._lock:
            record, record_time, device = self._record, self._record_time, self._device
        if record is None:
            return None
        now = self._end_time if self._end_time is not None else time.monotonic()
        fraction = min(1.0, max(0.0, float(record.get("fraction") or 0.0)))
        at_record = record_time - (self._start_time or record_time)
        remaining = None
        if fraction >= 1.0:
            remaining = 0.0
        elif fraction > REMAINING_MIN_FRACTION:
            remaining = max(0.0, at_record * (1.0 - fraction) / fraction - (now - record_time))
        loss = record.get("loss")
        return Progress(
            phase=str(record.get("phase", "")),
            step=int(record.get("step", 0)),
            total=int(record.get("total", 0)),
            loss=None if loss is None else float(loss),
            fraction=fraction,
            elapsed_s=now - (self._start_time or now),
            remaining_s=remaining,
            device=device,
        )

    @property
    def device(self) -> str | None:
        """'cpu' or 'cuda' once the worker announced where it runs, else None."""
        with self._lock:
            return self._device

    @property
    def result(self) -> np.ndarray | None:
        """The denoised float32 volume in K,J,I order once the state is 'done', else None."""
        with self._lock:
            return self._result

    @property
    def report(self) -> dict[str, Any] | None:
        """The run report (``RunReport.to_dict()`` as the worker wrote it) once the state is 'done', else None."""
        with self._lock:
            return self._report

    @property
    def error(self) -> NSN2NError | None:
        """The error of a failed or cancelled job (a :class:`CancelledError` for the latter), else None."""
        with self._lock:
            return self._error

    @property
    def elapsed_s(self) -> float:
        """Seconds the job has run (until it ended, for a finished job)."""
        if self._start_time is None:
            return 0.0
        end = self._end_time if self._end_time is not None else time.monotonic()
        return end - self._start_time

    # -- pipe readers (daemon threads: blocking reads, a lock, nothing else) ---------------------------------

    @staticmethod
    def _read(stream, handle: Callable[[str], None]) -> None:
        try:
            for raw in iter(stream.readline, b""):
                handle(raw.decode("utf-8", errors="replace").rstrip("\r\n"))
        except (OSError, ValueError):
            pass  # the pipe was closed under us
        finally:
            stream.close()

    def _on_stdout(self, line: str) -> None:
        if line.startswith(PROGRESS_PREFIX):
            try:
                record = json.loads(line[len(PROGRESS_PREFIX) :])
            except json.JSONDecodeError:
                return
            with self._lock:
                self._record, self._record_time = record, time.monotonic()
                if record.get("device"):
                    self._device = str(record["device"]).split(":")[0]
        elif line.startswith("<filter-start>"):
            match = _DEVICE_IN_START.search(line)
            if match:
                with self._lock:
                    self._device = match.group(1)

    def _on_stderr(self, line: str) -> None:
        with self._lock:
            if line.startswith(ERROR_PREFIX):
                self._error_line = line[len(ERROR_PREFIX) :]
            elif line.startswith(WARNING_PREFIX):
                self.warnings.append(line[len(WARNING_PREFIX) :])
            elif line.strip():
                self._log.append(line)

    def _worker_error(self, code: int) -> NSN2NError:
        if self._error_line is not None:
            return _ERROR_TYPES.get(code, NSN2NError)(self._error_line)
        # No error line: the process died (killed by the system for memory, a crash in a native library).
        self.traceback = "\n".join(self._log) or None
        last = self._log[-1] if self._log else "no message"
        if code is not None and code < 0:
            reason = f"it was ended by signal {-code}"
            if -code == getattr(signal, "SIGKILL", 9):
                reason += ", often the system stopping it for lack of memory. " + errors.OUT_OF_MEMORY_ADVICE
            return NSN2NError(f"The denoising process stopped unexpectedly: {reason} (last output: {last}).")
        return NSN2NError(f"The denoising process failed with exit status {code} (last output: {last}).")

    def _remove_folder(self) -> None:
        if self._folder is not None:
            shutil.rmtree(self._folder, ignore_errors=True)
            self._folder = None

    def _kill_now(self) -> None:
        """At interpreter exit: end the process tree at once and remove the folder."""
        self._cancel_requested = True  # the job's thread starts no process from now on
        if self._process is not None and self._process.poll() is None:
            _kill_tree(self._process, hard=True)
            try:
                self._process.wait(5.0)
            except subprocess.TimeoutExpired:
                pass
        self._remove_folder()


def wait(job, timeout: float | None = None, poll_interval: float = 0.1, callback: Callable | None = None) -> str:
    """The one wait loop of every front end: poll ``job`` until it ends or ``timeout`` seconds pass.

    Parameters
    ----------
    job : DenoiseJob or MRMLDenoiseJob
        Anything with ``poll()`` and ``cancel()``.
    timeout : float, optional
        Seconds; None waits until the end.
    poll_interval : float
        Seconds slept between polls (the sleep releases the GIL).
    callback : callable(job), optional
        Called after every poll while running, e.g. ``slicer.app.processEvents`` or a progress printer.

    Returns
    -------
    str
        The state at return.

    Notes
    -----
    An exception while waiting (Ctrl+C in a console, an error in ``callback``) cancels the job, waits for its
    process to end, then propagates: nothing is left running behind an interrupted call.
    """
    deadline = None if timeout is None else time.monotonic() + timeout
    try:
        while True:
            state = job.poll()
            if state in FINISHED_STATES or state == PENDING:
                return state
            if callback is not None:
                callback(job)
            if deadline is not None and time.monotonic() >= deadline:
                return state
            # While a finished result is copied into the scene step by step (MRMLDenoiseJob.filling), poll again
            # at once: the steps are short, and the callback still runs between them.
            interval = FILL_POLL_INTERVAL_S if getattr(job, "filling", False) else poll_interval
            time.sleep(interval if deadline is None else max(0.0, min(interval, deadline - time.monotonic())))
    except BaseException:
        job.cancel()
        end = time.monotonic() + KILL_GRACE_S + 10.0
        while job.poll() not in FINISHED_STATES and time.monotonic() < end:
            time.sleep(0.05)
        raise


_active_lock = threading.Lock()
_active_job: DenoiseJob | None = None


def _release(job: DenoiseJob) -> None:
    global _active_job
    with _active_lock:
        if _active_job is job:
            _active_job = None


def active_job() -> DenoiseJob | None:
    """The job running in this process, or None."""
    with _active_lock:
        return _active_job


def start_job(
    volume: np.ndarray,
    spacing,
    config,
    python: str | None = None,
    save_model: str | os.PathLike | None = None,
    init_model: str | os.PathLike | None = None,
    trained_on: str | None = None,
) -> DenoiseJob:
    """Create a :class:`DenoiseJob` and start it, unless another job is still running.

    Parameters are those of :class:`DenoiseJob`.

    Raises
    ------
    BusyError
        If a job started earlier has not finished; wait for it or cancel it first.
    """
    global _active_job
    with _active_lock:
        previous = _active_job
    if previous is not None and not previous.finished:  # poll() outside the lock: it may release itself
        raise BusyError("A denoising run is already in progress. Wait for it to finish or cancel it first.")
    job = DenoiseJob(
        volume, spacing, config, python=python, save_model=save_model, init_model=init_model, trained_on=trained_on
    )
    with _active_lock:
        if _active_job is not None and _active_job is not previous:
            raise BusyError("A denoising run is already in progress. Wait for it to finish or cancel it first.")
        _active_job = job
    try:
        job.start()
    except BaseException:
        _release(job)
        raise
    return job


@atexit.register
def _kill_active_job_at_exit() -> None:
    # Closing Slicer (or a console) mid-run must not leave a training process or its folder behind.
    job = active_job()
    if job is not None:
        job._kill_now()
