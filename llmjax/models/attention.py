"""Multi-head scaled dot-product attention with boolean masks and an optional KV cache."""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from flax import nnx

from llmjax.models.blockwise_attention import (
    bias_rows,
    blockwise_attention,
    grouped_rows,
    ungrouped_rows,
)
from llmjax.models.config import ModelConfig
from llmjax.models.layers import (
    Dense,
    Norm,
    apply_rotary,
    batched_matmul,
    dropout,
    rotary_attention_factor,
    rotary_frequencies,
)
from llmjax.sharding import constrain, splits

Array = jax.Array


def write_slots(cache_BxS: Array, new_BxT: Array, index: Array | int) -> Array:
    """`cache` [B, S, ...] with `new` [B, T, ...] written at slot `index` (a scalar), or at
    each row's own slot (index [B]: speculative decoding, whose rows keep different numbers
    of tokens)."""
    new_BxT = new_BxT.astype(cache_BxS.dtype)
    if jnp.ndim(index) == 0:
        return jax.lax.dynamic_update_slice_in_dim(cache_BxS, new_BxT, index, axis=1)
    return jax.vmap(lambda c, n, i: jax.lax.dynamic_update_slice_in_dim(c, n, i, axis=0))(
        cache_BxS, new_BxT, index)


def make_attention_mask(query_segments_BxQ: Array, key_segments_BxK: Array, *,
                        causal: bool, query_offset: Array | int = 0,
                        window: int | None = None) -> Array:
    """Boolean mask [B, 1, Q, K]: same segment, key not padding (segment 0), and key <= query
    when causal. `query_offset` is the key index of query 0 (decoding with a cache; a scalar,
    or [B] where each row has its own). A causal
    `window` keeps only the last `window` keys of each query, itself included (sliding-window
    attention, Mistral's: key > query - window); indices count tokens, since a segment's tokens
    and a cache row's slots are contiguous."""
    mask = (query_segments_BxQ[:, :, None] == key_segments_BxK[:, None, :])
    mask &= key_segments_BxK[:, None, :] != 0
    if causal:
        offset = jnp.reshape(jnp.asarray(query_offset), (-1, 1, 1))  # [1 or B, 1, 1]
        q = jnp.arange(query_segments_BxQ.shape[1])[None, :, None] + offset
        k = jnp.arange(key_segments_BxK.shape[1])[None, None, :]
        mask &= k <= q
        if window is not None:
            mask &= k > q - window
    return mask[:, None]


def segment_positions(segment_ids_BxL: Array) -> Array:
    """0, 1, 2, ... restarting at every segment boundary (packed documents)."""
    length = segment_ids_BxL.shape[1]
    idx = jnp.arange(length)[None, :]
    starts = jnp.concatenate([jnp.ones_like(segment_ids_BxL[:, :1], bool),
                              segment_ids_BxL[:, 1:] != segment_ids_BxL[:, :-1]], axis=1)
    start_idx = jax.lax.cummax(jnp.where(starts, idx, 0), axis=1)
    return idx - start_idx


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def masked_softmax(logits_BxHxQxK: Array, mask_Bx1xQxK: Array, dtype: jnp.dtype) -> Array:
    """Softmax over keys (the last axis) of the float32 logits where `mask` (broadcast to
    them) holds, as probabilities in `dtype` [B, H, Q, K]. Masked logits become a finite
    minimum, not -inf, so fully masked rows (padding queries) stay NaN-free.

    The gradient is written out from the probabilities in `dtype`, p * (g - sum(g * p)), with
    masked positions' zeroed: autodiff of mask, softmax and cast reads and writes more
    [B, H, Q, K] float32 intermediates (gpt:tiny's bfloat16 step 4% faster on an AMX CPU)."""
    logits = jnp.where(mask_Bx1xQxK, logits_BxHxQxK, jnp.finfo(jnp.float32).min)
    return jax.nn.softmax(logits, axis=-1).astype(dtype)


def _masked_softmax_fwd(logits, mask, dtype):
    probs = masked_softmax(logits, mask, dtype)
    return probs, (probs, mask)


def _masked_softmax_bwd(dtype, residuals, g_BxHxQxK):
    probs, mask = residuals
    p, g = probs.astype(jnp.float32), g_BxHxQxK.astype(jnp.float32)
    d = p * (g - (g * p).sum(-1, keepdims=True))
    return jnp.where(mask, d, 0.0), None


masked_softmax.defvjp(_masked_softmax_fwd, _masked_softmax_bwd)


