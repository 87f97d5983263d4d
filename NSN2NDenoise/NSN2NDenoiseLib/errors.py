"""Exceptions of the NSN2N engine, and the one table that turns them into exit codes.

Every message says what is wrong and what to do. Every front end (``nsn2n``, the Slicer CLI module, the worker
process of the Slicer module, the batch script) exits with :func:`exit_code` of what it caught.
"""


class NSN2NError(Exception):
    """Base class of every error the engine raises on purpose."""


class ConfigError(NSN2NError, ValueError):
    """A configuration field is unknown, of the wrong type or out of its bounds."""


class InputError(NSN2NError, ValueError):
    """The input volume or file cannot be denoised as given (shape, values, format, path)."""


class CancelledError(NSN2NError):
    """The run was cancelled through its cancel token; no result exists."""


class DeviceError(NSN2NError, RuntimeError):
    """The requested device is unavailable, or it (or the host) ran out of memory."""


class TrainingDivergedError(NSN2NError, RuntimeError):
    """Training diverged again after every recovery it is allowed (``training.MAX_RECOVERIES``); no result."""


OUT_OF_MEMORY_ADVICE = (
    "Use the 'fast' preset or a smaller network (network.width), lower training.batch_size or "
    "training.patch_size, crop the volume (Slicer: Crop Volume), or run on another device."
)
"""What to try after running out of memory; said once, for the GPU and the host alike."""

EXIT_OK = 0
EXIT_FAILED = 1
"""An unexpected error (a bug): the message carries the exception's type."""
EXIT_INPUT = 2
"""Bad input, options or configuration: one line says what to change."""
EXIT_DEVICE = 3
"""The device is unavailable or out of memory."""
EXIT_CANCELLED = 130
"""Cancelled or interrupted (128 + SIGINT, as shells report Ctrl-C)."""


def exit_code(exc: BaseException | None) -> int:
    """The process exit code of every front end for ``exc`` (None: success)."""
    if exc is None:
        return EXIT_OK
    if isinstance(exc, (CancelledError, KeyboardInterrupt)):
        return EXIT_CANCELLED
    if isinstance(exc, (DeviceError, MemoryError)):
        return EXIT_DEVICE
    if isinstance(exc, (InputError, ConfigError)):
        return EXIT_INPUT
    return EXIT_FAILED


def explain(exc: BaseException) -> NSN2NError:
    """``exc`` as an :class:`NSN2NError` whose message a user can act on (unexpected errors keep their type)."""
    if isinstance(exc, NSN2NError):
        return exc
    if isinstance(exc, KeyboardInterrupt):
        return CancelledError("Interrupted; no result was produced.")
    if isinstance(exc, MemoryError) or "out of memory" in str(exc).lower():
        return DeviceError(f"Out of memory. {OUT_OF_MEMORY_ADVICE}")
    return NSN2NError(f"Unexpected error ({type(exc).__name__}): {exc}")
