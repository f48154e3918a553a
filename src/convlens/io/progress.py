"""The one progress bar of convlens: ``tqdm``, redrawn often on a terminal, rarely in a file.

On a terminal a bar redraws itself in place. Written to a file or a CI log (stderr not a TTY),
every redraw becomes a new line: thousands of lines for one epoch. :func:`progress_bar` keeps
tqdm's defaults on a terminal and, elsewhere, redraws at most every :data:`LOG_INTERVAL` seconds
(plus the final line), so a log holds one line per step worth reading.
"""
from __future__ import annotations

import sys
from typing import Any

from tqdm import tqdm

__all__ = ["LOG_INTERVAL", "progress_bar"]

LOG_INTERVAL = 30.0
"""Seconds between two lines of a bar written to a file or a CI log."""


def progress_bar(iterable: Any = None, **kwargs: Any) -> tqdm:
    """``tqdm(iterable, **kwargs)``, with a long ``mininterval`` when its stream is not a terminal."""
    stream = kwargs.get("file") or sys.stderr
    try:
        tty = bool(stream.isatty())
    except (AttributeError, ValueError):  # a closed or odd stream
        tty = False
    if tty:
        return tqdm(iterable, **kwargs)
    kwargs.setdefault("mininterval", LOG_INTERVAL)
    kwargs.setdefault("maxinterval", 2 * LOG_INTERVAL)
    kwargs.setdefault("dynamic_ncols", False)
    return _LogBar(iterable, **kwargs)


class _LogBar(tqdm):
    """A bar in a log: ``set_postfix`` / ``set_description`` wait for the next timed redraw instead of
    forcing one (tqdm redraws on each call by default: a line per batch in a file)."""

    def set_postfix(self, ordered_dict: Any = None, refresh: bool = False, **kwargs: Any) -> None:
        super().set_postfix(ordered_dict, refresh=False, **kwargs)

    def set_description(self, desc: str | None = None, refresh: bool = False) -> None:
        super().set_description(desc, refresh=False)
