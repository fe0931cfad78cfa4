"""A quiet console for `panacea-pl`: progress, results and real warnings, not library chatter.

    from panacea_pl.console import quiet_console
    quiet_console()   # `panacea-pl` calls it before it parses a config

Each filter names one message that a newcomer cannot act on, so a real warning still shows:
Lightning's LightningCLI `args` notice (we pass the arguments on purpose), its litlogger /
litmodels advertisements, a pytree deprecation inside Lightning, its notice that an empty
validation list is empty (our datamodules return one when there is no validation split), W&B's
banner and its
git-root warning (a run folder outside a git checkout is normal). Set `PANACEA_VERBOSE=1` to
see everything.
"""

from __future__ import annotations

import logging
import os
import warnings

#: Warnings (message regexes) that carry no information for a user of `panacea-pl`.
QUIET_WARNINGS = (
    r".*LightningCLI's args parameter is intended to run from within Python.*",
    r".*isinstance\(treespec, LeafSpec\)` is deprecated.*",
    r".*The anonymous setting has no effect.*",
    # our datamodules return [] for "no validation split" (val_fraction 0) on purpose
    r".*Total length of `list` across ranks is zero.*",
)

#: Lightning info lines (prefixes) that advertise other products.
QUIET_INFO_PREFIXES = ("💡 Tip:",)


class _DropPrefixes(logging.Filter):
    """Drops log records whose message starts with one of `prefixes`."""

    def __init__(self, prefixes: tuple[str, ...]):
        super().__init__()
        self.prefixes = prefixes

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.getMessage()).startswith(self.prefixes)


_installed = False


def quiet_console() -> None:
    """Install the filters above (idempotent). A no-op with `PANACEA_VERBOSE=1`."""
    global _installed
    if _installed or os.environ.get("PANACEA_VERBOSE") == "1":
        return
    _installed = True
    for pattern in QUIET_WARNINGS:
        warnings.filterwarnings("ignore", message=pattern)
    drop = _DropPrefixes(QUIET_INFO_PREFIXES)
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        logging.getLogger(name).addFilter(drop)
    # W&B: no banner, no git probing of the run folder; its real warnings and errors still show
    os.environ.setdefault("WANDB_SILENT", "true")
    os.environ.setdefault("WANDB_DISABLE_GIT", "true")
