"""Decoding a decoder-only model: left-padded prompts through its KV cache, then greedy /
sampled (optionally speculative, with a draft model) or beam-search continuation (what
`generate` and a decoder's seq2seq eval run)."""

from __future__ import annotations

import functools

import jax
from flax import nnx

from llmjax.decoding import beam_search, sampling, speculative


@functools.partial(jax.jit, static_argnames=("graphdef", "cache_len", "max_new_tokens",
                                             "beam_size", "alpha", "eos_id", "pad_id",
                                             "temperature", "top_k", "top_p", "min_p",
                                             "repetition_penalty"))
def continue_prompts(graphdef: nnx.GraphDef, params: nnx.State, prompt_BxP: jax.Array,
                     valid_BxP: jax.Array, rng: jax.Array, *, cache_len: int,
                     max_new_tokens: int, beam_size: int = 1, alpha: float = 0.6, eos_id: int,
                     pad_id: int = 0, temperature: float = 0.0, top_k: int = 0,
                     top_p: float = 1.0, min_p: float = 0.0,
                     repetition_penalty: float = 1.0) -> jax.Array:
    """New tokens [B, max_new_tokens] after each prompt (pad after <eos>); `valid` is 0 at the
    left padding. Beam search when beam_size > 1, else sampling (temperature 0 = greedy).
    `cache_len` >= P + max_new_tokens slots."""
    model = nnx.merge(graphdef, params)
    if beam_size > 1:
        cache = model.init_cache(prompt_BxP.shape[0] * beam_size, cache_len)
        tokens, _ = beam_search.beam_search(model.decode, prompt_BxP, cache,
                                            beam_size=beam_size, max_new_tokens=max_new_tokens,
                                            eos_id=eos_id, pad_id=pad_id, alpha=alpha,
                                            prompt_valid_BxP=valid_BxP)
        return tokens
    cache = model.init_cache(prompt_BxP.shape[0], cache_len)
    return sampling.sample(model.decode, prompt_BxP, valid_BxP, cache, rng,
                           max_new_tokens=max_new_tokens, eos_id=eos_id, pad_id=pad_id,
                           temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p,
                           repetition_penalty=repetition_penalty)


@functools.partial(jax.jit, static_argnames=("graphdef", "draft_graphdef", "cache_len",
                                             "draft_tokens", "max_new_tokens", "eos_id",
                                             "pad_id", "temperature", "top_k", "top_p",
                                             "min_p"))
def speculate_prompts(graphdef: nnx.GraphDef, params: nnx.State, draft_graphdef: nnx.GraphDef,
                      draft_params: nnx.State, prompt_BxP: jax.Array, valid_BxP: jax.Array,
                      rng: jax.Array, *, cache_len: int, draft_tokens: int,
                      max_new_tokens: int, eos_id: int, pad_id: int = 0,
                      temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0,
                      min_p: float = 0.0) -> tuple[jax.Array, jax.Array]:
    """`continue_prompts`' sampling with a draft model proposing `draft_tokens` tokens per
    target call (speculative.py): (new tokens [B, max_new_tokens], target calls after the
    prompt). `cache_len`: speculative.cache_slots(...)."""
    model = nnx.merge(graphdef, params)
    draft = nnx.merge(draft_graphdef, draft_params)
    batch = prompt_BxP.shape[0]
    return speculative.speculate(
        model.decode, draft.decode, prompt_BxP, valid_BxP, model.init_cache(batch, cache_len),
        draft.init_cache(batch, cache_len), rng, draft_tokens=draft_tokens,
        max_new_tokens=max_new_tokens, eos_id=eos_id, pad_id=pad_id, temperature=temperature,
        top_k=top_k, top_p=top_p, min_p=min_p)


@functools.partial(jax.jit, static_argnames=("graphdef", "cache_len", "max_new_tokens",
                                             "eos_id", "pad_id", "temperature", "top_k",
                                             "top_p", "min_p"))
def self_speculate_prompts(graphdef: nnx.GraphDef, params: nnx.State, prompt_BxP: jax.Array,
                           valid_BxP: jax.Array, rng: jax.Array, *, cache_len: int,
                           max_new_tokens: int, eos_id: int, pad_id: int = 0,
                           temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0,
                           min_p: float = 0.0) -> tuple[jax.Array, jax.Array]:
    """`speculate_prompts` with the model's own multi-token-prediction module as the draft:
    (new tokens [B, max_new_tokens], calls after the prompt's). `cache_len`:
    speculative.cache_slots(..., draft_tokens=1)."""
    model = nnx.merge(graphdef, params)
    return speculative.self_speculate(
        model, prompt_BxP, valid_BxP, model.init_cache(prompt_BxP.shape[0], cache_len, mtp=True),
        rng, max_new_tokens=max_new_tokens, eos_id=eos_id, pad_id=pad_id,
        temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p)
