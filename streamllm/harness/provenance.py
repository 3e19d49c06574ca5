"""Who recorded a stored baseline, and where: the commit (with a dirty flag), UTC date, command
line and package versions of this run (`make_provenance`)."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

from .fingerprint import package_version


def make_provenance(command: str | None = None, cwd: str | os.PathLike | None = None) -> dict:
    """commit (with a dirty flag), UTC date, command line and package versions of this run."""

    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=10, check=True)
        except (OSError, subprocess.SubprocessError):
            return None
        return out.stdout.strip()

    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no") if commit else None
    return {
        "commit": commit or "unknown",
        "dirty": bool(status) if status is not None else None,
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": command if command is not None else " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "environment": {
            "python": platform.python_version(),
            "platform": platform.platform(),
            **{dist: package_version(dist) for dist in ("torch", "transformers", "numpy", "scipy", "torchao")},
        },
    }
