"""Result records of one streaming evaluation, and their JSON forms."""

from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np


@dataclass
class TokenTrace:
    """Per decode step t (feeds x_t, scores x_{t+1}); every list has tokens_scored entries."""

    nll: list[float]
    step_ms: list[float]  # device-synchronized wall time of forward + eviction; NaN if not timed
    kv_length: list[int]  # entries attended at step t: |C_t| + 1
    position: list[int]  # position id fed for x_t
    prune_steps: list[int] = field(default_factory=list)  # steps whose end evicted >= 1 entry
    evicted: list[int] = field(default_factory=list)  # entries evicted at each prune step


@dataclass
class EvalResult:
    strategy: str  # label, e.g. "lazy-s4-w252-c32"
    params: dict  # StrategySpec fields
    model: str
    model_revision: str
    dataset: str
    dataset_sha256: str
    tokens: int  # tokens taken from the text
    tokens_scored: int  # tokens - 1: x_1 .. x_{tokens-1}
    scored_range: tuple[int, int]  # [first, last] text index of scored tokens
    evaluator: str  # "token" (decode loop) or "parallel"
    device: str
    dtype: str
    ppl: float
    mean_nll: float
    total_s: float  # decode time after warm-up (NaN for the parallel evaluator)
    warmup_s: float
    warmup_steps: int
    tpot_ms_median: float  # median step time at steady state (cache full)
    tpot_ms_cycle_mean: float  # mean over whole eviction cycles at steady state
    steady_from: int  # first steady-state step
    prune_events: int
    max_position: int
    beyond_context: bool  # a position id reached the model's trained context
    speedup: float | None = None  # reference (dense) TPOT / this TPOT on the same text (measure.speedup)
    # NLL around prune events on the raw per-token NLL (streamllm.spikes.summarize). Confounded by
    # the text's own difficulty: *not* the spike. The spike is `delta_spikes` (ΔNLL vs dense).
    raw_nll_spikes: dict | None = None
    # The spike: ΔNLL against dense on the same tokens (streamllm.spikes.summarize_delta): steady
    # level after the first eviction, event-aligned excess and peak; set when dense ran beside it.
    delta_spikes: dict | None = None
    # Step-time shape at steady state (streamllm.steptime.split_step_times, the bench's prune-step
    # findings use the same): the prune step's mean ms and its multiple of a normal step, the prune's
    # share of TPOT, the p99 step (what a latency-bound user meets); None when untimed.
    step_shape: dict | None = None
    notes: list[str] = field(default_factory=list)
    trace: TokenTrace | None = None

    def summary(self) -> dict:
        """JSON-ready dict without the per-token trace."""
        out = asdict(self)
        out.pop("trace")
        out["scored_range"] = list(self.scored_range)
        return _finite(out)

    def per_token(self) -> dict:
        return _finite({"strategy": self.strategy, "tokens_scored": self.tokens_scored, **asdict(self.trace)})


def ppl_from_nll(nll: np.ndarray) -> tuple[float, float]:
    mean = float(np.mean(nll))
    return math.exp(mean), mean


def write_json_atomic(path: str | os.PathLike, payload) -> Path:
    """Write JSON via a temp file + rename, so readers never see a half-written file."""
    path = Path(path)
    write_text_atomic(path, json.dumps(payload, indent=2, sort_keys=False) + "\n")
    return path


def write_text_atomic(path: Path, text: str) -> None:
    """Readers see the old file or the new one, never a torn one; a crash leaves no temp file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    # Make the rename itself durable (best effort: not every platform can fsync a directory).
    with contextlib.suppress(OSError):
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def _finite(obj):
    """NaN/inf are not JSON: store them as null."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


@contextlib.contextmanager
def locked_directory(directory: str | os.PathLike) -> Iterator[None]:
    """Serialize read-merge-write (baselines) and append (run history) between processes, e.g.
    pytest-xdist workers, without leaving a lock file behind: flock on the directory itself
    (POSIX; elsewhere a no-op)."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
