"""The hardware fingerprint: what a machine is, as far as timing is concerned, and its short id.

Everything that keys a timing by machine (the run history, pytest-benchmark's machine info, the
run JSON, the GPU scripts) takes it from here. The CPU model comes from py-cpuinfo, as in
pytest-benchmark's own machine info, with /proc/cpuinfo as the fallback.

The id covers what decides a timing: device class (CPU, or the GPU model), the CPU model, the
GPU, torch, and on CPU the usable core count and torch's thread count (the same 2-core machine
timed with 1 or 2 threads is two machines for decode timing). Python and the platform string
are kept in the fingerprint for people but do not split ids.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import re
from functools import cache
from importlib import metadata
from pathlib import Path


@cache
def cpu_model() -> str:
    """The CPU's brand string (py-cpuinfo; /proc/cpuinfo or the platform module as fallbacks)."""
    try:
        import cpuinfo

        brand = cpuinfo.get_cpu_info().get("brand_raw")
        if brand:
            return str(brand).strip()
    except Exception:  # noqa: BLE001 - py-cpuinfo probes the machine in many ways; any failure falls back
        pass
    try:
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            name, _, value = line.partition(":")
            if name.strip() in ("model name", "Hardware", "Processor", "cpu model"):
                return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))  # cores this process may use, not the host's total
    except AttributeError:
        return os.cpu_count() or 1


def package_version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def hardware_fingerprint(device: str | None = None, threads: int | None = None) -> dict:
    """`device`: "cpu", "cuda", "cuda:N" or None (CUDA when available). Device class is "cpu" or
    "cuda:<GPU model>"; the CPU model matters on GPU too (host overhead dominates eager decode).
    `threads`: the torch thread count the timings run with (default: torch's now). Pass it: a
    caller that reads torch's count before the suite sets it gets another id for the same machine."""
    import torch  # lazy: reading stored records must not pay for a torch import

    dev = torch.device(device) if device not in (None, "auto") else None
    if dev is None:
        dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    gpu = None
    if dev.type == "cuda" and torch.cuda.is_available():
        gpu = torch.cuda.get_device_name(dev.index if dev.index is not None else torch.cuda.current_device())
    return {
        "device_class": f"cuda:{gpu}" if gpu else dev.type,
        "cpu_model": cpu_model(),
        "cpu_count": usable_cores(),
        "torch_threads": threads if threads is not None else torch.get_num_threads(),
        "gpu": gpu,
        "gpu_count": torch.cuda.device_count() if torch.cuda.is_available() else 0,
        "cuda": torch.version.cuda,
        "torch": torch.__version__,
        "transformers": package_version("transformers"),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "machine": platform.machine(),
    }


def fingerprint_id(fp: dict) -> str:
    """`<kind>-<10 hex>` (+ `-t<threads>` on CPU): the id timings of this machine are stored under."""
    device_class = str(fp.get("device_class", "unknown"))
    fields = {"device_class": device_class, "cpu_model": fp.get("cpu_model"), "gpu": fp.get("gpu"),
              "torch": fp.get("torch")}
    if device_class == "cpu":
        fields["cpu_count"] = fp.get("cpu_count")
    digest = hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:10]
    kind = re.sub(r"[^A-Za-z0-9._-]+", "_", device_class.split(":", 1)[0]).strip("._") or "unknown"
    threads = fp.get("torch_threads")
    return f"{kind}-{digest}-t{threads}" if device_class == "cpu" and threads else f"{kind}-{digest}"
