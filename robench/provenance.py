"""What produced a run: package versions and the git commit of robench's source."""

from __future__ import annotations

import subprocess
import time
from importlib import metadata
from pathlib import Path
from typing import Dict

_VERSIONED = {
    "robench": "robench", "torch": "torch", "torchvision": "torchvision",
    "torchattacks": "torchattacks", "art": "adversarial-robustness-toolbox", "numpy": "numpy",
    "pandas": "pandas", "scikit-learn": "scikit-learn", "pyarrow": "pyarrow",
}


def collect_versions() -> Dict[str, str]:
    """Versions of robench and its main dependencies ('unknown' when not installed); no imports."""
    import platform

    from robench import __version__

    out = {"python": platform.python_version(), "platform": platform.platform()}
    for key, dist in _VERSIONED.items():
        try:
            out[key] = metadata.version(dist)
        except Exception:  # not installed, or broken metadata: never fail a run for this
            out[key] = "unknown"
    out["robench"] = __version__
    return out


def git_hash() -> str:
    """The commit of the robench source tree, with ``-dirty`` for local changes; else 'unknown'."""
    source = Path(__file__).resolve().parent.parent
    try:
        def git(*args: str) -> str:
            return subprocess.run(["git", "-C", str(source), *args], capture_output=True, text=True,
                                  timeout=5, check=True).stdout.strip()

        top = Path(git("rev-parse", "--show-toplevel")).resolve()
        if top != source:  # robench installed inside someone else's repository
            return "unknown"
        commit = git("rev-parse", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no")
    except Exception:
        return "unknown"
    return f"{commit}-dirty" if dirty else commit or "unknown"


def now() -> str:
    """The local time as the manifests write it (ISO 8601 with the UTC offset)."""
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")
