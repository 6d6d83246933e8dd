"""Logging for the al-loop processes: one format, on standard error, levels from the
configuration (``logging.level``) or the command line (``--log-level``), tracebacks kept."""

from __future__ import annotations

import logging

from rich.console import Console
from rich.logging import RichHandler

LEVELS = ("debug", "info", "warning", "error")
_HANDLER: logging.Handler | None = None


def configure(level: str) -> None:
    """Send al-loop's records (and warnings of the libraries) to standard error at ``level``."""
    global _HANDLER
    if level not in LEVELS:
        raise ValueError(f"--log-level must be one of {', '.join(LEVELS)}, found {level!r}")
    root = logging.getLogger()
    if _HANDLER is None:
        _HANDLER = RichHandler(console=Console(stderr=True), show_path=False, rich_tracebacks=False,
                               log_time_format="%H:%M:%S")
        _HANDLER.setFormatter(logging.Formatter("%(name)s: %(message)s"))
        root.addHandler(_HANDLER)
        root.setLevel(logging.WARNING)
    for name in ("al_loop", "backends", "db"):
        logging.getLogger(name).setLevel(level.upper())
