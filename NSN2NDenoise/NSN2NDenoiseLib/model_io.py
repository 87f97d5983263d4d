"""Saving and loading a trained network with its configuration, for warm starts (``--save-model``, ``--init-from``).

The file format is safetensors: a JSON header, then raw tensor bytes. Loading it never runs code, unlike a pickle
(``torch.save``), which can run anything when it is read; such files are refused with a message that says so,
and so is any file whose tensors do not match the network its stored configuration describes. The header's
metadata holds:

- ``format``: ``nsn2n-model``, and ``format_version``;
- ``config``: the full configuration of the run that trained it (``NSN2NConfig.to_dict()`` as JSON);
- ``nsn2n_version``, ``iterations``, ``trained_on`` (free text, e.g. the input file's name).

The weights act on normalised intensities (``normalization.fit_intensity_map`` of each volume), so a model moves
between volumes of different units or windows; it helps most on the same modality and anatomy.
safetensors is imported only here, and only when a model is saved or loaded.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch

from . import __version__
from .config import NSN2NConfig
from .errors import ConfigError, InputError
from .training import build_network

FORMAT = "nsn2n-model"
FORMAT_VERSION = "1"
SUFFIX = ".safetensors"

# Leading bytes of files that would run code or are not safetensors: pickle protocol 2+ starts with 0x80, the
# zip archive of torch.save starts with "PK\x03\x04".
_PICKLE_MAGIC = b"\x80"
_ZIP_MAGIC = b"PK\x03\x04"


@dataclass(frozen=True)
class SavedModel:
    """A model read by :func:`load_model`: its weights and the configuration it was trained with."""

    state: dict[str, torch.Tensor]
    """The network's state dict (CPU, float32), matching ``build_network(config)``."""
    config: NSN2NConfig
    metadata: dict[str, str] = field(default_factory=dict)
    """The file's metadata (see the module docstring)."""


def _require_safetensors():
    try:
        import safetensors.torch
    except ImportError as exc:  # pragma: no cover - depends on the installation
        raise InputError(
            "Saving or loading a model needs the safetensors package: pip install safetensors (or .[cluster])."
        ) from exc
    return safetensors.torch


def check_state(state: Mapping[str, torch.Tensor], cfg: NSN2NConfig, source: str = "the initial model") -> None:
    """Check that ``state`` has exactly the tensor names and shapes of ``build_network(cfg)``.

    Raises
    ------
    ConfigError
        Names or shapes differ (e.g. a model of another ``network.width``), with the first differences.
    """
    expected = {name: tuple(t.shape) for name, t in build_network(cfg).state_dict().items()}
    if not isinstance(state, Mapping) or not all(isinstance(t, torch.Tensor) for t in state.values()):
        raise ConfigError(f"{source} must be a mapping of tensor names to tensors (a state dict).")
    got = {name: tuple(t.shape) for name, t in state.items()}
    if got == expected:
        return
    missing = sorted(set(expected) - set(got))
    extra = sorted(set(got) - set(expected))
    common = sorted(set(got) & set(expected))
    shapes = [f"{n}: {got[n]} instead of {expected[n]}" for n in common if got[n] != expected[n]]
    parts = []
    if missing:
        parts.append(f"missing {', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''}")
    if extra:
        parts.append(f"unexpected {', '.join(extra[:3])}{' ...' if len(extra) > 3 else ''}")
    if shapes:
        parts.append("; ".join(shapes[:3]) + (" ..." if len(shapes) > 3 else ""))
    net = cfg.network
    raise ConfigError(
        f"{source} does not fit the network of this run (network.depth = {net.depth}, network.width = {net.width}): "
        f"{'; '.join(parts)}. Use the same network settings as the run that saved it."
    )


def check_compatible(saved: SavedModel, cfg: NSN2NConfig) -> None:
    """Check that a run with ``cfg`` can start from ``saved``: the same network section.

    Raises
    ------
    ConfigError
        The network settings differ, naming each differing field.
    """
    ours, theirs = cfg.network, saved.config.network
    if ours != theirs:
        diffs = [
            f"network.{name} = {getattr(theirs, name)} in the model, {getattr(ours, name)} in this run"
            for name in ("depth", "width")
            if getattr(ours, name) != getattr(theirs, name)
        ]
        raise ConfigError(
            f"The model was trained with another network: {'; '.join(diffs)}. Run with the model's network settings."
        )
    check_state(saved.state, cfg)


