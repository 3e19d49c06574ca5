"""Rotary position embedding (RoPE) parameters of a model, and re-rotation of cached keys.

Since transformers 5.4 attention modules rotate q and the new k *before* `Cache.update`, and
the cache receives no cos/sin. A cache that moves keys to other positions (pos-shift) therefore
re-rotates them itself. Rotating an already-rotated key by `d` equals rotating the raw key at
`p + d` only when the angle is linear in the position and cos/sin carry no magnitude scaling;
`RopeSpec.from_model` refuses every other RoPE type with a clear error.

Both GPT-NeoX and Llama in transformers use the "rotate_half" layout (pairs are (i, i + r/2)),
on the first `rotary_dim` channels of each head (GPT-NeoX: `partial_rotary_factor` of it).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .compat import rope_parameter

# Angle linear in position, unit magnitude: re-rotation by a delta is exact.
SUPPORTED_ROPE_TYPES = frozenset({"default", "linear", "llama3"})


class UnsupportedRopeError(ValueError):
    """The model's RoPE cannot be re-rotated exactly, so pos-shift caches refuse it."""


@dataclass(frozen=True)
class RopeSpec:
    inv_freq: torch.Tensor  # float64, shape [rotary_dim // 2], on CPU
    rotary_dim: int
    head_dim: int
    rope_type: str

    @classmethod
    def from_model(cls, model: torch.nn.Module) -> RopeSpec:
        """Read the rotary parameters off a loaded HF causal LM (GPT-NeoX, Llama and kin)."""
        rotary = getattr(model.base_model, "rotary_emb", None)
        if rotary is None or not hasattr(rotary, "inv_freq"):
            raise UnsupportedRopeError(
                f"{type(model).__name__} has no model-level rotary embedding (base_model.rotary_emb); "
                "streamllm supports RoPE models such as GPT-NeoX/Pythia and Llama."
            )
        config = model.config
        rope_type = getattr(rotary, "rope_type", None) or "default"
        if rope_type not in SUPPORTED_ROPE_TYPES:
            raise UnsupportedRopeError(
                f"rope_type={rope_type!r} cannot be re-rotated exactly (its angle is not linear in the "
                f"position or it scales cos/sin); supported: {sorted(SUPPORTED_ROPE_TYPES)}. "
                "Use the 'dense' or 'no-shift' strategy, which never re-rotate keys."
            )
        scaling = float(getattr(rotary, "attention_scaling", 1.0))
        if abs(scaling - 1.0) > 1e-12:
            raise UnsupportedRopeError(
                f"the model's RoPE scales cos/sin by {scaling}; re-rotation would compound it. "
                "Use the 'dense' or 'no-shift' strategy."
            )
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        # The buffer may have been cast to fp16 with the model; recompute it in float64 from the
        # original definition where we can, since angles t * inv_freq grow with t.
        inv_freq = _float64_inv_freq(rotary, config, head_dim, rope_type)
        return cls(inv_freq=inv_freq, rotary_dim=2 * inv_freq.numel(), head_dim=head_dim, rope_type=rope_type)

    def cos_sin(self, delta: torch.Tensor, dtype: torch.dtype, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """cos/sin of `delta * inv_freq` in rotate_half layout, shape [*delta.shape, rotary_dim]."""
        angles = delta.to(device="cpu", dtype=torch.float64)[..., None] * self.inv_freq
        angles = torch.cat((angles, angles), dim=-1)
        return angles.cos().to(device=device, dtype=dtype), angles.sin().to(device=device, dtype=dtype)

    def rotate(self, x: torch.Tensor, delta: int | torch.Tensor) -> torch.Tensor:
        """Rotate `x` [..., seq, head_dim] by `delta` positions (an int, or one delta per seq slot)."""
        if isinstance(delta, int):
            if delta == 0:
                return x
            delta = torch.full((x.shape[-2],), delta, dtype=torch.float64)
        cos, sin = self.cos_sin(delta, dtype=torch.float32, device=x.device)
        return apply_rotation(x, cos, sin, self.rotary_dim)


def apply_rotation(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, rotary_dim: int) -> torch.Tensor:
    """Rotate the first `rotary_dim` channels of x (rotate_half layout); cos/sin broadcast over seq.

    The arithmetic runs in float32 (then casts back) so fp16 caches do not accumulate error
    from repeated re-rotation more than necessary.
    """
    rot, rest = x[..., :rotary_dim].float(), x[..., rotary_dim:]
    half = rotary_dim // 2
    rotated_half = torch.cat((-rot[..., half:], rot[..., :half]), dim=-1)
    out = (rot * cos + rotated_half * sin).to(x.dtype)
    return torch.cat((out, rest), dim=-1) if rest.shape[-1] else out


def _float64_inv_freq(rotary: torch.nn.Module, config, head_dim: int, rope_type: str) -> torch.Tensor:
    buffer = rotary.inv_freq.detach().to("cpu", torch.float64)
    if rope_type != "default":
        return buffer  # linear / llama3 rescale per frequency; the buffer holds the result
    base = rope_parameter(config, "rope_theta")
    partial = rope_parameter(config, "partial_rotary_factor", 1.0)
    if base is None:
        return buffer
    dim = int(head_dim * partial)
    exact = 1.0 / (float(base) ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim))
    if exact.shape != buffer.shape:
        return buffer
    return exact
