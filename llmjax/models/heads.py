"""Task heads on top of an encoder's hidden states [B, L, D]."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from llmjax.models.config import ModelConfig
from llmjax.models.layers import ACTIVATIONS, Dense, Embed, Norm, dropout

Array = jax.Array


class MLMHead(nnx.Module):
    """BERT's masked-LM head: dense + activation + norm, then the output projection tied to the
    input embedding matrix, plus a per-token output bias. -> logits [B, L, V] (float32)."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        self.transform = Dense((cfg.emb_dim,), (cfg.emb_dim,), cfg, rngs=rngs, use_bias=True)
        self.activation = ACTIVATIONS[cfg.activation]
        self.norm = Norm(cfg.emb_dim, cfg)
        self.output_bias = nnx.Param(jnp.zeros((cfg.vocab_size,), cfg.weight_dtype))

    def __call__(self, hidden_BxLxD: Array, embed: Embed) -> Array:
        h = self.norm(self.activation(self.transform(hidden_BxLxD)))
        return embed.attend(h) + self.output_bias[...].astype(jnp.float32)


class Pooler(nnx.Module):
    """activation(dense(hidden state of the first token, [CLS])) -> [B, D]: tanh (BERT's
    pooler, RoBERTa's classifier.dense) or cfg.pooler_activation (DistilBERT's pre_classifier
    + ReLU)."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        self.dense = Dense((cfg.emb_dim,), (cfg.emb_dim,), cfg, rngs=rngs, use_bias=True)
        self.activation = {"tanh": jnp.tanh, **ACTIVATIONS}[cfg.pooler_activation]

    def __call__(self, hidden_BxLxD: Array) -> Array:
        return self.activation(self.dense(hidden_BxLxD[:, 0]))


class ClassifierHead(nnx.Module):
    """Dropout + dense on the pooled vector -> logits [B, num_classes] (float32); NSP is a
    2-class instance, regression a 1-class one."""

    def __init__(self, cfg: ModelConfig, num_classes: int, *, rngs: nnx.Rngs,
                 use_bias: bool = True):
        self.dropout_rate = cfg.dropout_rate
        self.dense = Dense((cfg.emb_dim,), (num_classes,), cfg, rngs=rngs, use_bias=use_bias)

    def __call__(self, pooled_BxD: Array, rng: Array | None = None) -> Array:
        return self.dense(dropout(pooled_BxD, self.dropout_rate, rng)).astype(jnp.float32)
