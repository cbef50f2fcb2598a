"""Lazy package attributes (PEP 562): a package's public names are imported on first access.

So ``import lightning_prune`` (and ``lightning-prune --help``) imports neither torch nor Lightning,
while ``from lightning_prune import StructuredPruning`` and ``lightning_prune.callbacks.structured``
work as usual.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any


def lazy_attributes(package: str, namespace: dict[str, Any], exports: Mapping[str, str],
                    public: list[str]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``__getattr__`` and ``__dir__`` for ``package``: ``exports`` maps a public name to its module.

    A name that is not exported is tried as a submodule (``package.name``). A resolved name is stored
    in ``namespace`` (the package's globals) so later lookups skip ``__getattr__``.

    Example:
        >>> ns = {}
        >>> getattr_, dir_ = lazy_attributes("json", ns, {"dumps": "json"}, ["dumps"])
        >>> getattr_("dumps")([1]), "dumps" in ns, dir_()
        ('[1]', True, ['dumps'])
    """

    def __getattr__(name: str) -> Any:
        module = exports.get(name)
        if module is not None:
            value = getattr(importlib.import_module(module), name)
            namespace[name] = value
            return value
        if not name.startswith("__"):
            try:
                return importlib.import_module(f"{package}.{name}")
            except ModuleNotFoundError as err:
                if err.name != f"{package}.{name}":
                    raise
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def __dir__() -> list[str]:
        return sorted(set(namespace) | set(public))

    return __getattr__, __dir__