def check_save_path(path: str | os.PathLike) -> Path:
    """Fail before any work when a model cannot be written at ``path``: every front end calls this first.

    Raises
    ------
    InputError
        The path does not end in ``.safetensors`` or its folder does not exist.
    """
    p = Path(path).expanduser()
    if p.suffix.lower() != SUFFIX:
        raise InputError(f"Cannot write the model {p.name!r}: the file name must end in {SUFFIX}.")
    parent = p.resolve().parent
    if not parent.is_dir():
        raise InputError(f"The model's folder {parent} does not exist: create it first.")
    return p


def start_from(cfg: NSN2NConfig, path: str | os.PathLike | None) -> tuple[NSN2NConfig, dict | None]:
    """The configuration and initial weights of a run started from the model at ``path`` (None: ``cfg`` and no
    weights). The model decides the network settings; everything else stays ``cfg``'s."""
    if not path:
        return cfg, None
    saved = load_model(path)
    return cfg.replace(network=saved.config.network), saved.state


def save_model(
    path: str | os.PathLike,
    state: Mapping[str, torch.Tensor],
    cfg: NSN2NConfig,
    trained_on: str = "",
) -> Path:
    """Write ``state`` (a state dict of ``build_network(cfg)``) and ``cfg`` to a safetensors file, atomically.

    Raises
    ------
    InputError
        The path does not end in ``.safetensors`` or its folder does not exist.
    ConfigError
        ``state`` does not match ``cfg``'s network.
    """
    st = _require_safetensors()
    p = check_save_path(path)
    parent = p.resolve().parent
    check_state(state, cfg, "The model to save")
    tensors = {name: t.detach().to("cpu", torch.float32).contiguous() for name, t in state.items()}
    metadata = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "config": json.dumps(cfg.to_dict(), sort_keys=True),
        "nsn2n_version": __version__,
        "iterations": str(cfg.training.iterations),
        "trained_on": trained_on,
    }
    fd, tmp = tempfile.mkstemp(prefix=".nsn2n-model-", suffix=SUFFIX, dir=parent)
    os.close(fd)
    try:
        st.save_file(tensors, tmp, metadata=metadata)
        os.replace(tmp, p)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return p


def load_model(path: str | os.PathLike) -> SavedModel:
    """Read a model written by :func:`save_model`; nothing in the file is executed.

    Raises
    ------
    InputError
        A missing file, a pickle or ``torch.save`` file (which could run code: refused unread), a file that is not
        safetensors, or safetensors without NSN2N's metadata, with what to do.
    ConfigError
        The stored configuration is invalid, or the tensors do not match the network it describes.
    """
    p = Path(path)
    if not p.is_file():
        raise InputError(f"The model file {p} does not exist: give a .safetensors file written by --save-model.")
    with open(p, "rb") as f:
        head = f.read(8)
    if head.startswith(_ZIP_MAGIC) or head.startswith(_PICKLE_MAGIC):
        raise InputError(
            f"{p} is a pickle (torch.save) file, which can run arbitrary code when loaded: refused. NSN2N reads "
            f"only {SUFFIX} model files written by --save-model."
        )
    _require_safetensors()
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(p), framework="pt") as f:
            metadata = dict(f.metadata() or {})
            state = {name: f.get_tensor(name) for name in f.keys()}
    except (SafetensorError, OSError, ValueError) as exc:
        raise InputError(
            f"{p} is not a valid safetensors model file ({exc}); give a file written by --save-model."
        ) from exc
    if metadata.get("format") != FORMAT:
        raise InputError(f"{p} is a safetensors file but not an NSN2N model (no '{FORMAT}' metadata): refused.")
    if metadata.get("format_version") != FORMAT_VERSION:
        raise InputError(
            f"{p} has model format version {metadata.get('format_version')!r}; this NSN2N reads version "
            f"{FORMAT_VERSION}. Save the model again with this version."
        )
    try:
        cfg = NSN2NConfig.from_dict(json.loads(metadata.get("config", "")))
    except (json.JSONDecodeError, TypeError) as exc:
        raise InputError(f"{p} carries an unreadable configuration ({exc}): refused.") from exc
    except ConfigError as exc:
        raise ConfigError(f"{p} carries an invalid configuration: {exc}") from exc
    bad_dtype = sorted(name for name, t in state.items() if t.dtype != torch.float32)
    if bad_dtype:
        raise ConfigError(f"{p}: tensors {', '.join(bad_dtype[:3])} are not float32: not a model NSN2N wrote.")
    check_state(state, cfg, str(p))
    return SavedModel(state=state, config=cfg, metadata=metadata)


__all__ = ["SavedModel", "save_model", "load_model", "check_state", "check_compatible"]
