"""An independent strict sink+window reference, the streaming-llm way.

It stores *pre-RoPE* keys (un-rotating each incoming key by the position it was fed at) and
re-rotates the whole cache to positions 0..L-1 on every update, using the model's own rotary
module for cos/sin. It shares no rotation code with streamllm.cache, so agreement between the
two pins the shift-and-rerotate semantics.
"""

from __future__ import annotations

import torch
from transformers.cache_utils import Cache, DynamicLayer

from streamllm.compat import cache_kwargs


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class PreRopeStrictCache(Cache):
    def __init__(self, model: torch.nn.Module, sink: int, window: int):
        super().__init__(layers=[DynamicLayer() for _ in range(model.config.num_hidden_layers)])
        self.rotary = model.base_model.rotary_emb
        self.sink, self.window = sink, window
        self.raw_keys: dict[int, torch.Tensor] = {}
        self.values: dict[int, torch.Tensor] = {}
        self.length = 0

    def _cos_sin(self, positions: torch.Tensor, like: torch.Tensor):
        cos, sin = self.rotary(like, positions[None])
        return cos[:, None], sin[:, None]  # [1, 1, L, rotary_dim]

    def update(self, key_states, value_states, layer_idx, *args, **kwargs):
        rd = self._cos_sin(torch.tensor([0]), key_states)[0].shape[-1]
        cos, sin = self._cos_sin(torch.tensor([self.length]), key_states)
        rot, rest = key_states[..., :rd], key_states[..., rd:]
        raw = torch.cat((rot * cos - _rotate_half(rot) * sin, rest), dim=-1)  # inverse rotation
        keys = torch.cat((self.raw_keys[layer_idx], raw), -2) if layer_idx in self.raw_keys else raw
        values = torch.cat((self.values[layer_idx], value_states), -2) if layer_idx in self.values else value_states
        self.raw_keys[layer_idx], self.values[layer_idx] = keys, values
        cos, sin = self._cos_sin(torch.arange(keys.shape[-2]), key_states)
        rot, rest = keys[..., :rd], keys[..., rd:]
        rotated = torch.cat((rot * cos + _rotate_half(rot) * sin, rest), dim=-1)
        return rotated, values

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.length

    def get_mask_sizes(self, query_length: int, layer_idx: int = 0) -> tuple[int, int]:
        return self.length + query_length, 0

    def end_step(self) -> None:
        self.length += 1
        if self.length > self.sink + self.window:
            for i in self.raw_keys:
                k, v = self.raw_keys[i], self.values[i]
                self.raw_keys[i] = torch.cat((k[:, :, : self.sink], k[:, :, -self.window :]), -2)
                self.values[i] = torch.cat((v[:, :, : self.sink], v[:, :, -self.window :]), -2)
            self.length = self.sink + self.window


@torch.inference_mode()
def reference_strict_nll(model: torch.nn.Module, ids: torch.Tensor, sink: int, window: int) -> torch.Tensor:
    cache = PreRopeStrictCache(model, sink, window)
    out = []
    for t in range(ids.numel() - 1):
        logits = model(input_ids=ids[t : t + 1].view(1, 1), position_ids=torch.tensor([[cache.length]]),
                       **cache_kwargs(model, cache)).logits
        cache.end_step()
        out.append(-torch.log_softmax(logits[0, -1].double(), -1)[ids[t + 1]])
    return torch.stack(out)
