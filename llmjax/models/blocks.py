"""A Transformer block: self-attention, optional cross-attention (encoder-decoder), and
feed-forward, each wrapped in residual + norm, pre-norm (GPT-2, T5) or post-norm (original
Transformer, BERT)."""

from __future__ import annotations

import jax
from flax import nnx

from llmjax.models.attention import MultiHeadAttention
from llmjax.models.config import ModelConfig
from llmjax.models.layers import FeedForward, Norm, dropout, fold

Array = jax.Array


class TransformerBlock(nnx.Module):
    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs, cross_attention: bool = False):
        self.pre_norm = cfg.norm_position == "pre"
        self.dropout_rate = cfg.dropout_rate
        self.attention_norm = Norm(cfg.emb_dim, cfg)
        self.attention = MultiHeadAttention(cfg, rngs=rngs)
        if cross_attention:
            self.cross_attention_norm = Norm(cfg.emb_dim, cfg)
            self.cross_attention = MultiHeadAttention(cfg, rngs=rngs)
        else:
            self.cross_attention = None
        self.mlp_norm = Norm(cfg.emb_dim, cfg)
        self.mlp = FeedForward(cfg, rngs=rngs)

    def _residual(self, x: Array, norm: Norm, sublayer, rng: Array | None) -> tuple[Array, object]:
        y, extra = sublayer(norm(x) if self.pre_norm else x)
        x = x + dropout(y, self.dropout_rate, rng)
        return (x if self.pre_norm else norm(x)), extra

    def __call__(self, x_BxLxD: Array, mask: Array, positions_BxL: Array | None, *,
                 cache: dict | None = None, cache_index: Array | None = None,
                 bias: Array | None = None, memory_BxSxD: Array | None = None,
                 memory_kv: dict | None = None, memory_mask: Array | None = None,
                 rng: Array | None = None) -> tuple[Array, dict | None]:
        """(x [B, L, D], updated self-attention cache). Cross-attention reads the encoder's
        output `memory` (or its precomputed `memory_kv`) under `memory_mask` [B, 1, L, S]."""

        def attend(h):
            return self.attention(h, mask, positions_BxQ=positions_BxL, cache=cache,
                                  cache_index=cache_index, bias_BxHxQxK=bias, rng=fold(rng, 0))

        x, cache = self._residual(x_BxLxD, self.attention_norm, attend, fold(rng, 1))
        if self.cross_attention is not None:
            def cross(h):
                return self.cross_attention(h, memory_mask, kv_BxKxD=memory_BxSxD,
                                            static_kv=memory_kv, rng=fold(rng, 4))

            x, _ = self._residual(x, self.cross_attention_norm, cross, fold(rng, 5))
        x, _ = self._residual(x, self.mlp_norm, lambda h: (self.mlp(h, fold(rng, 2)), None),
                              fold(rng, 3))
        return x, cache
