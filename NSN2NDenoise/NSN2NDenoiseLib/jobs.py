"""A background denoising job with no Qt: one ``threading.Thread`` runs :func:`NSN2NDenoiseLib.denoise`.

The thread gets a private numpy copy of the volume and plain numbers, and hands back numpy arrays and progress
records under a lock. It never touches MRML, VTK or Qt: the caller (a Qt timer in the Slicer widget, a
``wait()`` loop in scripts and tests) applies the result on its own thread. Torch kernels release the GIL, so
training proceeds while the caller's thread keeps the GUI responsive; the Slicer widget also sleeps briefly in
its timer callback so that the worker gets the GIL when the mouse is still (SLICER.md section 3.3).

Only one job runs at a time in a process: training uses every core or the whole GPU, and two jobs would only
slow each other down and double the memory. :func:`start_job` raises :class:`BusyError` while one is running.
"""

from __future__ import annotations

import sys
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import CancelledError, DeviceError, InputError, NSN2NError

PENDING = "pending"
RUNNING = "running"
DONE = "done"
FAILED = "failed"
CANCELLED = "cancelled"
FINISHED_STATES = (DONE, FAILED, CANCELLED)


class BusyError(NSN2NError):
    """Another denoising job is still running in this process."""


@dataclass(frozen=True)
class Progress:
    """One progress record, as the engine last reported it.

    Attributes
    ----------
    phase : str
        'weights', 'training' or 'inference' (the engine's phases), or 'starting' before the first report.
    step, total : int
        Steps done and steps in this phase (iterations in 'training').
    loss : float or None
        Training loss of the last step, in normalised intensity units squared; None outside training.
    elapsed_s : float
        Seconds since the job started.
    remaining_s : float or None
        Estimated seconds left in the current phase, from the phase's rate so far; None until measurable.
    """

    phase: str
    step: int
    total: int
    loss: float | None
    elapsed_s: float
    remaining_s: float | None

    @property
    def fraction(self) -> float:
        """Fraction 0..1 of the current phase that is done."""
        return min(1.0, self.step / self.total) if self.total > 0 else 0.0

    def describe(self) -> str:
        """One human line, e.g. ``'training 120/1000, loss 0.00213, about 1 min 30 s left'``."""
        text = f"{self.phase} {self.step}/{self.total}"
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


def explain_error(exc: BaseException) -> NSN2NError:
    """Turn any exception from a run into an NSN2N error whose message says what to change.

    Engine errors pass through unchanged. CUDA out-of-memory (raised by torch as ``torch.OutOfMemoryError`` or
    a ``RuntimeError`` mentioning 'out of memory') becomes a :class:`DeviceError`; host ``MemoryError`` an
    :class:`InputError`; anything else an :class:`NSN2NError` naming the exception type.
    """
    if isinstance(exc, NSN2NError):
        return exc
    text = str(exc)
    if type(exc).__name__ == "OutOfMemoryError" or "out of memory" in text.lower():
        return DeviceError(
            "The GPU ran out of memory. Close other programs that use the GPU, choose the 'fast' preset or a "
            "smaller patch or batch size, crop the volume, or choose CPU as the device."
        )
    if isinstance(exc, MemoryError):
        return InputError(
            "Not enough computer memory (RAM) for this volume. Crop or resample the volume (Crop Volume module) "
            "and try again."
        )
    return NSN2NError(f"Denoising failed with an unexpected error ({type(exc).__name__}: {text}).")


def _free_gpu_memory() -> None:
    # Only if the engine has imported torch already: a job must not import torch by itself.
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()


_active_lock = threading.Lock()
_active_job: DenoiseJob | None = None


