"""Name -> criterion registry of the channel importance criteria."""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable
from typing import Any, TypeVar

from lightning_prune.errors import PruningConfigError
from lightning_prune.importance.base import ChannelImportance

__all__ = ["IMPORTANCES", "get_importance", "register_importance"]

IMPORTANCES: dict[str, type[ChannelImportance]] = {}
"""Every registered criterion by name (filled by :func:`register_importance`)."""

_T = TypeVar("_T", bound=type[ChannelImportance])
_NAME = re.compile(r"[a-z][a-z0-9_]*")


def _valid_names() -> str:
    return ", ".join(repr(n) for n in sorted(IMPORTANCES))


def _same_class(a: type, b: type) -> bool:
    """True also for a class re-created by re-importing its module."""
    return a is b or (a.__module__, a.__qualname__) == (b.__module__, b.__qualname__)


def register_importance(name: str) -> Callable[[_T], _T]:
    """Class decorator adding a :class:`ChannelImportance` subclass to :data:`IMPORTANCES`.

    The class's ``name`` is set to ``name``; it must be constructible without arguments.

    Args:
        name: Lower-case registry name (``[a-z][a-z0-9_]*``).

    Returns:
        The decorator, which returns the class unchanged apart from ``name``.

    Raises:
        PruningConfigError: For an invalid name, a non-criterion class or a name already
            taken by another class.

    Example:
        >>> import torch
        >>> @register_importance("doc_ones")
        ... class Ones(ChannelImportance):
        ...     def score(self, name, layer):
        ...         return torch.ones(layer.weight.shape[0])
        >>> get_importance("doc_ones").name
        'doc_ones'
        >>> _ = IMPORTANCES.pop("doc_ones")
    """
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise PruningConfigError(
            f"importance name {name!r} is not a lower-case identifier",
            hint="use letters, digits and underscores starting with a letter, e.g. 'my_norm'",
        )

    def decorator(cls: _T) -> _T:
        if not (isinstance(cls, type) and issubclass(cls, ChannelImportance)):
            raise PruningConfigError(
                f"register_importance({name!r}) got {cls!r}, not a ChannelImportance subclass",
                hint="subclass lightning_prune.importance.ChannelImportance",
            )
        taken = IMPORTANCES.get(name)
        if taken is not None and not _same_class(taken, cls):
            raise PruningConfigError(
                f"importance name {name!r} is already registered to {taken.__qualname__}",
                hint=f"choose a name other than {_valid_names()}",
            )
        cls.name = name
        IMPORTANCES[name] = cls
        return cls

    return decorator


def _construct(cls: type[ChannelImportance], kwargs: dict[str, Any]) -> ChannelImportance:
    try:
        inspect.signature(cls).bind(**kwargs)
    except TypeError as err:
        label = getattr(cls, "name", cls.__name__)
        raise PruningConfigError(
            f"invalid arguments {kwargs} for importance {label!r}: {err}",
            hint=f"{cls.__name__} accepts {inspect.signature(cls)}",
        ) from None
    return cls(**kwargs)


def get_importance(
    spec: str | ChannelImportance | type[ChannelImportance], **kwargs: Any
) -> ChannelImportance:
    """Resolve a criterion from a registry name, a class or an instance.

    Args:
        spec: A name from :data:`IMPORTANCES` (case-insensitive), a :class:`ChannelImportance`
            subclass, or an instance (returned as is).
        **kwargs: Constructor arguments, e.g. ``reduction="max"`` for ``"attention"``.

    Returns:
        The criterion.

    Raises:
        PruningConfigError: For an unknown name (the message lists the valid ones), invalid
            arguments, or arguments given together with an instance.

    Example:
        >>> get_importance("attention", reduction="max", p=2.0)
        AttentionImportance(reduction='max', p=2.0)
    """
    if isinstance(spec, ChannelImportance):
        if kwargs:
            raise PruningConfigError(
                f"arguments {kwargs} cannot be applied to the instance {spec!r}",
                hint="pass the name or class with arguments, or a configured instance alone",
            )
        return spec
    if isinstance(spec, type) and issubclass(spec, ChannelImportance):
        return _construct(spec, kwargs)
    if not isinstance(spec, str):
        raise PruningConfigError(
            f"importance must be a name or ChannelImportance, got {type(spec).__name__}",
            hint=f"use one of {_valid_names()}",
        )
    key = spec.strip().lower()
    if key not in IMPORTANCES:
        raise PruningConfigError(
            f"unknown importance {spec!r}; valid names are {_valid_names()}",
            hint="register your own criterion with @register_importance('name')",
        )
    return _construct(IMPORTANCES[key], kwargs)
