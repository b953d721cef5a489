"""Encoder-decoder (T5 / BART-style) Transformer: a bidirectional encoder over the source and a
causal decoder with cross-attention to the encoder's output, sharing one token embedding (tied
to the output projection unless `tie_embeddings=False`).

Segment ids mark real tokens (1) and padding (0) on both sides. `encode` and `decode` are the
two halves; `init_cache` + `decode_step` decode one token at a time with a KV cache for the
decoder's self-attention and the encoder's keys/values computed once per source.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from llmjax.models.attention import make_attention_mask, segment_positions
from llmjax.models.blocks import TransformerBlock, apply_blocks
from llmjax.models.config import ModelConfig
from llmjax.models.layers import Dense, Embed, Norm, dropout, fold, sinusoidal
from llmjax.models.moe import is_moe_layer
from llmjax.models.relative_position import RelativePositionBias

Array = jax.Array


class _Stack(nnx.Module):
    """One side: positions (learned / sinusoidal / relative bias / rotary), layers, final norm."""

    def __init__(self, cfg: ModelConfig, num_layers: int, *, causal: bool, rngs: nnx.Rngs):
        self.cfg = dataclasses.replace(cfg, causal=causal)
        if cfg.position_embedding == "learned":
            self.position_embed = Embed(cfg.max_len, cfg.emb_dim, cfg, rngs=rngs)
        self.relative_bias = (RelativePositionBias(cfg, bidirectional=not causal, rngs=rngs)
                              if cfg.position_embedding == "relative" else None)
        # Post-norm stacks (BART) normalise the summed embeddings; pre-norm ones end with a norm.
        self.embed_norm = Norm(cfg.emb_dim, cfg) if cfg.norm_position == "post" else None
        self.layers = nnx.List([TransformerBlock(self.cfg, rngs=rngs, cross_attention=causal,
                                                 moe=is_moe_layer(cfg, i))
                                for i in range(num_layers)])
        self.final_norm = Norm(cfg.emb_dim, cfg) if cfg.norm_position != "post" else None

    def embed_positions(self, x_BxLxD: Array, positions_BxL: Array, rng: Array | None) -> Array:
        """Token embeddings [B, L, D] -> the stack's input (positions, norm, dropout)."""
        if self.cfg.scale_embeddings:  # BART's scale_embedding, the original Transformer's
            x_BxLxD = x_BxLxD * jnp.sqrt(jnp.float32(self.cfg.emb_dim)).astype(x_BxLxD.dtype)
        if self.cfg.position_embedding == "learned":
            x_BxLxD = x_BxLxD + self.position_embed(positions_BxL)
        elif self.cfg.position_embedding == "sinusoidal":
            x_BxLxD = x_BxLxD + sinusoidal(positions_BxL, self.cfg.emb_dim).astype(x_BxLxD.dtype)
        if self.embed_norm is not None:
            x_BxLxD = self.embed_norm(x_BxLxD)
        return dropout(x_BxLxD, self.cfg.dropout_rate, rng)

    def bias(self, query_positions_BxQ: Array, key_positions_BxK: Array) -> Array | None:
        if self.relative_bias is None:
            return None
        return self.relative_bias(query_positions_BxQ, key_positions_BxK)

    def finish(self, x_BxLxD: Array) -> Array:
        return x_BxLxD if self.final_norm is None else self.final_norm(x_BxLxD)


