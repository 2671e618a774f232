"""Progress bars that show on a terminal and stay quiet when output is piped."""

from __future__ import annotations

import sys
from typing import Any


def progress_bar(total: int, desc: str = "", unit: str = "it", disable: bool = False, **kwargs: Any):
    from tqdm.auto import tqdm

    quiet = disable or not sys.stderr.isatty()
    return tqdm(total=total, desc=desc, unit=unit, disable=quiet, leave=False, dynamic_ncols=True, **kwargs)


def note(message: str, quiet: bool = False) -> None:
    """One line for the user on stderr (a decision the run made on their behalf); ``quiet`` silences it."""
    if not quiet:
        print(message, file=sys.stderr, flush=True)
