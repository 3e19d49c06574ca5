"""Is the HF hub usable from here? Answered fast, so offline users get an error in seconds
instead of huggingface_hub's minute of retries."""

from __future__ import annotations

import os
import socket

_FALSEY = ("", "0", "false", "False", "no")


def offline_env() -> bool:
    """The user asked for cache-only loading (HF_HUB_OFFLINE / HF_DATASETS_OFFLINE)."""
    return any(os.environ.get(var, "0") not in _FALSEY for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))


def reachable(timeout: float = 3.0) -> bool:
    if offline_env():
        return False
    try:
        socket.create_connection(("huggingface.co", 443), timeout=timeout).close()
        return True
    except OSError:
        return False
