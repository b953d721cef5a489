"""T5's relative position bias: a learned scalar per head for each bucket of key - query
distance (exact for small distances, log-spaced up to `relative_max_distance`), added to the
attention logits. One table per stack, shared by all its layers (as in T5)."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from llmjax.models.config import ModelConfig

Array = jax.Array


def relative_bucket(relative_BxQxK: Array, *, bidirectional: bool, num_buckets: int,
                    max_distance: int) -> Array:
    """Bucket ids of key position - query position (T5 / Hugging Face convention). Half of the
    buckets are exact distances, the rest log-spaced; bidirectional tables give each direction
    half of the buckets, causal ones use only distances to earlier keys."""
    buckets = jnp.zeros_like(relative_BxQxK)
    if bidirectional:
        num_buckets //= 2
        buckets += (relative_BxQxK > 0).astype(relative_BxQxK.dtype) * num_buckets
        distance = jnp.abs(relative_BxQxK)
    else:
        distance = -jnp.minimum(relative_BxQxK, 0)
    max_exact = num_buckets // 2
    is_small = distance < max_exact
    scaled = jnp.log(jnp.maximum(distance, 1).astype(jnp.float32) / max_exact) / math.log(
        max_distance / max_exact)
    large = max_exact + (scaled * (num_buckets - max_exact)).astype(relative_BxQxK.dtype)
    large = jnp.minimum(large, num_buckets - 1)
    return buckets + jnp.where(is_small, distance, large)


class RelativePositionBias(nnx.Module):
    """positions -> attention logit bias [B, H, Q, K] (float32)."""

    def __init__(self, cfg: ModelConfig, *, bidirectional: bool, rngs: nnx.Rngs):
        self.bidirectional = bidirectional
        self.num_buckets, self.max_distance = cfg.relative_buckets, cfg.relative_max_distance
        init = jax.random.normal(rngs.params(), (cfg.relative_buckets, cfg.num_heads))
        self.embedding = nnx.Param((init * 0.02).astype(cfg.weight_dtype))

    def __call__(self, query_positions_BxQ: Array, key_positions_BxK: Array) -> Array:
        relative = key_positions_BxK[:, None, :] - query_positions_BxQ[:, :, None]
        buckets = relative_bucket(relative.astype(jnp.int32), bidirectional=self.bidirectional,
                                  num_buckets=self.num_buckets, max_distance=self.max_distance)
        bias_BxQxKxH = jnp.take(self.embedding[...].astype(jnp.float32), buckets, axis=0)
        return jnp.transpose(bias_BxQxKxH, (0, 3, 1, 2))
