"""Multi-head latent attention (MLA; DeepSeek-V2, DeepSeek-V3): keys and values from one small
latent per token, so a decoding cache holds kv_lora_rank + qk_rope_head_dim numbers per token
and layer instead of 2 x kv_heads x head_dim.

Per token x [D] and head h:
    c     = norm(x W_dkv)                    [r]      the latent (kv_lora_rank r)
    k_h   = [c W_uk_h, rope(x W_kr)]         [n + p]  one rotary part p shared by every head
    v_h   = c W_uv_h                         [v]
    q_h   = [q_nope_h, rope(q_rope_h)]       [n + p]  from x W_q, or norm(x W_dq) W_uq
    out   = sum_h softmax(q_h . k_h * (n + p) ** -0.5) v_h W_o_h
with n = head_dim, p = qk_rope_head_dim, v = v_head_dim. Training and full-sequence passes
expand the latent into keys and values as above. Decoding keeps only [c, rope(x W_kr)] in the
cache and folds W_uk into the queries and W_uv into the output (DeepSeek-V2's "absorbed"
form): q_h . k_h = (q_nope_h W_uk_h^T) . c + q_rope_h . k_rope, one key head of r + p dims
shared by all query heads, whose values are c itself.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
from flax import nnx

from llmjax.models.attention import attend, write_slots
from llmjax.models.config import ModelConfig
from llmjax.models.layers import (
    Dense,
    Norm,
    apply_rotary,
    rotary_attention_factor,
    rotary_frequencies,
)
from llmjax.sharding import constrain

Array = jax.Array
LATENT_NORM_EPSILON = 1e-6


def attention_scale(cfg: ModelConfig) -> float:
    """What queries are multiplied by: query_key_dim ** -0.5 (or query_scale_dim's; 1 without
    model.scale_attention), times DeepSeek's YaRN factor (0.1 rope_mscale_all_dim ln(factor)
    + 1)^2 when set."""
    scale = (cfg.query_scale_dim or cfg.query_key_dim) ** -0.5 if cfg.scale_attention else 1.0
    factor = cfg.rope_scaling_factor
    if cfg.rope_scaling == "yarn" and cfg.rope_mscale_all_dim and factor > 1:
        scale *= (0.1 * cfg.rope_mscale_all_dim * math.log(factor) + 1.0) ** 2
    return scale


class LatentAttention(nnx.Module):
    """Self-attention through a key/value latent; its cache is {'latent': [B, S, 1, r + p]}."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        d, h, n, p = cfg.emb_dim, cfg.num_heads, cfg.head_dim, cfg.qk_rope_head_dim
        r, v = cfg.kv_lora_rank, cfg.value_dim
        self.cfg = cfg
        bias = cfg.qkv_bias  # None: cfg.use_bias (DeepSeek's attention_bias)
        # the latents' norms keep DeepSeek's epsilon whatever the blocks' (its RMSNorm default)
        latent_norm = dataclasses.replace(cfg, norm_epsilon=LATENT_NORM_EPSILON)
        if cfg.q_lora_rank:
            self.query_down = Dense((d,), (cfg.q_lora_rank,), cfg, rngs=rngs, use_bias=bias)
            self.query_norm = Norm(cfg.q_lora_rank, latent_norm)
            q_in = cfg.q_lora_rank
        else:
            self.query_down = self.query_norm = None
            q_in = d
        self.query = Dense((q_in,), (h, n + p), cfg, rngs=rngs, use_bias=False)
        # [D, r + p]: the latent, then the rotary key part every head shares
        self.kv_down = Dense((d,), (r + p,), cfg, rngs=rngs, use_bias=bias)
        self.kv_norm = Norm(r, latent_norm)
        self.key_up = Dense((r,), (h, n), cfg, rngs=rngs, use_bias=False)
        self.value_up = Dense((r,), (h, v), cfg, rngs=rngs, use_bias=False)
        out_std = 0.02 / math.sqrt(2 * cfg.num_layers)
        self.out = Dense((h, v), (d,), cfg, rngs=rngs, std=out_std, use_bias=bias)

    def _queries(self, x_BxQxD: Array, positions_BxQ: Array, inv_freq, factor
                 ) -> tuple[Array, Array]:
        """(q_nope [B, Q, H, n], rotated q_rope [B, Q, H, p])."""
        h = x_BxQxD if self.query_down is None else self.query_norm(self.query_down(x_BxQxD))
        q = constrain(self.query(h), ("batch", "length", "heads", None))
        n = self.cfg.head_dim
        return q[..., :n], apply_rotary(q[..., n:], positions_BxQ, inv_freq, factor)

    def _latent(self, x_BxSxD: Array, positions_BxS: Array, inv_freq, factor) -> Array:
        """[normed latent, rotated key part] [B, S, 1, r + p] (what decoding caches)."""
        r = self.cfg.kv_lora_rank
        kv = self.kv_down(x_BxSxD)
        k_rope = apply_rotary(kv[..., None, r:], positions_BxS, inv_freq, factor)
        return jnp.concatenate([self.kv_norm(kv[..., :r])[..., None, :],
                                k_rope.astype(kv.dtype)], axis=-1)

    def __call__(self, x_BxQxD: Array, mask_Bx1xQxK: Array, *, positions_BxQ: Array,
                 cache: dict | None = None, cache_index: Array | None = None,
                 bias_BxHxQxK: Array | None = None, windowed: bool | Array = False,
                 rng: Array | None = None) -> tuple[Array, dict | None]:
        """(output [B, Q, D], updated cache); the arguments as MultiHeadAttention's (rotary
        positions always, self-attention only)."""
        cfg = self.cfg
        inv_freq = rotary_frequencies(cfg)
        factor = rotary_attention_factor(cfg)
        if cfg.local_rotary_base is not None:
            inv_freq = jnp.where(windowed, rotary_frequencies(cfg, local=True), inv_freq)
            factor = jnp.where(windowed, rotary_attention_factor(cfg, local=True), factor)
        q_nope, q_rope = self._queries(x_BxQxD, positions_BxQ, inv_freq, factor)
        latent = self._latent(x_BxQxD, positions_BxQ, inv_freq, factor)
        scale = attention_scale(cfg)
        if cache is None:
            return self._expanded(q_nope, q_rope, latent, mask_Bx1xQxK, bias_BxHxQxK,
                                  scale, rng, windowed), None
        latent = write_slots(cache["latent"], latent, cache_index)
        return (self._absorbed(q_nope, q_rope, latent, mask_Bx1xQxK, bias_BxHxQxK, scale, rng),
                {"latent": latent})

    def _attend(self, q: Array, k: Array, v: Array, mask: Array, bias: Array | None,
                rng: Array | None, causal_self: bool = False, windowed: bool | Array = False
                ) -> Array:
        """softmax(q . k + bias) v with one key head or one per query head: [B, Q, H, v]."""
        return attend(q, k, v, mask, bias, self.cfg, rng, causal_self=causal_self,
                      windowed=windowed)

    def _expanded(self, q_nope, q_rope, latent_BxSx1xC, mask, bias, scale, rng,
                  windowed: bool | Array = False) -> Array:
        """Keys and values made from the latent for every head (training, full passes)."""
        r = self.cfg.kv_lora_rank
        c = latent_BxSx1xC[:, :, 0, :r]
        heads = ("batch", None, "heads", None)
        k_nope = constrain(self.key_up(c), heads)
        k_rope = jnp.broadcast_to(latent_BxSx1xC[..., r:],
                                  (*k_nope.shape[:3], latent_BxSx1xC.shape[-1] - r))
        k = jnp.concatenate([k_nope, k_rope.astype(k_nope.dtype)], axis=-1)
        q = jnp.concatenate([q_nope, q_rope.astype(q_nope.dtype)], axis=-1) * scale
        v = constrain(self.value_up(c), heads)
        return self.out(self._attend(q, k, v, mask, bias, rng, causal_self=self.cfg.causal,
                                     windowed=windowed))

    def _absorbed(self, q_nope, q_rope, latent_BxSx1xC, mask, bias, scale, rng) -> Array:
        """Attention over the cached latents themselves: W_uk folded into the queries, W_uv
        applied after mixing (decoding: per token r + p cached numbers, read once)."""
        r, h, n = self.cfg.kv_lora_rank, self.cfg.num_heads, self.cfg.head_dim
        dtype = q_nope.dtype
        w_uk = self.key_up.weight_matrix().reshape(r, h, n).astype(dtype)
        q_latent = jnp.einsum("bqhn,rhn->bqhr", q_nope, w_uk,
                              preferred_element_type=jnp.float32).astype(dtype)
        q = jnp.concatenate([q_latent, q_rope.astype(dtype)], axis=-1) * scale
        mixed = self._attend(q, latent_BxSx1xC, latent_BxSx1xC[..., :r], mask, bias, rng)
        w_uv = self.value_up.weight_matrix().reshape(r, h, -1).astype(dtype)
        values = jnp.einsum("bqhr,rhv->bqhv", mixed, w_uv,
                            preferred_element_type=jnp.float32).astype(dtype)
        return self.out(values)
