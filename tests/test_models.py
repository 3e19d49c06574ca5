"""Shipped dummy configs: the Llama-3.2-1B shape loads (shrunk, random weights) like dummy:pythia-2.8b."""

from __future__ import annotations

import json

import pytest
import torch

from streamllm.models import CONFIG_DIR, load_dummy, load_model, shipped_configs
from streamllm.rope import RopeSpec

# The same architecture at test size: GQA group 4 (32 / 8 in the real model), SiLU gate, llama3 rope.
LLAMA_1B_TINY = {"hidden_size": 128, "intermediate_size": 256, "num_hidden_layers": 2, "num_attention_heads": 8,
                 "num_key_value_heads": 2, "head_dim": 16, "vocab_size": 512, "bos_token_id": 1, "eos_token_id": 2}


def test_llama_3_2_1b_config_has_the_real_shape():
    """Hidden 2048, 16 layers, 32 query / 8 KV heads of 64, MLP 8192, vocab 128256, tied head, llama3
    rope; built on the meta device, its parameter count is the closed form of those dimensions."""
    assert "llama-3.2-1b" in shipped_configs()
    raw = json.loads((CONFIG_DIR / "llama-3.2-1b.json").read_text())
    assert (raw["hidden_size"], raw["num_hidden_layers"], raw["num_attention_heads"], raw["num_key_value_heads"],
            raw["intermediate_size"], raw["vocab_size"]) == (2048, 16, 32, 8, 8192, 128256)
    assert raw["rope_scaling"]["rope_type"] == "llama3" and raw["tie_word_embeddings"] is True
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.for_model(**raw)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    h, i, v, kv = config.hidden_size, config.intermediate_size, config.vocab_size, config.num_key_value_heads
    per_layer = 2 * h * h + 2 * h * kv * config.head_dim + 3 * h * i + 2 * h
    assert sum(p.numel() for p in model.parameters()) == v * h + config.num_hidden_layers * per_layer + h
    assert model.config.rope_parameters["rope_type"] == "llama3"


def test_llama_3_2_1b_loads_shrunk_with_random_weights():
    loaded = load_dummy("llama-3.2-1b", torch.float32, torch.device("cpu"), overrides=LLAMA_1B_TINY)
    config = loaded.model.config
    assert loaded.dummy_weights and loaded.name == "dummy:llama-3.2-1b" and loaded.architecture == "llama"
    assert config.num_attention_heads // config.num_key_value_heads == 4 and config.hidden_act == "silu"
    # llama3 rope rescales frequencies but keeps the angle linear in the position: the ring can
    # re-rotate its sinks exactly.
    rope = RopeSpec.from_model(loaded.model)
    assert rope.rope_type == "llama3" and rope.rotary_dim == config.head_dim
    with torch.no_grad():
        logits = loaded.model(input_ids=torch.tensor([[1, 5, 9]])).logits
    assert logits.shape == (1, 3, 512) and torch.isfinite(logits).all()
    # The shrunk model never carries the shipped config's revision.
    assert loaded.revision.startswith("config-") and "+" in loaded.revision


@pytest.mark.parametrize("name", ["dummy:pythia-2.8b", "dummy:llama-3.2-1b"])
def test_dummy_names_resolve_alike(name, monkeypatch):
    """`--model dummy:llama-3.2-1b` goes where `dummy:pythia-2.8b` goes (load_dummy with the name),
    without building the full-size model here."""
    seen = {}

    def fake(config_name, dtype, device, attn_implementation="sdpa", placement=None):
        seen.update(config=config_name, dtype=dtype)
        return "loaded"

    monkeypatch.setattr("streamllm.models.load_dummy", fake)
    assert load_model(name, dtype="float16", device="cpu") == "loaded"
    assert seen == {"config": name.removeprefix("dummy:"), "dtype": torch.float16}
