"""Exceptions of the NSN2N engine. Every message says what is wrong and what to do."""


class NSN2NError(Exception):
    """Base class of every error the engine raises on purpose."""


class ConfigError(NSN2NError, ValueError):
    """A configuration field is unknown, of the wrong type or out of its bounds."""


class InputError(NSN2NError, ValueError):
    """The input volume or file cannot be denoised as given (shape, values, format, path)."""


class CancelledError(NSN2NError):
    """The run was cancelled through its cancel token; no result exists."""


class DeviceError(NSN2NError, RuntimeError):
    """The requested device is unavailable or ran out of memory."""
