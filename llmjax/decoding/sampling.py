"""Autoregressive sampling over a `tokens_to_logits(tokens, cache, valid) -> (logits, cache)`
callable: greedy (temperature 0), temperature, top-k, top-p (nucleus) and min-p, with an
optional repetition penalty; in Hugging Face generate's order (the penalty on the raw logits,
then temperature, top-k, top-p, min-p)."""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

Array = jax.Array
TokensToLogits = Callable[[Array, dict, Array | None], tuple[Array, dict]]


def penalize_repeats(logits_BxV: Array, seen_BxV: Array, penalty: float) -> Array:
    """CTRL's repetition penalty (Keskar et al. 2019), as Hugging Face's: the logits of tokens
    already in the row (`seen`) are divided by `penalty` when positive, multiplied when
    negative, so a penalty > 1 makes every seen token less likely."""
    penalized = jnp.where(logits_BxV < 0, logits_BxV * penalty, logits_BxV / penalty)
    return jnp.where(seen_BxV, penalized, logits_BxV)


def filter_logits(logits_BxV: Array, top_k: int = 0, top_p: float = 1.0,
                  min_p: float = 0.0) -> Array:
    """Sets logits outside the top-k / top-p nucleus, and those whose probability is below
    min_p times the most likely token's (min-p sampling), to -inf (the most likely token is
    kept)."""
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
    if min_p > 0.0:  # p < min_p * p_max  <=>  logit < max logit + log(min_p)
        floor = jnp.max(logits_BxV, axis=-1, keepdims=True) + jnp.log(min_p)
        logits_BxV = jnp.where(logits_BxV < floor, neg, logits_BxV)
    return logits_BxV


def sample_token(logits_BxV: Array, rng: Array, temperature: float, top_k: int = 0,
                 top_p: float = 1.0, min_p: float = 0.0) -> Array:
    """Next token ids [B]."""
    if temperature == 0.0:
        return jnp.argmax(logits_BxV, axis=-1)
    logits = filter_logits(logits_BxV.astype(jnp.float32) / temperature, top_k, top_p, min_p)
    return jax.random.categorical(rng, logits, axis=-1)


def sample(tokens_to_logits: TokensToLogits, prompt_BxP: Array, prompt_valid_BxP: Array,
           cache: dict, rng: Array, *, max_new_tokens: int, eos_id: int, pad_id: int = 0,
           temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0, min_p: float = 0.0,
           repetition_penalty: float = 1.0) -> Array:
    """New tokens [B, max_new_tokens] after left-padded prompts; pad_id after each row's <eos>.

    `tokens_to_logits(tokens_BxT, cache)` appends T tokens to the cache and returns their
    logits; it is called once on the prompt, then once per new token. A repetition penalty
    counts the prompt's real tokens and the new ones as seen.
    """
    logits, cache = tokens_to_logits(prompt_BxP, cache, prompt_valid_BxP)
    batch, vocab = prompt_BxP.shape[0], logits.shape[-1]
    rows = jnp.arange(batch)
    seen = None  # [B, V]: the tokens each row holds, tracked only for a penalty
    if repetition_penalty != 1.0:
        seen = jnp.zeros((batch, vocab), bool).at[rows[:, None], prompt_BxP].max(
            prompt_valid_BxP.astype(bool))

    def step(carry, i):
        logits_BxV, cache, done, seen, rng = carry
        rng, key = jax.random.split(rng)
        if seen is not None:
            logits_BxV = penalize_repeats(logits_BxV, seen, repetition_penalty)
        token = sample_token(logits_BxV, key, temperature, top_k, top_p, min_p)
        token = jnp.where(done, pad_id, token)
        if seen is not None:
            seen = seen.at[rows, token].set(True)
        done = done | (token == eos_id)
        next_logits, cache = tokens_to_logits(token[:, None], cache, None)
        return (next_logits[:, -1], cache, done, seen, rng), token

    init = (logits[:, -1], cache, jnp.zeros((batch,), bool), seen, rng)
    _, tokens = jax.lax.scan(step, init, jnp.arange(max_new_tokens))
    return tokens.T