def _scores(q_BxQxHxK: Array, k_BxSxNxK: Array) -> Array:
    """Attention logits [B, N, Q, G, S] in float32, for N key/value heads of G = H / N query
    heads each (grouped-query attention): query head h = n * G + g reads key head n, as
    Hugging Face's repeat_kv. A key head's G x Q queries are one matmul's rows, without copying
    the keys; query-major, so that a query axis split over devices (context parallelism)
    stays split in them (G-major rows would merge a whole axis with a split one)."""
    b, q_len, h, _ = q_BxQxHxK.shape
    n, s = k_BxSxNxK.shape[2], k_BxSxNxK.shape[1]
    logits = batched_matmul(grouped_rows(q_BxQxHxK, n), k_BxSxNxK.transpose(0, 2, 3, 1))
    return logits.reshape(b, n, q_len, h // n, s)


def _mix(probs_BxNxQxGxS: Array, v_BxSxNxK: Array) -> Array:
    """Attention output [B, Q, H, K]: each head's probabilities over its (grouped) values."""
    b, n, q_len, g, s = probs_BxNxQxGxS.shape
    out = batched_matmul(probs_BxNxQxGxS.reshape(b, n, q_len * g, s),
                         v_BxSxNxK.transpose(0, 2, 1, 3))
    return ungrouped_rows(out, q_len).astype(probs_BxNxQxGxS.dtype)


def grouped_attention(q_BxQxHxK: Array, k_BxSxNxK: Array, v_BxSxNxV: Array,
                      mask_Bx1xQxS: Array, bias_BxHxQxS: Array | None, *,
                      softcap: float | None, dropout_rate: float, rng: Array | None) -> Array:
    """softmax(q . k [soft-capped] + bias, where `mask`) v: [B, Q, H, V] in q's dtype, with
    N <= H key/value heads (the scores kept as `_scores` lays them out)."""
    logits = _scores(q_BxQxHxK, k_BxSxNxK.astype(q_BxQxHxK.dtype))  # [B, N, Q, G, S]
    b, n, q_len, g, s = logits.shape
    if g == 1:  # one query head per key head: [B, H, Q, S], see below
        logits = logits.reshape(b, n, q_len, s)
    if softcap is not None:  # Gemma 2: bounded logits, smooth near 0
        logits = softcap * jnp.tanh(logits / softcap)
    if bias_BxHxQxS is not None:  # [1 or B, H, Q, S] -> the scores' layout
        logits = logits + bias_rows(bias_BxHxQxS, n).reshape(-1, *logits.shape[1:])
    # without grouping, the softmax runs on 4-D arrays: XLA:CPU ran its backward pass through
    # the 5-D view's unit axis 1.7x slower (attention's forward + backward at [8, 4, 1024,
    # 1024]: 428 -> 256 ms; the whole gpt:tiny step at 1024 tokens x 8 was 1.44x slower with
    # 4 key heads than with 2)
    mask = mask_Bx1xQxS if g == 1 else mask_Bx1xQxS[:, :, :, None, :]
    probs = masked_softmax(logits, mask, q_BxQxHxK.dtype)
    probs = dropout(probs, dropout_rate, rng)
    return _mix(probs.reshape(b, n, q_len, g, s), v_BxSxNxV.astype(q_BxQxHxK.dtype))


def attend(q_BxQxHxK: Array, k_BxSxNxK: Array, v_BxSxNxV: Array, mask_Bx1xQxS: Array,
           bias_BxHxQxS: Array | None, cfg: ModelConfig, rng: Array | None, *,
           causal_self: bool = False, windowed: bool | Array = False) -> Array:
    """The project's own attention, [B, Q, H, V]: over blocks of cfg.attention_block_size keys
    (attention_impl=blockwise, where there is more than one block), else over all S at once.
    `causal_self`: a causal mask over the queries' own positions (self-attention without a
    cache), whose tiles above the diagonal blockwise attention skips (and, in a layer whose
    `windowed` is a Python True rather than a scanned flag, so the mask is known to be the
    window's, those wholly outside it), unless the queries are split over devices (context
    parallelism: each device's scan then reads its own queries)."""
    if cfg.attention_impl == "blockwise" and k_BxSxNxK.shape[1] > cfg.attention_block_size:
        return blockwise_attention(q_BxQxHxK, k_BxSxNxK, v_BxSxNxV, mask_Bx1xQxS, bias_BxHxQxS,
                                   softcap=cfg.attention_softcap,
                                   block_size=cfg.attention_block_size,
                                   causal=causal_self and not splits("length"),
                                   window=cfg.attention_window if windowed is True else None,
                                   dropout_rate=cfg.attention_dropout_rate, rng=rng)
    return grouped_attention(q_BxQxHxK, k_BxSxNxK, v_BxSxNxV, mask_Bx1xQxS, bias_BxHxQxS,
                             softcap=cfg.attention_softcap,
                             dropout_rate=cfg.attention_dropout_rate, rng=rng)


class MultiHeadAttention(nnx.Module):
    """Self- or cross-attention; rotary positions are applied to queries and keys when enabled.
    Keys and values have cfg.kv_heads heads (fewer than the queries' for grouped-query
    attention), which shrinks their projections and the decoding cache alike."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        d, h, n, k = cfg.emb_dim, cfg.num_heads, cfg.kv_heads, cfg.head_dim
        self.cfg = cfg
        bias = cfg.qkv_bias  # None: cfg.use_bias
        self.query = Dense((d,), (h, k), cfg, rngs=rngs, use_bias=bias)
        self.key = Dense((d,), (n, k), cfg, rngs=rngs, use_bias=bias)
        self.value = Dense((d,), (n, k), cfg, rngs=rngs, use_bias=bias)
        # QK-norm, before rotary positions: each head's query and key normalised over head_dim
        # (Qwen3, Gemma 3), or all heads' at once (qk_norm_scope=all: OLMo 2)
        self.qk_over_heads = cfg.qk_norm_scope == "all"
        self.query_norm = Norm(h * k if self.qk_over_heads else k, cfg) if cfg.qk_norm else None
        self.key_norm = Norm(n * k if self.qk_over_heads else k, cfg) if cfg.qk_norm else None
        out_std = 0.02 / math.sqrt(2 * cfg.num_layers)
        self.out = Dense((h, k), (d,), cfg, rngs=rngs, std=out_std)

    def __call__(self, x_BxQxD: Array, mask_Bx1xQxK: Array, *, positions_BxQ: Array | None = None,
                 kv_BxKxD: Array | None = None, kv_positions_BxK: Array | None = None,
                 cache: dict | None = None, cache_index: Array | None = None,
                 bias_BxHxQxK: Array | None = None, static_kv: dict | None = None,
                 windowed: bool | Array = False, rng: Array | None = None
                 ) -> tuple[Array, dict | None]:
        """Returns (output [B, Q, D], updated cache). With a cache {'k','v': [B, S, N, K]}, the
        new keys/values are written at `cache_index` and the mask covers all S slots.
        `static_kv` ({'k','v'} from `key_values`) are cross-attention keys/values computed once
        per source; `bias` is added to the logits (relative positions). `windowed` (a bool, or
        a traced one under scan) picks the windowed layers' rotary frequencies."""
        cfg = self.cfg
        q = self.query(x_BxQxD)
        if self.query_norm is not None:
            q = self._qk_norm(self.query_norm, q)
        if static_kv is not None:
            k, v = static_kv["k"], static_kv["v"]
        else:
            k, v = self._key_values(x_BxQxD if kv_BxKxD is None else kv_BxKxD)
        # tensor parallelism splits heads; context parallelism keeps the queries' tokens split
        # and gathers every key and value (each query may attend to any of them)
        heads = ("batch", None, "heads", None)
        q = constrain(q, ("batch", "length", "heads", None))
        k, v = constrain(k, heads), constrain(v, heads)
        if cfg.position_embedding == "rotary" and positions_BxQ is not None:
            inv_freq = rotary_frequencies(cfg)
            factor = rotary_attention_factor(cfg)
            if cfg.local_rotary_base is not None:
                inv_freq = jnp.where(windowed, rotary_frequencies(cfg, local=True), inv_freq)
                factor = jnp.where(windowed, rotary_attention_factor(cfg, local=True), factor)
            q = apply_rotary(q, positions_BxQ, inv_freq, factor)
            kp = positions_BxQ if kv_positions_BxK is None else kv_positions_BxK
            k = apply_rotary(k, kp, inv_freq, factor)
        if cache is not None:
            k = write_slots(cache["k"], k, cache_index)
            v = write_slots(cache["v"], v, cache_index)
            cache = {"k": k, "v": v}
        if cfg.scale_attention:
            q = q * ((cfg.query_scale_dim or cfg.head_dim) ** -0.5)
        if cfg.attention_impl in ("xla", "cudnn"):
            out = jax.nn.dot_product_attention(
                q, k.astype(q.dtype), v.astype(q.dtype), bias=bias_BxHxQxK, mask=mask_Bx1xQxK,
                scale=1.0, implementation=cfg.attention_impl)
            return self.out(out), cache
        causal_self = cfg.causal and kv_BxKxD is None and static_kv is None and cache is None
        return self.out(attend(q, k, v, mask_Bx1xQxK, bias_BxHxQxK, cfg, rng,
                               causal_self=causal_self, windowed=windowed)), cache

    def _key_values(self, kv_BxKxD: Array) -> tuple[Array, Array]:
        k = self.key(kv_BxKxD)
        if self.key_norm is not None:
            k = self._qk_norm(self.key_norm, k)
        return k, self.value(kv_BxKxD)

    def _qk_norm(self, norm: Norm, x_BxLxHxK: Array) -> Array:
        if not self.qk_over_heads:
            return norm(x_BxLxHxK)
        shape = x_BxLxHxK.shape
        return norm(x_BxLxHxK.reshape(*shape[:-2], -1)).reshape(shape)

    def key_values(self, kv_BxKxD: Array) -> dict:
        """{'k', 'v': [B, K, N, head_dim]} of a fixed memory (cross-attention's encoder output)."""
        k, v = self._key_values(kv_BxKxD)
        return {"k": k, "v": v}
