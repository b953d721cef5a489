"""Multi-token prediction (DeepSeek-V3, §2.2): extra modules that each predict one token
further ahead, trained beside the next-token loss for a denser training signal.

Module k (from 0) at position i reads the previous depth's states h_i (the main stack's output
for k = 0, before its final norm) and the embedding of token t_{i+k+1}, and predicts
t_{i+k+2}:

    h'_i = Block(W [norm(embed(t_{i+k+1})); norm(h_i)])        W: [2D, D], Block: a
    logits_i = output_head(norm'(h'_i))                         Transformer block

with the model's own token table and output head, under the main stack's causal mask and
positions. The objective's `mtp_loss` trains them (objectives/causal_lm.py); evaluation's
next-token loss never runs them, and decoding only as speculative decoding's draft
(`Decoder.mtp_decode`, DeepSeek-V3's §5.4.3).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from llmjax.models.blocks import TransformerBlock
from llmjax.models.config import ModelConfig
from llmjax.models.layers import Dense, Embed, Norm
from llmjax.models.moe import is_moe_layer

Array = jax.Array


class MTPModule(nnx.Module):
    """One prediction depth: `embed_norm`, `hidden_norm`, `proj` [2D, D], `block`, and
    `output_norm` before the shared output head."""

    def __init__(self, cfg: ModelConfig, depth: int, *, rngs: nnx.Rngs):
        self.embed_norm = Norm(cfg.emb_dim, cfg)
        self.hidden_norm = Norm(cfg.emb_dim, cfg)
        self.proj = Dense((2 * cfg.emb_dim,), (cfg.emb_dim,), cfg, rngs=rngs, use_bias=False)
        # counted as the layer after the main stack's last (a mixture where those are)
        self.block = TransformerBlock(cfg, rngs=rngs,
                                      moe=is_moe_layer(cfg, cfg.num_layers + depth))
        self.output_norm = Norm(cfg.emb_dim, cfg)

    def __call__(self, hidden_BxLxD: Array, next_tokens_BxL: Array, embed: Embed,
                 mask: Array, positions_BxL: Array, rng: Array | None = None, *,
                 cache: dict | None = None, cache_index: Array | None = None
                 ) -> tuple[Array, Array, dict | None]:
        """(this depth's states [B, L, D] before its output norm, after it, and its block's
        updated KV cache when decoding with one)."""
        x = jnp.concatenate([self.embed_norm(embed(next_tokens_BxL)),
                             self.hidden_norm(hidden_BxLxD)], axis=-1)
        h, cache = self.block(self.proj(x), mask, positions_BxL, rng=rng, cache=cache,
                              cache_index=cache_index)
        return h, self.output_norm(h), cache


def shifted(x_BxL: Array, by: int) -> Array:
    """x[:, i + by] at position i, zeros past the end."""
    return jnp.pad(x_BxL[:, by:], ((0, 0), (0, by)))
