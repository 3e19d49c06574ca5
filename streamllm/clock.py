"""The clock every decode time is read from: `Clock` synchronizes the device, reads perf_counter
around one call, and on CUDA also the device time between two events recorded around it (what the
GPU spent, idle gaps between launches included; the per-kernel sum is
`streamllm.harness.opcount`'s business). Beside each step's time, `minor_faults` counts the minor
page faults the process took during it: a step that keeps touching fresh memory is paying for its
allocator's state (a fragmented heap growing under large per-step temporaries), and the suite's
ratio check reads that before calling a slower step a regression."""

from __future__ import annotations

import time
from collections.abc import Callable

import torch

try:  # getrusage: POSIX only; imported once, not on every timed step
    import resource
except ImportError:
    resource = None


def minor_faults() -> int | None:
    """Minor page faults of this process so far (getrusage), or None where there is no such count."""
    if resource is None:
        return None
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


class Clock:
    """Synchronize, read perf_counter; on CUDA also CUDA events around the timed call."""

    def __init__(self, device: torch.device):
        self.device = torch.device(device)
        self.cuda = self.device.type == "cuda"

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)

    def time(self, fn: Callable[[], object]) -> tuple[object, float, float | None]:
        """(fn's result, wall ms, device ms or None) of one call, the device idle before and after."""
        self.sync()
        if self.cuda:
            start_event = torch.cuda.Event(enable_timing=True)
            end_event = torch.cuda.Event(enable_timing=True)
            start_event.record()
        start = time.perf_counter()
        out = fn()
        if self.cuda:
            end_event.record()
        self.sync()
        wall = (time.perf_counter() - start) * 1e3
        return out, wall, (start_event.elapsed_time(end_event) if self.cuda else None)
