"""The machine's own yardsticks, timed with no code of this library or of transformers: the
torch-only calibration arm a run times between its cases (it tells a machine that slowed from code
both arms of a case share), and the device copy bandwidth the step floor is computed at."""

from __future__ import annotations

import torch

from .decode_slice import Clock


class CalibrationArm:
    """A fixed torch-only workload, timed between the cases of a run: a batch-1 matrix-vector
    product over a matrix the size of a small model's layer, repeated. It runs no code of this
    library or of transformers, so when both arms of a case slow down together, this arm tells
    the machine (it slows too) from code both arms share (it holds still)."""

    def __init__(self, device: torch.device | str, size: int = 2048, repeats: int = 8):
        self.device = torch.device(device)
        generator = torch.Generator(device="cpu").manual_seed(0)
        dtype = torch.float16 if self.device.type == "cuda" else torch.float32
        size = size * 4 if self.device.type == "cuda" else size  # ~128 MB of fp16: past L2, like a step
        self.matrix = torch.randn(size, size, generator=generator).to(self.device, dtype)
        self.vector = torch.randn(1, size, generator=generator).to(self.device, dtype)
        self.repeats = repeats
        self.clock = Clock(self.device)
        self.samples: list[float] = []

    def _work(self) -> torch.Tensor:
        out = self.vector
        for _ in range(self.repeats):
            out = (out @ self.matrix).tanh()  # tanh: bounded, so repeats never overflow fp16
        return out

    def measure(self, rounds: int = 4) -> list[float]:
        """`rounds` timed calls (ms each: device time on CUDA), appended to `samples`; one untimed first."""
        self._work()
        taken = []
        for _ in range(rounds):
            _, wall, device = self.clock.time(self._work)
            taken.append(device if device is not None else wall)
        self.samples.extend(taken)
        return taken


def copy_bandwidth_GBps(device: torch.device | str, nbytes: int = 256 * 2**20, repeats: int = 5) -> float:
    """Measured device copy bandwidth (bytes read + written per second, GB/s), the best of `repeats`
    copies of an `nbytes` buffer: the rate the step's floor is computed at (floor.floor_ms)."""
    device = torch.device(device)
    clock = Clock(device)
    src = torch.empty(nbytes, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    dst.copy_(src)  # first touch: allocate pages, warm the copy kernel
    best = min(clock.time(lambda: dst.copy_(src))[1] for _ in range(repeats))
    return 2 * nbytes / (best / 1e3) / 1e9
