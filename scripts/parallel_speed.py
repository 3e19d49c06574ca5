"""Wall time of the token loop vs the parallel evaluator on the embedded model (issue #4 target: >= 10x on CPU).

    python scripts/parallel_speed.py                       # 2048 tokens of book, strict S=4 W=252
    python scripts/parallel_speed.py --tokens 1024 --repeats 3 --strategy lazy --compress-every 32
    PYTHONPATH=. python scripts/parallel_speed.py --model dummy:pythia-2.8b --device cuda --dtype float16 \
        --tokens 20000 --token-repeats 0        # GPU: dummy weights, synthetic token ids

Runs alternate (token loop, parallel, parallel, ...) on the same tokens, so slow drifts of a
shared machine hit both alike. The token loop runs `--token-repeats` times (default 1: one run is
2047 steps, long enough to average itself), the parallel evaluator `--repeats` times (default 3);
the ratio is of medians (and of the fastest runs). Both are timed end to end (forward, eviction, NLL), the token loop without its
per-step clock. The script also reports max |ΔNLL| between them: a speed-up only counts if the
numbers agree. CPU timings are noisy (steal time, other jobs): compare within one run only.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from dataclasses import dataclass

import numpy as np
import torch

from streamllm.data import load_text, synthetic_ids, tokenize
from streamllm.evaluate import DecodeOptions, evaluate_tokens
from streamllm.models import load_model
from streamllm.parallel import evaluate_parallel
from streamllm.strategies import make_strategy


@dataclass
class Timings:
    token_s: list[float]
    parallel_s: list[float]
    max_abs_dnll: float

    def ratio(self, pick) -> float:
        return pick(self.token_s) / pick(self.parallel_s)


def timed(run, device: torch.device) -> tuple[float, object]:
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    sync()
    start = time.perf_counter()
    result = run()
    sync()
    return time.perf_counter() - start, result


def measure(loaded, ids: torch.Tensor, spec, repeats: int, token_repeats: int, chunk_size: int) -> Timings:
    token_s, parallel_s, delta = [], [], float("nan")
    for i in range(max(repeats, token_repeats)):
        if i < token_repeats:
            seconds, ref = timed(lambda: evaluate_tokens(loaded, ids, spec, options=DecodeOptions(time_steps=False)),
                                 loaded.device)
            token_s.append(seconds)
        if i >= repeats:
            continue
        seconds, got = timed(lambda: evaluate_parallel(loaded, ids, spec, chunk_size=chunk_size), loaded.device)
        parallel_s.append(seconds)
        if i < token_repeats:
            step = float(np.max(np.abs(np.asarray(got.trace.nll) - np.asarray(ref.trace.nll))))
            delta = step if np.isnan(delta) else max(delta, step)
        token = f"{token_s[-1]:7.2f} s" if i < token_repeats else "      -  "
        print(f"  token loop {token}   parallel {parallel_s[-1]:6.2f} s", flush=True)
    return Timings(token_s, parallel_s, delta)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="embedded")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--tokens", type=int, default=2048)
    parser.add_argument("--dataset", default="book")
    parser.add_argument("--strategy", default="strict")
    parser.add_argument("--sink", type=int, default=4)
    parser.add_argument("--window", type=int, default=252)
    parser.add_argument("--compress-every", type=int, default=1)
    parser.add_argument("--chunk-size", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=3, help="parallel evaluator runs")
    parser.add_argument("--token-repeats", type=int, default=1, help="token loop runs (0: parallel only)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    loaded = load_model(args.model, dtype=args.dtype, device=args.device)
    if loaded.tokenizer is None:  # dummy weights: synthetic ids (timing and agreement only)
        ids, text = synthetic_ids(loaded.model.config.vocab_size, args.tokens), "synthetic ids"
    else:
        ids, text = tokenize(loaded.tokenizer, load_text(args.dataset), args.tokens), args.dataset
    spec = make_strategy(args.strategy, sink=args.sink, window=args.window, compress_every=args.compress_every)
    evaluate_parallel(loaded, ids[:600], spec, chunk_size=args.chunk_size)  # warm-up: allocator, kernels
    load = os.getloadavg()[0]
    where = torch.cuda.get_device_name(loaded.device) if loaded.device.type == "cuda" else f"{args.threads} threads"
    print(f"{loaded.name} {args.dtype} on {where}, {text}: {args.tokens} tokens, {spec.label()}, "
          f"chunk {args.chunk_size}, load average {load:.1f} on {os.cpu_count()} CPUs")
    timings = measure(loaded, ids, spec, args.repeats, args.token_repeats, args.chunk_size)
    steps = args.tokens - 1
    parallel = statistics.median(timings.parallel_s)
    print(f"parallel: median {parallel:.2f} s ({1e3 * parallel / steps:.2f} ms/token)")
    if timings.token_s:
        token = statistics.median(timings.token_s)
        print(f"token loop: median {token:.2f} s ({1e3 * token / steps:.1f} ms/token)")
        print(f"speed-up: {timings.ratio(statistics.median):.1f}x (medians), {timings.ratio(min):.1f}x (fastest "
              f"runs); max |ΔNLL| {timings.max_abs_dnll:.2e}; load average now {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
