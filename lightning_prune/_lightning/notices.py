"""Lightning's notices that are not about the user's run, silenced when this library's callbacks load.

Two kinds, each pinned by a test in ``tests/test_lightning_seams.py`` (so a Lightning release that
drops them shows up, and the filter can go):

* the "💡 Tip: ..." lines that advertise Lightning's cloud services (``litlogger``, ``litmodels``):
  Lightning behaviour relied on (``lightning.pytorch`` 2.6): ``Trainer.__init__`` logs them with
  ``rank_zero_info`` through the ``logging`` logger ``lightning.pytorch.utilities.rank_zero``; a
  filter on that logger drops the records whose message starts with :data:`TIP_PREFIX` and nothing
  else (the device summary, seeds and every warning still show);
* :data:`LIGHTNING_OWN_WARNINGS`: warnings Lightning's own code triggers on this torch (nothing a user
  can act on): ``_pytree._tree_flatten`` builds ``torch.utils._pytree.LeafSpec`` objects, which torch
  reports as deprecated on every fit.
"""

from __future__ import annotations

import logging
import warnings

#: How Lightning's advertising lines start.
TIP_PREFIX = "💡 Tip:"
#: The logger Lightning's ``rank_zero_info`` writes to.
RANK_ZERO_LOGGER = "lightning.pytorch.utilities.rank_zero"
#: Warnings Lightning itself triggers (not this library's calls).
LIGHTNING_OWN_WARNINGS = (r"`isinstance\(treespec, LeafSpec\)` is deprecated",)


class DropTips(logging.Filter):
    """Drops Lightning's "💡 Tip: ..." records; lets every other record through.

    Example:
        >>> tip = logging.LogRecord("x", logging.INFO, "", 0, "💡 Tip: try our cloud", None, None)
        >>> DropTips().filter(tip), DropTips().filter(logging.LogRecord("x", 20, "", 0, "GPU available", None, None))
        (False, True)
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(TIP_PREFIX)


TIP_FILTER = DropTips()


def quiet_lightning() -> None:
    """Silence Lightning's tips and :data:`LIGHTNING_OWN_WARNINGS` for the process (idempotent)."""
    logger = logging.getLogger(RANK_ZERO_LOGGER)
    if TIP_FILTER not in logger.filters:
        logger.addFilter(TIP_FILTER)
    for message in LIGHTNING_OWN_WARNINGS:
        warnings.filterwarnings("ignore", message=message)
