import numpy as np
import pytest

from NSN2NDenoiseLib import InputError
from NSN2NDenoiseLib.normalization import denormalize, fit_intensity_map, normalize


def test_normalize_maps_percentiles_and_inverts_exactly():
    rng = np.random.default_rng(0)
    vol = rng.normal(40.0, 300.0, (5, 16, 16)).astype(np.int16)
    imap = fit_intensity_map(vol, (0.5, 99.5))
    n = normalize(vol, imap)
    assert n.dtype == np.float32
    assert np.isclose(np.percentile(n, 0.5), 0.0, atol=1e-5) and np.isclose(np.percentile(n, 99.5), 1.0, atol=1e-5)
    assert n.min() < 0.0 and n.max() > 1.0  # no clipping
    back = denormalize(n, imap)
    assert np.allclose(back, vol, atol=1e-3 * 300)


def test_mostly_constant_volume_uses_full_range():
    vol = np.zeros((4, 10, 10))
    vol[0, 0, 0] = 5.0
    imap = fit_intensity_map(vol)
    assert imap.scale == 5.0


def test_constant_volume_is_refused():
    with pytest.raises(InputError, match="constant"):
        fit_intensity_map(np.full((3, 8, 8), 7.0))
