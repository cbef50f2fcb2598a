"""Search spaces: ``ClassName.argument`` keys mapped to a list of choices or a ``{low, high, log}`` range.

A search-space YAML looks like::

    ThresholdSkipFineTune.threshold: [0.005, 0.015]   # choices (grid, or categorical for TPE/random)
    PruningAwareLR.lr_base: {low: 1.0e-4, high: 1.0e-2, log: true}   # a range (TPE/random only)
    LayerFreezer.freeze_fraction: 0.3                  # a single value: pinned

``ClassName`` is the class name of a callback in the fit config's ``trainer.callbacks`` (or of its
``model`` / ``data``); ``argument`` one of its ``__init__`` arguments. A range whose ``low`` and
``high`` are both integers is sampled as integers. The whole mapping may also sit under a top-level
``search_space:`` key.
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from lightning_prune.errors import PruningConfigError

#: The ICE-Pruning authors' CIFAR grid (NOTES.md), thresholds in our units (accuracy as a fraction:
#: their 0.5 and 1.5 points are 0.005 and 0.015): 2 * 2 * 2 * 3 * 3 * 3 = 216 points.
ICE_CIFAR_GRID: dict[str, list[float]] = {
    "ThresholdSkipFineTune.threshold": [0.005, 0.015],
    "LayerFreezer.freeze_fraction": [0.3, 0.9],
    "PruningAwareLR.lr_base": [0.001, 0.005],
    "PruningAwareLR.midpoint": [0.1, 0.15, 0.2],
    "PruningAwareLR.beta": [40.0, 50.0, 60.0],
    "PruningAwareLR.delta": [0.0006, 0.0007, 0.0008],
}

_SCALARS = (str, int, float, bool, type(None))
#: ``1e-3`` (no dot) is a string to PyYAML (YAML 1.1); such strings are read as the numbers they spell.
_EXPONENT_NUMBER = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")
_RANGE_KEYS = ("low", "high", "log", "step")


@dataclass(frozen=True)
class Param:
    """One tuned argument: a tuple of ``choices``, or a ``low``..``high`` range (optionally log / stepped).

    Example:
        >>> Param("PruningAwareLR.beta", choices=(40.0, 50.0)).argument
        'beta'
        >>> Param("PruningAwareLR.lr_base", low=1e-4, high=1e-2, log=True).is_range
        True
    """

    name: str
    choices: tuple[Any, ...] | None = None
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None

    @property
    def class_name(self) -> str:
        """The part before the last dot, e.g. ``"PruningAwareLR"``."""
        return self.name.rsplit(".", 1)[0]

    @property
    def argument(self) -> str:
        """The part after the last dot, e.g. ``"lr_base"``."""
        return self.name.rsplit(".", 1)[1]

    @property
    def is_range(self) -> bool:
        """Whether this is a ``low``..``high`` range rather than a list of choices."""
        return self.choices is None

    @property
    def is_int(self) -> bool:
        """A range of integers (``low`` and ``high`` written as integers, ``step`` too if given)."""
        values = [self.low, self.high] + ([self.step] if self.step is not None else [])
        return self.is_range and all(isinstance(v, int) and not isinstance(v, bool) for v in values)

    def suggest(self, trial: Any) -> Any:
        """Ask an Optuna trial for this parameter's value.

        Example:
            >>> import optuna
            >>> trial = optuna.create_study().ask()
            >>> Param("LayerFreezer.freeze_fraction", choices=(0.3,)).suggest(trial)
            0.3
        """
        if self.choices is not None:
            return trial.suggest_categorical(self.name, list(self.choices))
        if self.is_int:
            return trial.suggest_int(self.name, int(self.low), int(self.high), step=int(self.step or 1), log=self.log)
        return trial.suggest_float(self.name, float(self.low), float(self.high), step=self.step, log=self.log)

    def to_yaml_value(self) -> Any:
        """The YAML form: a list of choices or a range mapping."""
        if self.choices is not None:
            return list(self.choices)
        value: dict[str, Any] = {"low": self.low, "high": self.high}
        if self.log:
            value["log"] = True
        if self.step is not None:
            value["step"] = self.step
        return value


@dataclass(frozen=True)
class SearchSpace:
    """The tuned arguments, in the order given.

    Example:
        >>> space = SearchSpace.from_mapping({"ThresholdSkipFineTune.threshold": [0.005, 0.015],
        ...                                   "LayerFreezer.freeze_fraction": [0.3, 0.9]})
        >>> space.grid_size()
        4
        >>> SearchSpace.from_mapping(ICE_CIFAR_GRID).grid_size()
        216
    """

    params: tuple[Param, ...]

    @classmethod
    def from_mapping(cls, mapping: Mapping[str, Any]) -> SearchSpace:
        """Parse ``{"ClassName.argument": choices | range | value}`` (or the same under ``search_space:``)."""
        if not isinstance(mapping, Mapping):
            raise PruningConfigError(f"a search space must be a mapping, got {type(mapping).__name__}",
                                     hint="write `ClassName.argument: [value, ...]` lines, e.g. `LayerFreezer.freeze_fraction: [0.3, 0.9]`")
        if set(mapping) == {"search_space"}:
            mapping = mapping["search_space"]
            return cls.from_mapping(mapping)
        if not mapping:
            raise PruningConfigError("the search space is empty", hint="give at least one `ClassName.argument: [values]`")
        return cls(tuple(_parse_param(name, value) for name, value in mapping.items()))

    @classmethod
    def from_yaml(cls, path: str | Path) -> SearchSpace:
        """Read a search-space YAML file.

        Example:
            >>> # SearchSpace.from_yaml("configs/ice_search_space.yaml").grid_size()  -> 216
        """
        path = Path(path)
        if not path.is_file():
            raise PruningConfigError(f"search space file {str(path)!r} does not exist",
                                     hint="give a YAML of `ClassName.argument: [values]`, e.g. configs/ice_search_space.yaml")
        return cls.from_mapping(yaml.safe_load(path.read_text()) or {})

    @classmethod
    def load(cls, source: str | Path | Mapping[str, Any] | SearchSpace | None, base_dir: Path | None = None) -> SearchSpace:
        """A space from a file path (relative to the working directory, else to ``base_dir``), a
        mapping, a space, or ``None`` (the authors' CIFAR grid, :data:`ICE_CIFAR_GRID`).

        Example:
            >>> SearchSpace.load(None).names[0]
            'ThresholdSkipFineTune.threshold'
        """
        if source is None:
            return cls.from_mapping(ICE_CIFAR_GRID)
        if isinstance(source, SearchSpace):
            return source
        if isinstance(source, Mapping):
            return cls.from_mapping(source)
        path = Path(source)
        if not path.is_absolute() and not path.exists() and base_dir is not None and (base_dir / path).exists():
            path = base_dir / path
        return cls.from_yaml(path)

    @property
    def names(self) -> list[str]:
        """The ``ClassName.argument`` keys."""
        return [p.name for p in self.params]

    def has_ranges(self) -> bool:
        """Whether any parameter is a range (not usable with the grid sampler)."""
        return any(p.is_range for p in self.params)

    def grid(self) -> dict[str, list[Any]]:
        """``{name: choices}`` for Optuna's ``GridSampler``; a range raises :class:`PruningConfigError`."""
        ranges = [p.name for p in self.params if p.is_range]
        if ranges:
            raise PruningConfigError(f"the grid sampler needs a list of values for every parameter; {', '.join(ranges)} "
                                     "is a range", hint="write e.g. `[0.001, 0.005]` instead, or use sampler 'tpe' or 'random'")
        return {p.name: list(p.choices or ()) for p in self.params}

    def grid_size(self) -> int | None:
        """Number of grid points, or ``None`` when the space has ranges."""
        if self.has_ranges():
            return None
        return math.prod(len(p.choices or ()) for p in self.params)

    def grid_points(self) -> list[dict[str, Any]]:
        """Every grid point as ``{name: value}`` (in the order of :meth:`grid`)."""
        grid = self.grid()
        return [dict(zip(grid, values)) for values in itertools.product(*grid.values())]

    def suggest(self, trial: Any) -> dict[str, Any]:
        """Ask an Optuna trial for every parameter."""
        return {p.name: p.suggest(trial) for p in self.params}

    def to_dict(self) -> dict[str, Any]:
        """The YAML form (inverse of :meth:`from_mapping`)."""
        return {p.name: p.to_yaml_value() for p in self.params}


def _number_or_self(value: Any) -> Any:
    if isinstance(value, str) and _EXPONENT_NUMBER.fullmatch(value.strip()):
        return float(value)
    return value


def _parse_param(name: Any, value: Any) -> Param:
    if not isinstance(name, str) or "." not in name or not all(name.rsplit(".", 1)):
        raise PruningConfigError(f"search space key {name!r} is not of the form ClassName.argument",
                                 hint="e.g. `ThresholdSkipFineTune.threshold`, `PruningAwareLR.lr_base`")
    if isinstance(value, Mapping):
        return _parse_range(name, value)
    if isinstance(value, list | tuple):
        value = [_number_or_self(v) for v in value]
        if not value:
            raise PruningConfigError(f"{name}: the list of values is empty", hint="give at least one value")
        bad = [v for v in value if not isinstance(v, _SCALARS)]
        if bad:
            raise PruningConfigError(f"{name}: values must be numbers, strings, booleans or null, got {bad[0]!r}",
                                     hint="tune nested objects through their own arguments")
        if len(set(map(repr, value))) != len(value):
            raise PruningConfigError(f"{name}: {list(value)} repeats a value", hint="list each value once")
        return Param(name, choices=tuple(value))
    if isinstance(value, _SCALARS):
        return Param(name, choices=(_number_or_self(value),))
    raise PruningConfigError(f"{name}: {value!r} is neither a list of values nor a {{low, high, log}} range",
                             hint="write `[a, b, c]` or `{low: 1.0e-4, high: 1.0e-2, log: true}`")


def _parse_range(name: str, value: Mapping[str, Any]) -> Param:
    unknown = sorted(set(value) - set(_RANGE_KEYS))
    if unknown or "low" not in value or "high" not in value:
        raise PruningConfigError(f"{name}: range {dict(value)!r} needs `low` and `high` (optional `log`, `step`)"
                                 + (f"; unknown keys {unknown}" if unknown else ""),
                                 hint="write e.g. `{low: 1.0e-4, high: 1.0e-2, log: true}`")
    low, high, log, step = (_number_or_self(value["low"]), _number_or_self(value["high"]), value.get("log", False),
                            _number_or_self(value.get("step")))

    def number(x: Any) -> bool:
        return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)

    if not (number(low) and number(high) and low < high):
        raise PruningConfigError(f"{name}: low={low!r}, high={high!r} must be finite numbers with low < high",
                                 hint="write e.g. `{low: 1.0e-4, high: 1.0e-2}`")
    if not isinstance(log, bool):
        raise PruningConfigError(f"{name}: log={log!r} must be true or false", hint="write `log: true`")
    if log and low <= 0:
        raise PruningConfigError(f"{name}: a log range needs low > 0, got {low!r}", hint="use a positive low or log: false")
    if step is not None and (not number(step) or step <= 0 or log):
        raise PruningConfigError(f"{name}: step={step!r} must be a number > 0 and cannot be combined with log",
                                 hint="drop `step` or `log`")
    return Param(name, low=low, high=high, log=log, step=step)
