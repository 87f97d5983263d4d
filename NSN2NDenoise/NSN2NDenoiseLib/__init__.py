"""NSN2N: self-supervised denoising of one CT or MRI volume by Neighboring Slice Noise2Noise.

The engine: pure Python (numpy, torch, SimpleITK), no Slicer import. Start with :func:`denoise`.
"""

__version__ = "0.1.0"

_LAZY = {
    "CancelToken": "api",
    "denoise": "api",
    "NSN2NConfig": "config",
    "make_config": "config",
    "CancelledError": "errors",
    "ConfigError": "errors",
    "DeviceError": "errors",
    "InputError": "errors",
    "NSN2NError": "errors",
    "RunReport": "report",
}


def __getattr__(name: str):
    """Import on first use, so that torch-free modules (``options``, ``config``, ``errors``) import without torch
    (the Slicer module reads the options table when Slicer starts)."""
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "CancelToken",
    "CancelledError",
    "ConfigError",
    "DeviceError",
    "InputError",
    "NSN2NConfig",
    "NSN2NError",
    "RunReport",
    "__version__",
    "denoise",
    "make_config",
]
