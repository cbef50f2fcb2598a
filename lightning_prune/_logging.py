"""The library's logger: human messages on rank zero (like Lightning's own ``lightning.pytorch`` logger)."""

from __future__ import annotations

import logging

from lightning.pytorch.utilities.rank_zero import rank_zero_only

log = logging.getLogger("lightning_prune")
if not logging.getLogger().handlers and not log.handlers:  # a user's logging configuration wins
    log.setLevel(logging.INFO)
    log.addHandler(logging.StreamHandler())
    log.propagate = False


@rank_zero_only
def info(message: str) -> None:
    """Log ``message`` at INFO level, on global rank zero only."""
    log.info(message)


@rank_zero_only
def warn(message: str) -> None:
    """Log ``message`` at WARNING level, on global rank zero only: a result the user should not miss."""
    log.warning(message)
