"""NSN2N: self-supervised denoising of one CT or MRI volume by Neighboring Slice Noise2Noise.

The engine: pure Python (numpy, torch, SimpleITK), no Slicer import. Start with :func:`denoise`.
"""

__version__ = "0.1.0"

from .api import CancelToken, denoise  # noqa: E402
from .config import NSN2NConfig, make_config  # noqa: E402
from .errors import CancelledError, ConfigError, DeviceError, InputError, NSN2NError  # noqa: E402
from .report import RunReport  # noqa: E402

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
