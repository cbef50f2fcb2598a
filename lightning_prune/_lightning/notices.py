"""Lightning's notices the CLI silences, each named and pinned by a test."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator


#: The start of the notice Lightning logs when a Trainer has no ``LitLogger``.
LITLOGGER_TIP = "💡 Tip: For seamless cloud logging"


@contextlib.contextmanager
def without_litlogger_tip() -> Iterator[None]:
    """Drop Lightning's "💡 Tip: For seamless cloud logging ... litlogger" line while the block runs.

    Lightning behaviour relied on (``lightning.pytorch`` 2.6): ``Trainer.__init__`` calls
    ``_LoggerConnector.configure_logger``, which logs that tip with ``rank_zero_info`` whenever none of
    the Trainer's loggers is a ``LitLogger`` (even with ``logger=False``). ``rank_zero_info`` logs at
    INFO through the ``logging`` logger ``lightning.pytorch.utilities.rank_zero``. A filter on that
    logger removes only records whose message starts with :data:`LITLOGGER_TIP`; every other message
    (device summary, seeds, ...) still shows, and the filter is removed when the block ends.

    Example:
        >>> with without_litlogger_tip():
        ...     pass  # build the Trainer here
    """
    import logging

    class _DropTip(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            return not record.getMessage().startswith(LITLOGGER_TIP)

    logger = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    drop = _DropTip()
    logger.addFilter(drop)
    try:
        yield
    finally:
        logger.removeFilter(drop)


#: Warnings Lightning itself triggers (not our calls, nothing a user can act on), silenced by the CLI.
LIGHTNING_OWN_WARNINGS = (r"`isinstance\(treespec, LeafSpec\)` is deprecated",)


def ignore_lightning_own_warnings() -> None:
    """Silence :data:`LIGHTNING_OWN_WARNINGS` for the rest of the process (the CLI calls it).

    Lightning behaviour relied on (``lightning.pytorch`` 2.6 on torch 2.15): ``_pytree._tree_flatten``
    builds ``torch.utils._pytree.LeafSpec`` objects, which torch reports as deprecated on every fit.
    """
    import warnings

    for message in LIGHTNING_OWN_WARNINGS:
        warnings.filterwarnings("ignore", message=message)
