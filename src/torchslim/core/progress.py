"""One progress bar for the whole toolkit (tqdm), quiet in logs.

On a terminal it refreshes as usual; when stderr is a file or a pipe (CI logs, ``make demo > log``) it
prints at most one line every 15 seconds instead of hundreds of carriage-return updates.
"""

from __future__ import annotations

import sys
from typing import Any


def progress_bar(iterable: Any = None, **kwargs: Any) -> Any:
    """``tqdm(iterable, **kwargs)`` with a log-friendly refresh interval off a terminal."""
    from tqdm.auto import tqdm

    if not _stderr_is_tty():
        kwargs.setdefault("mininterval", 15.0)
        kwargs.setdefault("maxinterval", 60.0)
    return tqdm(iterable, **kwargs)


def _stderr_is_tty() -> bool:
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False