class DenoiseJob:
    """One run of :func:`NSN2NDenoiseLib.denoise` in a background thread.

    Parameters
    ----------
    volume : numpy.ndarray
        Volume in K,J,I order (slice, row, column), any real dtype. Copied at construction, so the caller may
        change or free its array while the job runs.
    spacing : tuple of 3 floats
        Voxel spacing in mm in the same K,J,I order.
    config : NSN2NConfig
        The run's configuration (see ``config.py``).
    denoise_fn : callable, optional
        The function run in the thread, with :func:`NSN2NDenoiseLib.denoise`'s signature. Defaults to it;
        imported only when the job starts, so that this module imports without torch.

    Notes
    -----
    Use :func:`start_job` to create and start a job, so that only one runs at a time. ``poll()``, ``progress``,
    ``result`` and ``error`` may be read from any thread; nothing here needs Qt.
    """

    def __init__(self, volume: np.ndarray, spacing, config, denoise_fn: Callable | None = None):
        self._volume = np.array(volume, copy=True)
        self._spacing = tuple(float(s) for s in spacing)
        self.config = config
        self._denoise_fn = denoise_fn
        self._cancel_event = threading.Event()
        self._lock = threading.Lock()
        self._state = PENDING
        self._progress: Progress | None = None
        self._phase_start: tuple[str, float, int] | None = None
        self._result: np.ndarray | None = None
        self._report: Any = None
        self._error: NSN2NError | None = None
        self.traceback: str | None = None
        """Full traceback text of an unexpected failure, for the log; None otherwise."""
        self._start_time: float | None = None
        self._end_time: float | None = None
        self._thread: threading.Thread | None = None

    # -- control ---------------------------------------------------------------------------------------------

    def start(self) -> None:
        """Start the worker thread. Prefer :func:`start_job`, which enforces one job at a time."""
        with self._lock:
            if self._state != PENDING:
                raise NSN2NError("This job has already been started; create a new job to run again.")
            self._state = RUNNING
            self._start_time = time.monotonic()
        self._thread = threading.Thread(target=self._run, name="NSN2N denoise", daemon=True)
        self._thread.start()

    def cancel(self) -> None:
        """Ask the run to stop; it does so at the engine's next iteration check. Returns at once."""
        self._cancel_event.set()
        with self._lock:
            if self._state == PENDING:
                self._state = CANCELLED
                self._error = CancelledError("The run was cancelled before it started.")

    @property
    def cancel_requested(self) -> bool:
        """True once :meth:`cancel` was called (the run may still be winding down)."""
        return self._cancel_event.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the run ends or ``timeout`` seconds pass; True when it has ended."""
        if self._thread is not None:
            self._thread.join(timeout)
        return self.finished

    # -- state -----------------------------------------------------------------------------------------------

    def poll(self) -> str:
        """The state now: 'pending', 'running', 'done', 'failed' or 'cancelled'. Never blocks."""
        with self._lock:
            return self._state

    @property
    def finished(self) -> bool:
        """True when the job is done, failed or cancelled."""
        return self.poll() in FINISHED_STATES

    @property
    def progress(self) -> Progress | None:
        """The latest :class:`Progress` record, or None before the engine's first report."""
        with self._lock:
            return self._progress

    @property
    def result(self) -> np.ndarray | None:
        """The denoised float32 volume in K,J,I order once the state is 'done', else None."""
        with self._lock:
            return self._result

    @property
    def report(self) -> Any:
        """The engine's ``RunReport`` once the state is 'done', else None."""
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

    # -- worker thread ---------------------------------------------------------------------------------------

    def _on_progress(self, phase: str, step: int, total: int, loss: float | None) -> None:
        now = time.monotonic()
        with self._lock:
            if self._phase_start is None or self._phase_start[0] != phase:
                self._phase_start = (phase, now, step)
            _, phase_t0, phase_step0 = self._phase_start
            remaining = None
            done_steps = step - phase_step0
            if done_steps > 0 and total > step:
                remaining = (now - phase_t0) / done_steps * (total - step)
            elif total > 0 and step >= total:
                remaining = 0.0
            self._progress = Progress(
                phase=str(phase),
                step=int(step),
                total=int(total),
                loss=None if loss is None else float(loss),
                elapsed_s=now - (self._start_time or now),
                remaining_s=remaining,
            )

    def _run(self) -> None:
        global _active_job
        try:
            denoise_fn = self._denoise_fn
            if denoise_fn is None:
                from .api import denoise as denoise_fn
            result, report = denoise_fn(
                self._volume,
                spacing=self._spacing,
                config=self.config,
                progress=self._on_progress,
                cancel=self._cancel_event,
            )
            with self._lock:
                if self._cancel_event.is_set():
                    # Cancelled after the last check: honour the cancel, the caller expects no result.
                    self._state = CANCELLED
                    self._error = CancelledError("The run was cancelled.")
                else:
                    self._result = np.asarray(result, dtype=np.float32)
                    self._report = report
                    self._state = DONE
        except CancelledError as exc:
            with self._lock:
                self._state = CANCELLED
                self._error = exc
        except BaseException as exc:  # every failure must reach the caller as a message, never kill the thread silently
            error = explain_error(exc)
            with self._lock:
                self._state = FAILED
                self._error = error
                if not isinstance(exc, NSN2NError):
                    self.traceback = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        finally:
            self._volume = None  # free the copy; the result is all that is needed now
            _free_gpu_memory()
            self._end_time = time.monotonic()
            with _active_lock:
                if _active_job is self:
                    _active_job = None


def active_job() -> DenoiseJob | None:
    """The job running in this process, or None."""
    with _active_lock:
        return _active_job


def start_job(volume: np.ndarray, spacing, config, denoise_fn: Callable | None = None) -> DenoiseJob:
    """Create a :class:`DenoiseJob` and start it, unless another job is still running.

    Parameters are those of :class:`DenoiseJob`.

    Raises
    ------
    BusyError
        If a job started earlier has not finished; wait for it or cancel it first.
    """
    global _active_job
    with _active_lock:
        if _active_job is not None and not _active_job.finished:
            raise BusyError("A denoising run is already in progress. Wait for it to finish or cancel it first.")
        job = DenoiseJob(volume, spacing, config, denoise_fn=denoise_fn)
        _active_job = job
    try:
        job.start()
    except BaseException:
        with _active_lock:
            _active_job = None
        raise
    return job
