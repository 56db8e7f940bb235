"""Progress bars for long work: one place decides whether a bar is shown.

Every long loop in vlmlens (VRP passes, the activation store, zoo training and evaluation,
condition sweeps) draws its bar through :func:`progress_bar`, a ``tqdm.auto`` bar (a widget
in notebooks, text in a terminal). A call's ``progress`` argument decides: ``True`` shows
it, ``False`` hides it, ``None`` (where offered) shows it only for work of at least
:data:`AUTO_MIN` steps. ``TQDM_DISABLE=1`` in the environment silences every bar, whatever
the argument; the command line's ``vlmlens -q`` sets it.

Examples:
    >>> bar = progress_bar(range(3), desc="demo", progress=False)
    >>> sum(bar)
    3
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any

from tqdm.auto import tqdm

__all__ = ["AUTO_MIN", "progress_bar", "silenced"]

AUTO_MIN = 8
"""Steps from which ``progress=None`` shows a bar."""


def silenced() -> bool:
    """``TQDM_DISABLE`` is set to a true value (``1``, ``true``, ``yes``)."""
    return os.environ.get("TQDM_DISABLE", "").strip().lower() in ("1", "true", "yes")


def progress_bar(iterable: Iterable[Any] | None = None, *, desc: str, progress: bool | None = True,
                 total: int | None = None, **kwargs: Any) -> tqdm:
    """A ``tqdm.auto`` bar over ``iterable`` (or a manual one with ``total``), shown as decided above.

    Args:
        iterable: what to iterate over, or ``None`` for a bar updated by hand.
        desc: the bar's label.
        progress: ``True`` / ``False``; ``None`` shows it for at least :data:`AUTO_MIN` steps.
        total: the number of steps (default ``len(iterable)`` where it has one).
        **kwargs: passed to ``tqdm`` (``unit``, ``initial``, ``leave`` ...).
    """
    if total is None and iterable is not None and hasattr(iterable, "__len__"):
        total = len(iterable)
    shown = (total is not None and total >= AUTO_MIN) if progress is None else bool(progress)
    return tqdm(iterable, desc=desc, total=total, disable=silenced() or not shown, **kwargs)
