"""The options that the front ends show, in one table.

The ``nsn2n`` command line, the Slicer module (parameter node, widget, logic), its CLI module and the batch script
all build their options from :data:`OPTIONS`; defaults are read from the engine's configuration
(:func:`config.make_config`), never restated. :func:`to_config` turns a mapping of option values into the
engine's configuration.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from .config import (
    AXES_CHOICES,
    DEVICES,
    FUSION_CHOICES,
    PRESETS,
    SLICE_AXES,
    TTA_CHOICES,
    WIENER_CHOICES,
    NSN2NConfig,
    make_config,
)
from .errors import ConfigError


@dataclass(frozen=True)
class Option:
    """One user-facing option.

    Attributes
    ----------
    name : str
        snake_case name: the command line's flag (``--slice-axis``) and the keyword of :func:`to_config`.
    slicer_name : str
        camelCase name of the Slicer parameter node field and of the Logic's keyword.
    type : type
        int, float, str or bool.
    field : tuple of str
        Path of the configuration field, e.g. ('training', 'iterations'); () for the preset itself.
    label : str
        GUI label.
    help : str
        One line for tooltips and ``--help``.
    choices : tuple, optional
        The allowed values (str and int options).
    low, high : number, optional
        Bounds of a number option.
    advanced : bool
        Shown in the GUI's Advanced section only.
    """

    name: str
    slicer_name: str
    type: type
    field: tuple[str, ...]
    label: str
    help: str
    choices: tuple = ()
    low: float | None = None
    high: float | None = None
    advanced: bool = False

    def default(self, preset: str = "default") -> Any:
        """This option's value in ``preset``'s configuration."""
        if not self.field:
            return preset
        value: Any = make_config(preset)
        for part in self.field:
            value = getattr(value, part)
        return value

    @property
    def flag(self) -> str:
        """The command-line flag, e.g. '--slice-axis'."""
        return "--" + self.name.replace("_", "-")


OPTIONS: tuple[Option, ...] = (
    Option(
        "preset",
        "preset",
        str,
        (),
        "Preset",
        "quality/time trade-off: fast, default or best (for a GPU).",
        choices=PRESETS,
    ),
    Option(
        "iterations",
        "iterations",
        int,
        ("training", "iterations"),
        "Iterations",
        "training iterations, the main quality/time knob.",
        low=1,
        high=1_000_000,
    ),
    Option(
        "device",
        "device",
        str,
        ("device",),
        "Device",
        "where to run: auto (a CUDA GPU when available, else the CPU), cpu or cuda.",
        choices=DEVICES,
    ),
    Option(
        "slice_axis",
        "sliceAxis",
        str,
        ("slice_axis",),
        "Slice axis",
        "array axis of the slices: k (the file's third axis), j, i, or auto (largest spacing if anisotropic).",
        choices=SLICE_AXES,
        advanced=True,
    ),
    Option(
        "seed",
        "seed",
        int,
        ("training", "seed"),
        "Random seed",
        "seed of every random draw; the same seed repeats a run.",
        low=0,
        high=2**31 - 1,
        advanced=True,
    ),
    Option(
        "threads",
        "threads",
        int,
        ("training", "threads"),
        "CPU threads",
        "CPU threads for PyTorch (0: PyTorch's choice).",
        low=0,
        high=1024,
        advanced=True,
    ),
    Option(
        "tta",
        "tta",
        int,
        ("inference", "tta"),
        "Test-time augmentation",
        "mean over this many flips/rotations of each slice at inference (1 = none).",
        choices=TTA_CHOICES,
        advanced=True,
    ),
    Option(
        "axes",
        "axes",
        str,
        ("inference", "axes"),
        "Denoise along",
        "axes the network denoises along, averaged: auto (all three where voxels are near-isotropic and the "
        "in-plane noise is white), slice (the slice axis only) or all.",
        choices=AXES_CHOICES,
        advanced=True,
    ),
    Option(
        "neighbour_fusion",
        "neighbourFusion",
        str,
        ("inference", "neighbour_fusion"),
        "Neighbour network",
        "also train a network that predicts each slice from its four neighbours and blend it into the result "
        "with weight 0.3: off (the default), auto (where all three axes are used) or on. Doubles the training time.",
        choices=FUSION_CHOICES,
        advanced=True,
    ),
    Option(
        "wiener",
        "wiener",
        str,
        ("inference", "wiener"),
        "Wiener stage",
        "use the network's output as the pilot of a Wiener filter of the input, its noise level read from the removed "
        "residual: matched (the default: similar blocks grouped and filtered together, as in BM4D, in two passes where "
        "the noise is white, then averaged with an estimate that uses no network at a noise level read inside the "
        "body; the DCT filter instead where the in-plane noise is strongly correlated, lag-1 above 0.75), filters "
        "(a sliding-window DCT filter, cheaper; the fast preset's) or off (the network's output as it is).",
        choices=WIENER_CHOICES,
        advanced=True,
    ),
    Option(
        "lambda_self",
        "lambdaSelf",
        float,
        ("loss", "lambda_self"),
        "Self term weight",
        "weight of the self term that keeps the input where no neighbour slice matches (bone, edges).",
        low=0.0,
        high=100.0,
        advanced=True,
    ),
    Option(
        "lambda_rc",
        "lambdaRc",
        float,
        ("loss", "lambda_rc"),
        "Regional consistency weight",
        "weight of the paper's regional consistency term (0 = off).",
        low=0.0,
        high=100.0,
        advanced=True,
    ),
    Option(
        "lambda_ic",
        "lambdaIc",
        float,
        ("loss", "lambda_ic"),
        "Inter-slice continuity weight",
        "weight of the paper's inter-slice continuity term (0 = off).",
        low=0.0,
        high=100.0,
        advanced=True,
    ),
)
"""Every option a front end shows, in display order."""

BY_NAME = {o.name: o for o in OPTIONS}


def add_arguments(parser, names: tuple[str, ...] | None = None, help_suffix: str = "") -> None:
    """Add one ``argparse`` flag per option (all, or those in ``names``), default None (the preset's value)."""
    for option in OPTIONS:
        if names is not None and option.name not in names:
            continue
        kwargs: dict[str, Any] = {"type": option.type, "default": None, "help": option.help + help_suffix}
        if option.choices:
            kwargs["choices"] = option.choices
        elif option.type in (int, float):
            kwargs["metavar"] = option.name.upper().replace("_", "-")
        parser.add_argument(option.flag, dest=option.name, **kwargs)


BY_SLICER_NAME = {o.slicer_name: o for o in OPTIONS}


def add_model_arguments(parser, save: bool = True, init_help: str = "") -> None:
    """``--save-model`` (unless ``save`` is false) and ``--init-from``: the model files of :mod:`.model_io`, with
    the same meaning in every front end."""
    if save:
        parser.add_argument(
            "--save-model",
            metavar="MODEL.safetensors",
            help="save the trained network and its configuration (safetensors), to warm-start other volumes.",
        )
    parser.add_argument(
        "--init-from",
        metavar="MODEL.safetensors",
        help=init_help or "start training from a model saved by --save-model (its network settings are used).",
    )


def to_config(values: dict[str, Any] | None = None, base: NSN2NConfig | None = None) -> NSN2NConfig:
    """The engine configuration for option ``values`` (snake_case names; None values keep the preset's).

    The preset (``values['preset']``, else ``base``'s or 'default') is applied first, then every other given
    option. Raises :class:`ConfigError` for an unknown option or a value out of its bounds.
    """
    values = {k: v for k, v in (values or {}).items() if v is not None}
    unknown = set(values) - set(BY_NAME)
    if unknown:
        raise ConfigError(f"unknown option(s): {', '.join(sorted(unknown))}; known: {', '.join(BY_NAME)}.")
    preset = values.pop("preset", None)
    if preset is not None and base is not None and preset != base.preset:
        raise ConfigError(f"preset {preset!r} conflicts with the given configuration's preset {base.preset!r}.")
    cfg = base or make_config(preset or "default")
    changes: dict[str, Any] = {}
    for name, value in values.items():
        option = BY_NAME[name]
        if option.type is int and isinstance(value, float) and value.is_integer():
            value = int(value)
        if len(option.field) == 1:
            changes[option.field[0]] = value
        else:
            section, key = option.field
            changes.setdefault(section, {})[key] = value
    return cfg.replace(**changes) if changes else cfg


def from_config(cfg: NSN2NConfig) -> dict[str, Any]:
    """Option values (snake_case) of a configuration: the inverse of :func:`to_config` on the table's fields."""
    out: dict[str, Any] = {}
    for option in OPTIONS:
        if not option.field:
            out[option.name] = cfg.preset
            continue
        value: Any = cfg
        for part in option.field:
            value = getattr(value, part) if dataclasses.is_dataclass(value) else value[part]
        out[option.name] = value
    return out