class EncoderDecoder(nnx.Module):
    """(source [B, S], decoder inputs [B, T]) -> logits [B, T, V] (float32)."""

    appends_extra_ids = True  # its vocabulary = the tokenizer's + tokenizer.extra_ids (T5)

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        self.embed = Embed(cfg.vocab_size, cfg.emb_dim, cfg, rngs=rngs, rows="vocab")
        self.encoder = _Stack(cfg, cfg.encoder_layers, causal=False, rngs=rngs)
        self.decoder = _Stack(cfg, cfg.decoder_layers, causal=True, rngs=rngs)
        if not cfg.tie_embeddings:
            self.lm_head = Dense((cfg.emb_dim,), (cfg.vocab_size,), cfg, rngs=rngs,
                                 use_bias=False)

    def encode(self, tokens_BxS: Array, *, segment_ids: Array | None = None,
               rng: Array | None = None) -> Array:
        """Encoder output [B, S, D]; segment 0 marks padding."""
        seg = jnp.ones_like(tokens_BxS) if segment_ids is None else segment_ids
        pos = segment_positions(seg)
        stack = self.encoder
        x = stack.embed_positions(self.embed(tokens_BxS), pos, fold(rng, 0))
        mask = make_attention_mask(seg, seg, causal=False)
        bias = stack.bias(pos, pos)
        x = apply_blocks(stack.layers, x, mask, pos, cfg=self.cfg, rng=rng, bias=bias)
        return stack.finish(x)

    @property
    def output_head(self) -> nnx.Module:
        """The module whose parameters project decoder states to logits: the shared embedding
        table (tied) or lm_head."""
        return self.embed if self.cfg.tie_embeddings else self.lm_head

    def output_logits(self, x_BxTxD: Array, head: nnx.Module | None = None) -> Array:
        """The decoder's last states [B, T, D] -> logits [B, T, V] in float32. `head`: another
        `output_head` (of the same shapes) to project with."""
        head = self.output_head if head is None else head
        if self.cfg.scale_decoder_outputs:  # T5 v1.0
            x_BxTxD = x_BxTxD * (self.cfg.emb_dim ** -0.5)
        if self.cfg.tie_embeddings:
            return head.attend(x_BxTxD)
        return head(x_BxTxD).astype(jnp.float32)

    def decode(self, decoder_tokens_BxT: Array, encoded_BxSxD: Array, *,
               encoder_segment_ids: Array, decoder_segment_ids: Array | None = None,
               rng: Array | None = None) -> Array:
        """Teacher-forced decoder logits [B, T, V] given the encoder output."""
        return self.output_logits(self.decoder_hidden_states(
            decoder_tokens_BxT, encoded_BxSxD, encoder_segment_ids=encoder_segment_ids,
            decoder_segment_ids=decoder_segment_ids, rng=rng))

    def decoder_hidden_states(self, decoder_tokens_BxT: Array, encoded_BxSxD: Array, *,
                              encoder_segment_ids: Array,
                              decoder_segment_ids: Array | None = None,
                              rng: Array | None = None) -> Array:
        """The decoder's last states [B, T, D] (after its final norm), teacher-forced."""
        seg = (jnp.ones_like(decoder_tokens_BxT) if decoder_segment_ids is None
               else decoder_segment_ids)
        pos = segment_positions(seg)
        stack = self.decoder
        x = stack.embed_positions(self.embed(decoder_tokens_BxT), pos, fold(rng, 0))
        mask = make_attention_mask(seg, seg, causal=True)
        # Decoder segment k (a packed row's k-th pair) sees source segment k; padding, whose
        # output is unused, sees the first pair's source, so no softmax row is empty.
        memory_mask = make_attention_mask(jnp.maximum(seg, 1), encoder_segment_ids,
                                          causal=False)
        bias = stack.bias(pos, pos)
        x = apply_blocks(stack.layers, x, mask, pos, cfg=self.cfg, rng=rng, bias=bias,
                         memory_BxSxD=encoded_BxSxD, memory_mask=memory_mask)
        return stack.finish(x)

    def __call__(self, tokens_BxS: Array, decoder_tokens_BxT: Array, *,
                 segment_ids: Array | None = None, decoder_segment_ids: Array | None = None,
                 rng: Array | None = None) -> Array:
        """Logits [B, T, V]: decoder position t predicts target token t."""
        return self.output_logits(self.target_hidden_states(
            tokens_BxS, decoder_tokens_BxT, segment_ids=segment_ids,
            decoder_segment_ids=decoder_segment_ids, rng=rng))

    def target_hidden_states(self, tokens_BxS: Array, decoder_tokens_BxT: Array, *,
                             segment_ids: Array | None = None,
                             decoder_segment_ids: Array | None = None,
                             rng: Array | None = None) -> Array:
        """The decoder's last states [B, T, D] of a source and teacher-forced target: what
        `output_logits` turns into __call__'s logits."""
        seg = jnp.ones_like(tokens_BxS) if segment_ids is None else segment_ids
        encoded = self.encode(tokens_BxS, segment_ids=seg, rng=fold(rng, 0))
        return self.decoder_hidden_states(decoder_tokens_BxT, encoded, encoder_segment_ids=seg,
                                          decoder_segment_ids=decoder_segment_ids,
                                          rng=fold(rng, 1))

    def hidden_states(self, tokens_BxS: Array, *, segment_ids: Array | None = None,
                      **unused) -> Array:
        """The encoder's output [B, S, D] (what `llmjax.load(...).hidden_states` returns)."""
        return self.encode(tokens_BxS, segment_ids=segment_ids)

    def init_cache(self, encoded_BxSxD: Array, encoder_segment_ids: Array, max_len: int
                   ) -> dict:
        """A decoding cache for `decode_step`: empty self-attention keys/values [B, max_len,
        H_kv, K] per layer, and each layer's cross-attention keys/values of the encoder output."""
        cfg = self.cfg
        batch = encoded_BxSxD.shape[0]
        shape = (batch, max_len, cfg.kv_heads, cfg.head_dim)
        return {
            "layers": [{"k": jnp.zeros(shape, cfg.compute_dtype),
                        "v": jnp.zeros(shape, cfg.compute_dtype)} for _ in self.decoder.layers],
            "memory": [layer.cross_attention.key_values(encoded_BxSxD)
                       for layer in self.decoder.layers],
            "memory_segments": encoder_segment_ids,
            "index": jnp.zeros((), jnp.int32),
        }

    def decode_step(self, tokens_BxT: Array, cache: dict, valid_BxT: Array | None = None
                    ) -> tuple[Array, dict]:
        """Appends T decoder tokens to the cache and returns their logits [B, T, V] (the
        `tokens_to_logits` of decoding/). Every row decodes from the same position, so `valid`
        must be all ones (None)."""
        del valid_BxT  # decoder prefixes are never left-padded
        index, length = cache["index"], tokens_BxT.shape[1]
        slots = cache["layers"][0]["k"].shape[1]
        positions = index + jnp.arange(length)[None, :].repeat(tokens_BxT.shape[0], axis=0)
        filled = (jnp.arange(slots) < index + length).astype(jnp.int32)
        mask = make_attention_mask(jnp.ones_like(tokens_BxT), filled[None].repeat(
            tokens_BxT.shape[0], axis=0), causal=True, query_offset=index)
        memory_mask = make_attention_mask(jnp.ones_like(tokens_BxT), cache["memory_segments"],
                                          causal=False)
        stack = self.decoder
        bias = stack.bias(positions, jnp.arange(slots)[None, :])
        x = stack.embed_positions(self.embed(tokens_BxT), positions, None)
        new_layers = []
        for layer, layer_cache, memory_kv in zip(stack.layers, cache["layers"], cache["memory"],
                                                 strict=True):
            x, layer_cache = layer(x, mask, positions, cache=layer_cache, cache_index=index,
                                   bias=bias, memory_kv=memory_kv, memory_mask=memory_mask)
            new_layers.append(layer_cache)
        return self.output_logits(stack.finish(x)), {**cache, "layers": new_layers,
                                                 "index": index + length}
