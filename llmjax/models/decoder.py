"""Decoder-only (GPT-style) causal language model with a KV cache for decoding."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from llmjax.models.alibi import alibi_bias
from llmjax.models.attention import make_attention_mask, segment_positions, write_slots
from llmjax.models.blocks import TransformerBlock, apply_blocks
from llmjax.models.config import ModelConfig
from llmjax.models.heads import ClassifierHead
from llmjax.models.layers import Dense, Embed, Norm, dropout, fold, sinusoidal
from llmjax.models.moe import is_moe_layer
from llmjax.models.mtp import MTPModule, shifted

Array = jax.Array


class Decoder(nnx.Module):
    """tokens [B, L] -> logits [B, L, V]; causal self-attention within each packed segment.

    `heads`: 'lm' (the output projection: the tied token table or lm_head) and/or 'classifier'
    (num_classes-way on the last token's state, as GPT-1 and Hugging Face's
    ForSequenceClassification pool a decoder; a classification run has no lm_head)."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs, heads: tuple[str, ...] = ("lm",),
                 num_classes: int = 0):
        unknown = set(heads) - {"lm", "classifier"}
        if unknown:
            raise ValueError(f"unknown decoder heads {sorted(unknown)}")
        self.cfg, self.heads = cfg, tuple(heads)
        self.embed = Embed(cfg.vocab_size, cfg.emb_dim, cfg, rngs=rngs, rows="vocab")
        if cfg.position_embedding == "learned":
            self.position_embed = Embed(cfg.max_len, cfg.emb_dim, cfg, rngs=rngs)
        self.embed_norm = Norm(cfg.emb_dim, cfg) if cfg.embed_norm else None  # BLOOM
        self.layers = nnx.List([TransformerBlock(cfg, rngs=rngs, moe=is_moe_layer(cfg, i))
                                for i in range(cfg.num_layers)])
        self.final_norm = Norm(cfg.emb_dim, cfg) if cfg.norm_position != "post" else None
        if not cfg.tie_embeddings and "lm" in heads:
            self.lm_head = Dense((cfg.emb_dim,), (cfg.vocab_size,), cfg, rngs=rngs,
                                 use_bias=cfg.lm_head_bias)
        # no bias: Hugging Face's decoders score classes with one bias-free `score` matrix
        self.classifier = (ClassifierHead(cfg, num_classes, rngs=rngs, use_bias=False)
                           if "classifier" in heads else None)
        # last, so the rest draws the same initial values with or without them
        self.mtp = (nnx.List([MTPModule(cfg, k, rngs=rngs) for k in range(cfg.mtp_depth)])
                    if cfg.mtp_depth and "lm" in heads else None)

    def _embed(self, tokens_BxL: Array, positions_BxL: Array, rng: Array | None) -> Array:
        x = self.embed(tokens_BxL)
        if self.cfg.scale_embeddings:  # Gemma: sqrt(emb_dim) rounded to the compute dtype
            x = x * jnp.asarray(self.cfg.emb_dim ** 0.5, x.dtype)
        if self.cfg.position_embedding == "learned":
            x = x + self.position_embed(positions_BxL)
        elif self.cfg.position_embedding == "sinusoidal":
            x = x + sinusoidal(positions_BxL, self.cfg.emb_dim).astype(x.dtype)
        if self.embed_norm is not None:
            x = self.embed_norm(x)
        return dropout(x, self.cfg.dropout_rate, rng)

    def _bias(self, query_positions_BxQ: Array, key_positions_BxK: Array) -> Array | None:
        if self.cfg.position_embedding != "alibi":
            return None
        return alibi_bias(query_positions_BxQ, key_positions_BxK, self.cfg.num_heads)

    def _final(self, x_BxLxD: Array) -> Array:
        return x_BxLxD if self.final_norm is None else self.final_norm(x_BxLxD)

    @property
    def output_head(self) -> nnx.Module:
        """The module whose parameters project hidden states to logits: the embedding table
        (tied) or lm_head."""
        return self.embed if self.cfg.tie_embeddings else self.lm_head

    def output_logits(self, x_BxLxD: Array, head: nnx.Module | None = None) -> Array:
        """Output projection of final hidden states -> logits [B, L, V] in float32, soft-capped
        to (-cap, cap) with cfg.logit_softcap (Gemma 2). `head`: another `output_head` (of
        the same shapes) to project with."""
        if "lm" not in self.heads:
            raise ValueError("this decoder was built for classification and has no language-"
                             "model head: it classifies (classify), it does not predict tokens")
        head = self.output_head if head is None else head
        if self.cfg.tie_embeddings:
            logits = head.attend(x_BxLxD)
        else:
            logits = head(x_BxLxD).astype(jnp.float32)
        cap = self.cfg.logit_softcap
        return logits if cap is None else cap * jnp.tanh(logits / cap)

    def _masks(self, query_segments: Array, key_segments: Array, causal: bool,
               query_offset: Array | int = 0) -> tuple[Array, Array | None]:
        """(full mask, sliding-window mask or None) [B, 1, Q, K]."""
        full = make_attention_mask(query_segments, key_segments, causal=causal,
                                   query_offset=query_offset)
        if self.cfg.attention_window is None:
            return full, None
        return full, make_attention_mask(query_segments, key_segments, causal=causal,
                                         query_offset=query_offset,
                                         window=self.cfg.attention_window)

    def _stack(self, tokens_BxL: Array, positions: Array | None, segment_ids: Array | None,
               rng: Array | None) -> tuple[Array, Array, Array]:
        """(the last block's output [B, L, D] before the final norm, positions, full mask)."""
        seg = jnp.ones_like(tokens_BxL) if segment_ids is None else segment_ids
        pos = segment_positions(seg) if positions is None else positions
        mask, window_mask = self._masks(seg, seg, self.cfg.causal)
        x = self._embed(tokens_BxL, pos, fold(rng, 0))
        bias = self._bias(pos, pos)
        x = apply_blocks(self.layers, x, mask, pos, cfg=self.cfg, rng=rng, bias=bias,
                         window_mask=window_mask)
        return x, pos, mask

    def hidden_states(self, tokens_BxL: Array, *, positions: Array | None = None,
                      segment_ids: Array | None = None, rng: Array | None = None) -> Array:
        """Last layer's output [B, L, D] (after the final norm for pre-norm models)."""
        return self._final(self._stack(tokens_BxL, positions, segment_ids, rng)[0])

    def multi_token_states(self, tokens_BxL: Array, next_tokens_BxL: Array, *,
                           segment_ids: Array | None = None, rng: Array | None = None
                           ) -> tuple[Array, list[Array]]:
        """(hidden_states, [each multi-token-prediction depth's normed states [B, L, D]]):
        depth k (from 0) at position i has read tokens up to t_{i+k+1} and predicts
        t_{i+k+2}; `next_tokens` [B, L] holds t_{i+1} at i (a causal-LM batch's targets)."""
        x, pos, mask = self._stack(tokens_BxL, None, segment_ids, rng)
        depths, h = [], x
        for k, module in enumerate(self.mtp or []):
            h, normed, _ = module(h, shifted(next_tokens_BxL, k), self.embed, mask, pos,
                                  fold(rng, len(self.layers) + 1 + k))
            depths.append(normed)
        return self._final(x), depths

    def classify(self, tokens_BxL: Array, *, segment_ids: Array, rng: Array | None = None,
                 token_types: Array | None = None) -> Array:
        """Class logits [B, num_classes] (float32) from the state of each row's last token
        (segment_ids > 0 mark a right-padded row's tokens): under causal attention the one
        that has read the whole text. Token types are not embedded: a pair is <bos> a <eos>
        b <eos>, its separator in the tokens."""
        del token_types
        hidden = self.hidden_states(tokens_BxL, segment_ids=segment_ids, rng=rng)
        last = jnp.maximum((segment_ids > 0).sum(axis=1) - 1, 0)
        pooled = jnp.take_along_axis(hidden, last[:, None, None], axis=1)[:, 0]
        return self.classifier(pooled, rng)  # the blocks draw from fold(rng, i)

    def __call__(self, tokens_BxL: Array, *, positions: Array | None = None,
                 segment_ids: Array | None = None, rng: Array | None = None) -> Array:
        """Logits [B, L, V] in float32. segment_ids: packed documents 1, 2, ...; 0 = padding."""
        return self.output_logits(self.hidden_states(tokens_BxL, positions=positions,
                                               segment_ids=segment_ids, rng=rng))

    def init_cache(self, batch_size: int, max_len: int | None = None, *,
                   mtp: bool = False) -> dict:
        """An empty KV cache for `decode`: per-layer keys/values [B, S, H_kv, K] (latent
        attention: latents [B, S, 1, kv_lora_rank + qk_rope_head_dim]) and bookkeeping; with
        `mtp`, an entry "mtp" for the first multi-token-prediction module's block
        (`mtp_decode`)."""
        cfg = self.cfg
        s = max_len or cfg.max_len
        if cfg.kv_lora_rank:
            shape = (batch_size, s, 1, cfg.kv_lora_rank + cfg.qk_rope_head_dim)
            layer_cache = {"latent": jnp.zeros(shape, cfg.compute_dtype)}
        else:
            shape = (batch_size, s, cfg.kv_heads, cfg.head_dim)
            layer_cache = {"k": jnp.zeros(shape, cfg.compute_dtype),
                           "v": jnp.zeros(shape, cfg.compute_dtype)}
        cache = {
            "layers": [dict(layer_cache) for _ in self.layers],
            # slots written so far (speculative decoding makes it one per row, [B])
            "index": jnp.zeros((), jnp.int32),
            "key_valid": jnp.zeros((batch_size, s), jnp.int32),  # 1 where a slot holds a token
            "next_position": jnp.zeros((batch_size,), jnp.int32),
        }
        if mtp:
            if not self.mtp:
                raise ValueError("this decoder has no multi-token-prediction modules "
                                 "(model.mtp_depth=0)")
            cache["mtp"] = dict(layer_cache)
        return cache

    def _decode_layout(self, cache: dict, valid_BxT: Array) -> tuple[Array, ...]:
        """(positions [B, T], key_valid [B, S], mask and window mask (or None) [B, 1, T, S],
        ALiBi bias or None) of T tokens appended to `cache` at its index."""
        index = cache["index"]  # a scalar, or [B] (speculative decoding)
        positions = cache["next_position"][:, None] + jnp.cumsum(valid_BxT, axis=1) - 1
        positions = jnp.maximum(positions, 0)
        key_valid = write_slots(cache["key_valid"], valid_BxT, index)
        # Valid queries see valid keys up to themselves; padding queries see only themselves
        # (their outputs are never used), which keeps every softmax row non-empty.
        q_seg = jnp.where(valid_BxT == 1, 1, 2)
        k_seg = jnp.where(key_valid == 1, 1, 2)
        slot = jnp.arange(key_valid.shape[1])[None]
        start = jnp.reshape(index, (-1, 1))
        is_new = (slot >= start) & (slot < start + valid_BxT.shape[1])
        k_seg = jnp.where((k_seg == 2) & ~is_new, 0, k_seg)
        mask, window_mask = self._masks(q_seg, k_seg, True, query_offset=index)
        # a slot's position: how many valid tokens come before it in its row
        bias = self._bias(positions, jnp.maximum(jnp.cumsum(key_valid, axis=1) - 1, 0))
        return positions, key_valid, mask, window_mask, bias

    def decode(self, tokens_BxT: Array, cache: dict, valid_BxT: Array | None = None, *,
               with_states: bool = False) -> tuple[Array, dict] | tuple[Array, Array, dict]:
        """Appends T tokens to the cache and returns their logits [B, T, V]. `valid` marks real
        tokens (0 for left padding of shorter prompts); positions count valid tokens only.
        `with_states`: (logits, the last block's output [B, T, D] before the final norm,
        cache), what `mtp_decode` reads."""
        valid = jnp.ones_like(tokens_BxT) if valid_BxT is None else valid_BxT.astype(jnp.int32)
        index = cache["index"]
        positions, key_valid, mask, window_mask, bias = self._decode_layout(cache, valid)
        x = self._embed(tokens_BxT, positions, None)
        new_layers = []
        for i, (layer, layer_cache) in enumerate(zip(self.layers, cache["layers"], strict=True)):
            windowed = self.cfg.layer_windowed(i)
            x, layer_cache = layer(x, window_mask if windowed else mask, positions,
                                   cache=layer_cache, cache_index=index, bias=bias,
                                   windowed=windowed)
            new_layers.append(layer_cache)
        logits = self.output_logits(self._final(x))
        new_cache = {
            **cache,
            "layers": new_layers,
            "index": index + tokens_BxT.shape[1],
            "key_valid": key_valid,
            "next_position": cache["next_position"] + valid.sum(axis=1),
        }
        return (logits, x, new_cache) if with_states else (logits, new_cache)

    def mtp_decode(self, states_BxTxD: Array, next_tokens_BxT: Array, cache: dict,
                   valid_BxT: Array | None = None) -> tuple[Array, dict]:
        """The first multi-token-prediction module over T tokens that `decode` appends to
        `cache` (given as it was before that call): `states` are decode's `with_states`
        output, `next_tokens` the token after each. Returns (logits [B, T, V] of the token
        after each next token, the module's updated block cache, cache["mtp"])."""
        valid = (jnp.ones_like(next_tokens_BxT) if valid_BxT is None
                 else valid_BxT.astype(jnp.int32))
        positions, _, mask, _, _ = self._decode_layout(cache, valid)
        # as in training (multi_token_states): the full causal mask, no window or bias
        _, normed, block_cache = self.mtp[0](states_BxTxD, next_tokens_BxT, self.embed, mask,
                                             positions, cache=cache["mtp"],
                                             cache_index=cache["index"])
        return self.output_logits(normed), block_cache
