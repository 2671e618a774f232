"""Progress bars that show on a terminal and stay quiet when output is piped."""

from __future__ import annotations

import sys
from typing import Any


def progress_bar(total: int, desc: str = "", unit: str = "it", disable: bool = False, **kwargs: Any):
    from tqdm.auto import tqdm

    quiet = disable or not sys.stderr.isatty()
    return tqdm(total=total, desc=desc, unit=unit, disable=quiet, leave=False, dynamic_ncols=True, **kwargs)


def note(message: str) -> None:
    """One line on stderr for a decision made on the user's behalf (shown with --quiet too: it is not progress)."""
    print(message, file=sys.stderr, flush=True)
