"""Where each `pytest bench -n N` worker runs: its GPU and its block of cores (bench/xdist.py).

Planning is pure (`plan_pinning`: one `Pinning` per worker slot, from the caller's own
CUDA_VISIBLE_DEVICES list and CPU affinity); `apply_pinning` applies one slot's plan inside the
worker, before anything there touches CUDA (CUDA reads CUDA_VISIBLE_DEVICES once, at its
initialisation), so each worker sees one GPU (`cuda:0`) and eager host-bound decode does not
contend for cores. `cpu_timing_refusal` says why several workers on one CPU time nothing.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass


# -- pure planning -------------------------------------------------------------------------------
def visible_gpus(env: str | None, count: int) -> list[str]:
    """The caller's GPU list: the entries of its CUDA_VISIBLE_DEVICES (indices, UUIDs or MIG ids,
    kept verbatim), or 0..count-1 when it is unset. An empty variable hides every GPU."""
    if env is None:
        return [str(i) for i in range(count)]
    entries = [e.strip() for e in env.split(",")]
    # CUDA stops at the first invalid entry ("-1" is the documented way to hide the rest)
    out: list[str] = []
    for entry in entries:
        if not entry or entry.startswith("-"):
            break
        out.append(entry)
    return out


def worker_gpus(visible: Sequence[str], workers: int) -> list[str]:
    """One visible GPU per worker, in the caller's order. More workers than GPUs would put two
    timed workers on one card: refused (ValueError naming the fix)."""
    if workers < 1:
        raise ValueError("need at least one worker")
    if workers > len(visible):
        raise ValueError(f"-n {workers} with {len(visible)} visible GPU(s) ({','.join(visible) or 'none'}): one "
                         f"worker per GPU, so use -n {len(visible) or 0} (or -n auto)")
    return list(visible[:workers])


def split_cores(cores: Iterable[int], workers: int) -> list[tuple[int, ...]]:
    """Disjoint contiguous blocks of `cores` (sorted), sizes differing by at most one, in slot order.

    With fewer cores than workers each worker gets one core, round-robin (shared: see
    `cores_shared`); the caller decides whether that is acceptable."""
    pool = sorted(set(cores))
    if workers < 1:
        raise ValueError("need at least one worker")
    if not pool:
        raise ValueError("no cores to split")
    if workers >= len(pool):
        return [(pool[i % len(pool)],) for i in range(workers)]
    base, extra = divmod(len(pool), workers)
    out, start = [], 0
    for slot in range(workers):
        size = base + (1 if slot < extra else 0)
        out.append(tuple(pool[start : start + size]))
        start += size
    return out


def cores_shared(blocks: Sequence[Sequence[int]]) -> bool:
    seen: set[int] = set()
    for block in blocks:
        if seen & set(block):
            return True
        seen |= set(block)
    return False


@dataclass(frozen=True)
class Pinning:
    """What one worker slot gets: its GPU (an entry of the caller's CUDA_VISIBLE_DEVICES; None on
    CPU) and its cores (threads = cores)."""

    slot: int
    workers: int
    gpu: str | None
    cores: tuple[int, ...]
    shared: bool = False  # some core is also another worker's

    @property
    def threads(self) -> int:
        return len(self.cores)

    def describe(self) -> str:
        where = f"GPU {self.gpu}" if self.gpu is not None else "CPU"
        cores = _ranges(self.cores)
        return f"slot {self.slot}: {where}, cores {cores} ({self.threads} thread{'s' * (self.threads != 1)})" + (
            ", cores SHARED with another worker" if self.shared else "")


def plan_pinning(workers: int, *, cuda: bool, cores: Iterable[int], visible_env: str | None = None,
                 gpu_count: int = 0) -> list[Pinning]:
    """One Pinning per worker slot. On CUDA: GPUs from the caller's list (`worker_gpus`)."""
    blocks = split_cores(cores, workers)
    shared = cores_shared(blocks)
    gpus: list[str | None] = (list(worker_gpus(visible_gpus(visible_env, gpu_count), workers)) if cuda
                              else [None] * workers)
    return [Pinning(slot, workers, gpus[slot], blocks[slot], shared) for slot in range(workers)]


def cpu_timing_refusal(device_type: str, workers: int, cores: int) -> str | None:
    """Why timing does not run under -n on this device (None: it runs)."""
    if device_type != "cpu" or workers <= 1:
        return None
    return (f"-n {workers} on CPU: the workers share this machine's {cores} cores, caches and memory bandwidth, "
            "so their TPOT would measure each other; PPL only (the serial run's evaluators), run without -n for TPOT")


def cuda_requested(device: str | None) -> bool:
    """--device asks for CUDA, without initialising CUDA here (`auto`: torch's NVML-based count)."""
    if device is None or device == "cpu":
        return False
    if device.startswith("cuda"):
        return True
    if device == "auto":
        return gpu_count() > 0
    return False


def gpu_count() -> int:
    """GPUs the caller sees. torch.cuda.device_count() asks NVML first and does not initialise
    CUDA, so the workers this process starts still choose their devices."""
    try:
        import torch
    except ImportError:
        return 0
    return torch.cuda.device_count() if torch.version.cuda else 0


def _ranges(cores: Sequence[int]) -> str:
    parts, run = [], []
    for c in sorted(cores):
        if run and c != run[-1] + 1:
            parts.append(run)
            run = []
        run.append(c)
    if run:
        parts.append(run)
    return ",".join(f"{r[0]}-{r[-1]}" if len(r) > 1 else f"{r[0]}" for r in parts)


# -- the worker side ------------------------------------------------------------------------------
def apply_pinning(pinning: Pinning, environ: dict[str, str] | None = None,
                  setaffinity: Callable[[int, set[int]], None] | None = None) -> list[str]:
    """Pin this process: its GPU through CUDA_VISIBLE_DEVICES (before CUDA starts), its threads to its
    cores, torch's thread count to the core count. Returns notes on what could not be applied."""
    environ = os.environ if environ is None else environ
    notes: list[str] = []
    if pinning.gpu is not None:
        torch = sys.modules.get("torch")
        if torch is not None and torch.cuda.is_initialized():
            # Too late: this process already chose its devices; the slot's GPU would be ignored.
            raise RuntimeError("CUDA was initialised in this worker before the suite could pin it to "
                               f"GPU {pinning.gpu}; a plugin touched CUDA at import")
        environ["CUDA_VISIBLE_DEVICES"] = pinning.gpu
    # every library's pool sizes itself from these (OpenMP, MKL, inductor's compile workers)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        environ[var] = str(pinning.threads)
    setaffinity = setaffinity or getattr(os, "sched_setaffinity", None)
    if setaffinity is None:
        notes.append("this OS has no sched_setaffinity: cores not pinned")
    else:
        # Every thread of the process: sched_setaffinity(0) pins only the calling one, and
        # execnet's I/O thread already exists (threads started later inherit the main thread's set).
        for tid in _threads():
            try:
                setaffinity(tid, set(pinning.cores))
            except OSError as exc:  # a thread that exited meanwhile, or cores outside our cgroup
                notes.append(f"thread {tid}: {exc}")
    import torch

    torch.set_num_threads(pinning.threads)
    return notes


def _threads() -> list[int]:
    try:
        return [int(t) for t in os.listdir("/proc/self/task")]
    except OSError:
        return [0]
