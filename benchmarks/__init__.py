"""NSN2N's benchmark: data, noise simulators, baselines, metrics and the runner (``python -m benchmarks.run``).

Not part of the product: nothing under ``NSN2NDenoise/`` imports it. bm4d and bm3d (non-commercial licence) are
optional and imported lazily here only.
"""

import importlib.util as _util
import sys as _sys
from pathlib import Path as _Path

# The benchmark runs from a source checkout: make the engine importable without installing it.
if _util.find_spec("NSN2NDenoiseLib") is None:
    _engine = _Path(__file__).resolve().parents[1] / "NSN2NDenoise"
    if (_engine / "NSN2NDenoiseLib").is_dir():
        _sys.path.insert(0, str(_engine))
