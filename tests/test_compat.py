"""The transformers seam (streamllm/compat.py): warnings, keyword, range, and the error that names it."""

from __future__ import annotations

import inspect
import re
import warnings
from pathlib import Path

import pytest
import torch

from conftest import tiny_llama, tiny_neox
from streamllm import compat
from streamllm.caches import make_cache
from streamllm.decode import CompiledDecoder, EagerDecoder
from streamllm.strategies import make_strategy

pytestmark = pytest.mark.compat

SPECS = [("strict", "dynamic"), ("strict", "static"), ("strict", "ring"), ("lazy", "static"), ("dense", "dynamic")]


@pytest.mark.parametrize("build", [tiny_llama, tiny_neox], ids=["llama", "neox"])
@pytest.mark.parametrize(("name", "cache"), SPECS)
def test_decoding_emits_no_warning_from_our_calls(build, name, cache):
    # pyproject filters FutureWarning/DeprecationWarning for the rest of the suite; here they are
    # errors, so a deprecated keyword or API in our calls fails this test on the release that
    # deprecates it.
    loaded = build()
    params = {"compress_every": 4} if name == "lazy" else {}
    spec = make_strategy(name, sink=2, window=6, cache=cache, **({} if name == "dense" else params))
    decoder = EagerDecoder(loaded.model, make_cache(spec, loaded.model))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with torch.inference_mode():
            for t in range(12):
                decoder.step(torch.tensor([[t % 97]]))


def test_cache_keyword_follows_the_forward_signature():
    loaded = tiny_llama()
    kwargs = compat.cache_kwargs(loaded.model, object())
    assert kwargs["use_cache"] is True
    expected = "cache" if "cache" in inspect.signature(type(loaded.model).forward).parameters else "past_key_values"
    assert expected in kwargs


def test_a_model_taking_no_cache_keyword_gets_the_range_in_the_error():
    class NoCacheModel(torch.nn.Module):
        def forward(self, input_ids):
            return input_ids

    with pytest.raises(compat.IncompatibleTransformersError, match=r"transformers>=5\.17,<6"):
        compat.cache_kwargs(NoCacheModel(), object())


def test_an_upstream_signature_change_names_the_range(monkeypatch):
    # Simulate a release whose Cache.update calls layers with other arguments than our layers
    # take (what 5.24 did to the hand-written caches): the binding error is raised in
    # transformers' own frame and must reach the user as the supported range, not a TypeError.
    from streamllm.caches.fixed import FixedLayer

    def narrow_update(self, key_states, value_states, needs_a_third_argument):
        raise AssertionError("not reached")

    monkeypatch.setattr(FixedLayer, "update", narrow_update)
    loaded = tiny_llama()
    cache = make_cache(make_strategy("strict", sink=2, window=6, cache="static"), loaded.model)
    with pytest.raises(compat.IncompatibleTransformersError, match=r"supports transformers>=5\.17,<6"), \
            torch.inference_mode():
        EagerDecoder(loaded.model, cache).step(torch.tensor([[1]]))


def test_our_own_type_errors_are_not_blamed_on_transformers():
    with pytest.raises(TypeError, match="ours"), compat.incompatibility_guard("a step"):
        raise TypeError("ours")


def test_pyproject_declares_the_range_compat_names():
    pyproject = (Path(__file__).parents[1] / "pyproject.toml").read_text()
    declared = re.findall(r'^\s*"(transformers[<>=!~,.\d ]*)",', pyproject, flags=re.M)
    assert declared == [f"transformers{compat.SUPPORTED_TRANSFORMERS}"]
    assert compat.LOWEST_TESTED.startswith(compat.SUPPORTED_TRANSFORMERS.split(",")[0].removeprefix(">="))


def test_installed_release_is_inside_the_range():
    # CI installs the newest release pip resolves and the lowest supported one; both must be inside.
    from packaging.specifiers import SpecifierSet

    version = compat.transformers_version()
    assert version in SpecifierSet(compat.SUPPORTED_TRANSFORMERS, prereleases=True), version


@pytest.mark.slow  # ~25-50 s of torch.compile; -m compat still runs it on the lowest transformers
def test_compiled_static_step_traces_through_the_layer_objects():
    # torch.compile(fullgraph=True) over the FixedLayer path: a graph break here would be a bug.
    loaded = tiny_llama()
    spec = make_strategy("strict", sink=2, window=6, cache="ring")
    eager = EagerDecoder(loaded.model, make_cache(spec, loaded.model))
    compiled = CompiledDecoder(loaded.model, make_cache(spec, loaded.model))
    with torch.inference_mode():
        for t in range(10):
            token = torch.tensor([[(5 * t) % 97]])
            a, _ = eager.step(token)
            b, _ = compiled.step(token)
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_rope_parameter_reads_either_place():
    class Flat:
        rope_theta = 10000.0

    class Nested:
        rope_parameters = {"rope_theta": 500000.0}
        rope_theta = 1.0

    assert compat.rope_parameter(Flat(), "rope_theta") == 10000.0
    assert compat.rope_parameter(Nested(), "rope_theta") == 500000.0
    assert compat.rope_parameter(Flat(), "partial_rotary_factor", 1.0) == 1.0


def test_attention_implementation_switches_every_config_and_restores_it():
    """The one switch of attention implementation (decode, the parallel evaluator and the Triton
    kernels all use it): every config in the model takes the name for the block and gets its own
    back afterwards, also when the block raises; None changes nothing."""
    model = tiny_llama().model
    configs = {id(m.config): m.config for m in model.modules() if hasattr(m, "config")}
    before = {key: c._attn_implementation for key, c in configs.items()}
    name = compat.register_attention("streamllm_test_sdpa", compat.sdpa_attention())
    with pytest.raises(RuntimeError, match="inside"), compat.attention_implementation(model, name):
        assert {c._attn_implementation for c in configs.values()} == {name}
        raise RuntimeError("inside")
    assert {key: c._attn_implementation for key, c in configs.items()} == before
    with compat.attention_implementation(model, None):
        assert {key: c._attn_implementation for key, c in configs.items()} == before
