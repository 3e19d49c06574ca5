"""Where a steady-state decode step's time goes, and how far it is from the memory floor.

A *variant* is a strategy spec plus a `--compile` mode on one set of weights: a bench catalog
case (bench/catalog.py, `--sweep gpu`). `measure_variant` times it the suite's way
(streamllm.measure: the cache filled to steady state, whole-cycle rounds of THE timed step, TPOT
over whole cycles), profiles one more round of the same steps op by op (torch.profiler: CUDA
kernels, graph replays traced kernel by kernel; on CPU the aten ops' own CPU time), and puts the
TPOT next to the memory floor (streamllm.floor: the bytes a step must read, over the copy
bandwidth calibration.copy_bandwidth_GBps measures).

`WeightSets` loads one model per weight transform. INT8 quantizes in place, so a float variant
must never run on a model an INT8 variant quantized (the old scripts/gpu_tpot.py did exactly
that: every float variant listed after an INT8 one was timed on INT8 weights and labelled float).
Each row records the MLP weights it actually ran on (`weights_kind`).

`hf_static_slice` is the reference a transformers user would write, dense decode through HF's
StaticCache and torch.compile(mode="reduce-overhead"), as a DecodeSlice timed by the same clock.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from transformers import StaticCache

from .combinations import decode_mode_for
from .compat import cache_kwargs
from .decode_slice import DecodeSlice, prepare_slice
from .decoders import decoder_factory
from .floor import analytic_step_bytes, floor_ms, mean_attended_slots
from .measure import TimingRun, steps_per_round, time_rounds
from .models import LoadedModel, load_model
from .strategies import StrategySpec
from .transforms import apply_int8, is_mlp_linear

# Kernel (or aten op) name fragments -> the group a profile row adds to. First match wins.
KERNEL_GROUPS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("attention", ("fmha", "attention", "flash", "attn", "sdpa", "decode_attention")),
    ("matmul", ("gemv", "gemm", "cutlass", "cublas", "nvjet", "sm90_", "xmma", "addmm", "aten::mm", "bmm",
                "matmul", "linear")),
    ("copy", ("memcpy", "memset", "aten::copy_", "aten::index_copy")),
    ("triton (fused elementwise/norm/scatter)", ("triton",)),
)


# -- weights ---------------------------------------------------------------------------------
def weights_kind(model: torch.nn.Module) -> dict[str, str]:
    """What the first MLP linear's weight is: INT8 rows show torchao's tensor type, float rows a plain one."""
    for name, module in model.named_modules():
        if is_mlp_linear(module, name):
            weight = module.weight
            tensor = weight.data if isinstance(weight, torch.nn.Parameter) else weight  # the Parameter's payload
            return {"module": name, "type": type(tensor).__name__, "dtype": str(weight.dtype).removeprefix("torch.")}
    return {"module": "", "type": "none", "dtype": ""}


class WeightSets:
    """One LoadedModel per weight transform ("int8" or none), loaded on first use.

    `compile` cases share the float weights (compile wraps the step, not the weights); INT8
    cases get a model of their own, quantized once. The bench suite and the GPU scripts both hold
    one. `load_options` go to `load_model` (device_map, max_memory)."""

    def __init__(self, model: str, dtype: str | torch.dtype, device: str | torch.device, **load_options):
        self.model, self.dtype, self.device = model, dtype, device
        self.load_options = load_options
        self._loaded: dict[str | None, LoadedModel] = {}

    @staticmethod
    def weights(transform: str | None) -> str | None:
        return "int8" if transform == "int8" else None

    def get(self, transform: str | None = None) -> LoadedModel:
        weights = self.weights(transform)
        if weights not in self._loaded:
            loaded = load_model(self.model, dtype=self.dtype, device=self.device, **self.load_options)
            if weights == "int8":
                apply_int8(loaded.model)
            self._loaded[weights] = loaded
        return self._loaded[weights]

    def loaded(self, transform: str | None = None) -> LoadedModel | None:
        """The model of this transform if it was loaded already (nothing is loaded here)."""
        return self._loaded.get(self.weights(transform))

    def use(self, loaded: LoadedModel, transform: str | None = None) -> None:
        """Serve `loaded` for this transform instead of loading `model` by name (tests: a tiny model)."""
        self._loaded[self.weights(transform)] = loaded


# -- per-kernel profile ----------------------------------------------------------------------
@dataclass
class KernelProfile:
    clock: str  # "device" (CUDA kernels and copies) or "cpu" (aten ops' self CPU time)
    steps: int
    us_per_step: float
    us_per_step_by_group: dict[str, float]
    events_per_step: float  # kernels launched (CUDA) or aten ops run (CPU) per step
    top: list[dict] = field(default_factory=list)  # name, count (over all steps), us_per_step


def kernel_group(name: str) -> str:
    lowered = name.lower()
    for group, fragments in KERNEL_GROUPS:
        if any(fragment in lowered for fragment in fragments):
            return group
    return "other"


def profile_steps(step: Callable[[], object], steps: int, device: torch.device | str, top: int = 30) -> KernelProfile:
    """Time per kernel over `steps` calls of `step` (torch.profiler).

    On CUDA only device events count (kernels, memcpy/memset): an aten op's device time is its
    kernels' time, so counting both would count every kernel twice. On CPU, every aten op's self
    time (its children's time is theirs)."""
    from torch.profiler import ProfilerActivity, profile

    cuda = torch.device(device).type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    wanted = torch.autograd.DeviceType.CUDA if cuda else torch.autograd.DeviceType.CPU
    with torch.inference_mode(), profile(activities=activities) as prof:
        for _ in range(steps):
            step()
    rows = []
    for event in prof.key_averages():
        if event.device_type != wanted:
            continue
        us = event.self_device_time_total if cuda else event.self_cpu_time_total
        if us > 0:
            rows.append({"name": event.key[:160], "count": event.count, "us_per_step": us / steps})
    rows.sort(key=lambda r: -r["us_per_step"])
    groups: dict[str, float] = {}
    for row in rows:
        group = kernel_group(row["name"])
        groups[group] = groups.get(group, 0.0) + row["us_per_step"]
    return KernelProfile(clock="device" if cuda else "cpu", steps=steps, us_per_step=sum(groups.values()),
                         us_per_step_by_group=groups, events_per_step=sum(r["count"] for r in rows) / steps,
                         top=rows[:top])


# -- one variant -----------------------------------------------------------------------------
@dataclass
class VariantRow:
    """One variant's steady-state TPOT (streamllm.measure), floor and profile."""

    name: str
    label: str
    compile_mode: str
    weights: dict[str, str]
    tpot_ms: float  # mean over whole eviction cycles (measure.tpot_ms), wall clock, synchronized per step
    tpot_ms_median: float
    tpot_ms_p90: float
    tpot_ms_max: float
    device_tpot_ms: float | None  # CUDA events around each step
    warmup_ms: float  # the warm-up round(s): compile and graph capture happen there
    fill_s: float
    steps_per_round: int
    rounds: int
    attended_slots: float  # mean |C_t| + 1 over the timed steps' cycles
    step_bytes: int  # floor.analytic_step_bytes: weights once + the attended K/V
    kv_bytes: int  # the K/V part of step_bytes
    floor_ms: float | None  # step_bytes over the copy bandwidth; None without one
    samples_ms: list[float]  # per-round TPOT
    step_ms: list[float]  # every timed step (wall), e.g. the static cache's shift spikes every R-th step
    profile: KernelProfile | None = None
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


def _row(name: str, label: str, compile_mode: str, loaded: LoadedModel, slice_: DecodeSlice, run: TimingRun,
         attended: float, bandwidth_GBps: float | None, profile_rounds: int, notes: list[str]) -> VariantRow:
    profile = None
    if profile_rounds:
        steps = profile_rounds * run.steps_per_round  # whole cycles, like the timed rounds
        profile = profile_steps(slice_.step, steps, loaded.device)
        slice_.flush()
    nbytes = analytic_step_bytes(loaded.model, attended)
    weight_bytes = analytic_step_bytes(loaded.model, 0)
    step_ms = np.asarray(run.step_ms)
    return VariantRow(
        name=name, label=label, compile_mode=compile_mode, weights=weights_kind(loaded.model),
        tpot_ms=run.mean_ms, tpot_ms_median=run.median_ms, tpot_ms_p90=float(np.percentile(step_ms, 90)),
        tpot_ms_max=float(step_ms.max()), device_tpot_ms=run.device_mean_ms, warmup_ms=run.warmup_ms,
        fill_s=run.fill_s, steps_per_round=run.steps_per_round, rounds=run.rounds, attended_slots=attended,
        step_bytes=nbytes, kv_bytes=nbytes - weight_bytes,
        floor_ms=floor_ms(nbytes, bandwidth_GBps) if bandwidth_GBps else None, samples_ms=run.samples,
        step_ms=[round(x, 4) for x in run.step_ms], profile=profile, notes=notes)


def _timed_kv_mean(slice_: DecodeSlice, run: TimingRun) -> float:
    """Mean |C_t| + 1 over the timed steps (the warm-up round(s) came first in the slice)."""
    first = run.warmup_rounds * run.steps_per_round
    return float(np.mean(slice_.kv_length[first : first + len(run.step_ms)]))


def measure_variant(loaded: LoadedModel, ids: torch.Tensor, spec: StrategySpec, compile_mode: str = "none", *,
                    name: str | None = None, label: str | None = None, min_steps: int = 32, rounds: int = 4,
                    warmup_rounds: int = 1, profile_rounds: int = 0,
                    bandwidth_GBps: float | None = None) -> VariantRow:
    """Steady-state TPOT of `spec` decoded with `compile_mode` on `loaded`'s weights.

    The cache jumps to steady state (random K/V for the preallocated caches, one chunked forward
    for the dynamic one: decode_slice.prepare_slice), then `warmup_rounds` (compile and capture) and
    `rounds` rounds of whole eviction cycles (>= `min_steps` steps each), then `profile_rounds`
    more rounds under torch.profiler. Refused combinations raise with combinations' reason."""
    mode, why = decode_mode_for(spec, compile_mode)
    factory = decoder_factory(mode, loaded.device, spec.cache)
    cycle = spec.compress_every if spec.capacity is not None else 1
    steps = steps_per_round(cycle, min_steps)
    slice_ = prepare_slice(loaded, ids, spec, timed_steps=(warmup_rounds + rounds + profile_rounds) * steps,
                           decoder_factory=factory, real_fill=False)
    run = time_rounds(slice_, steps=steps, cycle=cycle, rounds=rounds, warmup_rounds=warmup_rounds)
    kv = _timed_kv_mean(slice_, run)
    # The floor counts what the strategy must attend (its eviction rule); dense grows while timed.
    attended = mean_attended_slots(spec) if spec.capacity is not None else kv
    notes = [why] if why else []
    if spec.capacity is None:
        first = run.warmup_rounds * run.steps_per_round
        timed = slice_.kv_length[first : first + len(run.step_ms)]
        notes.append(f"dense attends {min(timed)} to {max(timed)} entries while timed")
    return _row(name or spec.label(), label or spec.label(), mode, loaded, slice_, run, attended, bandwidth_GBps,
                profile_rounds, notes)


# -- the transformers reference --------------------------------------------------------------
class _CountedStaticCache(StaticCache):
    """transformers' StaticCache with the two read-outs DecodeSlice asks every cache for."""

    def __init__(self, config: object, max_cache_len: int, length: int):
        super().__init__(config=config, max_cache_len=max_cache_len)
        self.filled = length

    @property
    def length(self) -> int:
        return self.filled

    def next_position(self) -> int:
        return self.filled


class HFStaticDecoder:
    """Dense decode as a transformers user writes it: StaticCache + torch.compile(model.forward, mode).

    `mode=None` runs the forward eagerly (CPU tests of the arm itself)."""

    def __init__(self, model: torch.nn.Module, cache: _CountedStaticCache, mode: str | None = "reduce-overhead"):
        self.model, self.cache = model, cache
        self.forward = torch.compile(model.forward, mode=mode, fullgraph=True) if mode else model.forward

    def step(self, token: torch.Tensor) -> tuple[torch.Tensor, None]:
        position = torch.tensor([[self.cache.filled]], device=token.device)
        out = self.forward(input_ids=token, position_ids=position, **cache_kwargs(self.model, self.cache))
        self.cache.filled += 1
        return out.logits[0, -1].clone(), None  # a graph-owned output must not outlive the next replay


def hf_static_slice(loaded: LoadedModel, ids: torch.Tensor, length: int, timed_steps: int,
                    mode: str | None = "reduce-overhead") -> DecodeSlice:
    """HF StaticCache holding the first `length` tokens (one eager prefill), room for `timed_steps`
    more; its steps attend every slot of the buffer, masked or not."""
    ids = ids.to(loaded.device)
    if length + timed_steps > ids.numel() - 1:
        raise ValueError(f"hf-static: {length} prefilled + {timed_steps} steps need {length + timed_steps + 1} "
                         f"tokens, the text has {ids.numel()}")
    cache = _CountedStaticCache(loaded.model.config, max_cache_len=length + timed_steps + 1, length=length)
    with torch.inference_mode():
        loaded.model(input_ids=ids[:length].view(1, -1), **cache_kwargs(loaded.model, cache))
    decoder = HFStaticDecoder(loaded.model, cache, mode)
    return DecodeSlice(loaded, None, ids, cache, decoder, cursor=length, fill_mode="chunked")


def measure_hf_static(loaded: LoadedModel, ids: torch.Tensor, length: int, *, mode: str | None = "reduce-overhead",
                      name: str = "hf-static-compile", min_steps: int = 32, rounds: int = 4, warmup_rounds: int = 1,
                      profile_rounds: int = 0, bandwidth_GBps: float | None = None) -> VariantRow:
    """The transformers reference row: dense from `length` cached tokens, timed like every variant."""
    steps = steps_per_round(1, min_steps)
    total = (warmup_rounds + rounds + profile_rounds) * steps
    slice_ = hf_static_slice(loaded, ids, length, total, mode)
    run = time_rounds(slice_, steps=steps, cycle=1, rounds=rounds, warmup_rounds=warmup_rounds)
    notes = [f"HF StaticCache(max_cache_len={length + total + 1}) prefilled with {length} tokens; every step "
             f"attends all its slots; torch.compile mode={mode}"]
    return _row(name, f"dense-hf-static+{mode or 'eager'}", mode or "none", loaded, slice_, run,
                _timed_kv_mean(slice_, run), bandwidth_GBps, profile_rounds, notes)


def profile_lines(name: str, profile: dict, top: int = 8) -> list[str]:
    """A kernel profile (KernelProfile's JSON form) as printable lines: the total, the groups, the top kernels."""
    groups = ", ".join(f"{k} {v / 1e3:.3f}" for k, v in sorted(profile["us_per_step_by_group"].items()))
    lines = [f"profile {name} ({profile.get('clock', 'device')}): {profile['us_per_step'] / 1e3:.3f} ms/step, "
             f"{profile['events_per_step']:.0f} events/step; {groups}"]
    for row in profile["top"][:top]:
        lines.append(f"    {row['us_per_step']:9.1f} us x{row['count'] / profile['steps']:<6.1f} {row['name'][:90]}")
    return lines
