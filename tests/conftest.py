"""Shared fixtures: tiny random GPT-NeoX (partial rotary) and Llama (GQA) models, fp32, seeded.

Random weights are fine here: these tests pin *semantics* (two implementations agree), never
quality. Quality claims use the embedded real model.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from transformers import GPTNeoXConfig, GPTNeoXForCausalLM, LlamaConfig, LlamaForCausalLM

from streamllm.models import LoadedModel

# The tests' thread count: both cores of the 2-core CI machine. Set per test and restored (not at
# import), so no test's setting (a Suite forces 1 thread on CPU) leaks into the next one and the
# value does not depend on which test module happened to be imported last.
TEST_THREADS = 2


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """`pytest tests` leaves out the tests marked `slow` (the embedded model, long decode loops,
    end-to-end bench runs), so the README's command answers in a few minutes; any explicit `-m`
    decides instead (`-m slow` runs only them, as .ci/run does after the README's command;
    `-m "slow or not slow"` runs everything)."""
    if config.option.markexpr:
        return
    here = Path(__file__).parent
    slow = [item for item in items if item.get_closest_marker("slow") and here in item.path.parents]
    if slow:
        config.hook.pytest_deselected(items=slow)
        left_out = set(map(id, slow))
        items[:] = [item for item in items if id(item) not in left_out]


@pytest.fixture(autouse=True)
def torch_threads() -> Iterator[int]:
    before = torch.get_num_threads()
    torch.set_num_threads(TEST_THREADS)
    yield TEST_THREADS
    torch.set_num_threads(before)


def tiny_neox(max_positions: int = 512, seed: int = 0) -> LoadedModel:
    config = GPTNeoXConfig(
        vocab_size=97, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
        rotary_pct=0.25, max_position_embeddings=max_positions, use_parallel_residual=True,
    )
    torch.manual_seed(seed)
    model = GPTNeoXForCausalLM(config).eval()
    return LoadedModel(model, None, "tiny-neox", "test", torch.float32, torch.device("cpu"))


def tiny_llama(max_positions: int = 512, seed: int = 0, hidden: int = 64, layers: int = 2, intermediate: int = 128,
               **rope) -> LoadedModel:
    config = LlamaConfig(
        vocab_size=97, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
        intermediate_size=intermediate, max_position_embeddings=max_positions, rope_theta=10000.0, **rope,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).eval()
    return LoadedModel(model, None, "tiny-llama", "test", torch.float32, torch.device("cpu"))


@pytest.fixture(params=["neox", "llama"], scope="session")
def tiny_model(request) -> LoadedModel:
    return tiny_neox() if request.param == "neox" else tiny_llama()


@pytest.fixture(scope="session")
def token_ids() -> torch.Tensor:
    return torch.randint(0, 97, (160,), generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="session", autouse=True)
def tracked_history_is_never_written():
    """The run history under history/ is tracked data: a test that runs the suite must point
    --history-dir at a temporary folder, never append to the real one."""
    root = Path(__file__).resolve().parents[1] / "history"
    before = sorted(str(p) for p in root.rglob("*.json"))
    yield
    after = sorted(str(p) for p in root.rglob("*.json"))
    assert after == before, f"a test wrote into the tracked history: {sorted(set(after) - set(before))}"
