"""Autoregressive sampling over a `tokens_to_logits(tokens, cache, valid) -> (logits, cache)`
callable: greedy (temperature 0), temperature, top-k and top-p (nucleus)."""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

Array = jax.Array
TokensToLogits = Callable[[Array, dict, Array | None], tuple[Array, dict]]


def filter_logits(logits_BxV: Array, top_k: int = 0, top_p: float = 1.0) -> Array:
    """Sets logits outside the top-k / top-p nucleus to -inf (the most likely token is kept)."""
    neg = jnp.finfo(logits_BxV.dtype).min
    if top_k and top_k < logits_BxV.shape[-1]:
        kth = jax.lax.top_k(logits_BxV, top_k)[0][..., -1:]
        logits_BxV = jnp.where(logits_BxV < kth, neg, logits_BxV)
    if top_p < 1.0:
        sorted_logits = jnp.sort(logits_BxV, axis=-1)[..., ::-1]
        probs = jax.nn.softmax(sorted_logits, axis=-1)
        mass_before = jnp.cumsum(probs, axis=-1) - probs
        # the smallest logit still inside the nucleus
        cutoff = jnp.min(jnp.where(mass_before < top_p, sorted_logits, jnp.inf), axis=-1,
                         keepdims=True)
        logits_BxV = jnp.where(logits_BxV < cutoff, neg, logits_BxV)
    return logits_BxV


def sample_token(logits_BxV: Array, rng: Array, temperature: float, top_k: int = 0,
                 top_p: float = 1.0) -> Array:
    """Next token ids [B]."""
    if temperature == 0.0:
        return jnp.argmax(logits_BxV, axis=-1)
    logits = filter_logits(logits_BxV.astype(jnp.float32) / temperature, top_k, top_p)
    return jax.random.categorical(rng, logits, axis=-1)


def sample(tokens_to_logits: TokensToLogits, prompt_BxP: Array, prompt_valid_BxP: Array,
           cache: dict, rng: Array, *, max_new_tokens: int, eos_id: int, pad_id: int = 0,
           temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0) -> Array:
    """New tokens [B, max_new_tokens] after left-padded prompts; pad_id after each row's <eos>.

    `tokens_to_logits(tokens_BxT, cache)` appends T tokens to the cache and returns their
    logits; it is called once on the prompt, then once per new token.
    """
    logits, cache = tokens_to_logits(prompt_BxP, cache, prompt_valid_BxP)
    batch = prompt_BxP.shape[0]

    def step(carry, i):
        logits_BxV, cache, done, rng = carry
        rng, key = jax.random.split(rng)
        token = sample_token(logits_BxV, key, temperature, top_k, top_p)
        token = jnp.where(done, pad_id, token)
        done = done | (token == eos_id)
        next_logits, cache = tokens_to_logits(token[:, None], cache, None)
        return (next_logits[:, -1], cache, done, rng), token

    init = (logits[:, -1], cache, jnp.zeros((batch,), bool), rng)
    _, tokens = jax.lax.scan(step, init, jnp.arange(max_new_tokens))
    return tokens.T
