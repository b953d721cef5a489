"""ALiBi (Press et al. 2022; BLOOM): no position embeddings; each head adds
slope_h * (key position - query position) to its attention logits, with slopes a geometric
sequence (BLOOM's / Hugging Face's construction, also for head counts not a power of two)."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array


def alibi_slopes(num_heads: int) -> np.ndarray:
    """[H] float32 slopes."""
    closest = 2 ** math.floor(math.log2(num_heads))
    base = 2.0 ** (-(2.0 ** -(math.log2(closest) - 3)))
    slopes = base ** np.arange(1, 1 + closest)
    if closest != num_heads:
        extra_base = 2.0 ** (-(2.0 ** -(math.log2(2 * closest) - 3)))
        remaining = min(closest, num_heads - closest)
        slopes = np.concatenate([slopes, extra_base ** np.arange(1, 1 + 2 * remaining, 2)])
    return slopes.astype(np.float32)


def alibi_bias(query_positions_BxQ: Array, key_positions_BxK: Array, num_heads: int) -> Array:
    """Attention logit bias [B, H, Q, K] (float32)."""
    distance = (key_positions_BxK[:, None, :] - query_positions_BxQ[:, :, None]).astype(
        jnp.float32)
    return jnp.asarray(alibi_slopes(num_heads))[None, :, None, None] * distance[:, None]
