"""Errors raised for invalid user input."""

from __future__ import annotations


class PruningConfigError(ValueError):
    """An invalid pruning configuration, raised before any training or surgery happens.

    Every message names the value received, what is allowed, and ends with a ``HINT:``.

    Example:
        >>> raise PruningConfigError("pruning_ratio=1.5 is outside (0, 1)", hint="use e.g. 0.6")
        Traceback (most recent call last):
        ...
        lightning_prune.errors.PruningConfigError: pruning_ratio=1.5 is outside (0, 1). HINT: use e.g. 0.6
    """

    def __init__(self, message: str, hint: str) -> None:
        super().__init__(f"{message.rstrip('.')}. HINT: {hint}")
        self.hint = hint


def check(ok: bool, message: str, hint: str) -> None:
    """Raise :class:`PruningConfigError` with ``message`` and ``hint`` unless ``ok``."""
    if not ok:
        raise PruningConfigError(message, hint=hint)
