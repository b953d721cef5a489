"""Decoding an encoder-decoder: encode the sources once, then greedy / sampled or beam-search
decoding of the targets from <bos> over the model's cached `decode_step`."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import nnx

from llmjax.decoding import beam_search, sampling


@functools.partial(jax.jit, static_argnames=("graphdef", "max_new_tokens", "beam_size", "alpha",
                                             "bos_id", "eos_id", "pad_id", "temperature",
                                             "top_k", "top_p", "min_p", "repetition_penalty"))
def decode(graphdef: nnx.GraphDef, params: nnx.State, inputs_BxS: jax.Array,
           input_segments_BxS: jax.Array, rng: jax.Array, *, max_new_tokens: int,
           beam_size: int = 1, alpha: float = 0.6, bos_id: int, eos_id: int, pad_id: int = 0,
           temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0, min_p: float = 0.0,
           repetition_penalty: float = 1.0) -> jax.Array:
    """Target tokens [B, max_new_tokens] (pad after <eos>): beam search when beam_size > 1,
    else sampling (temperature 0 = greedy)."""
    model = nnx.merge(graphdef, params)
    encoded = model.encode(inputs_BxS, segment_ids=input_segments_BxS)
    prompt = jnp.full((inputs_BxS.shape[0], 1), bos_id, jnp.int32)
    slots = max_new_tokens + 1
    if beam_size > 1:
        cache = model.init_cache(*beam_search.repeat_for_beams(
            (encoded, input_segments_BxS), beam_size), slots)
        tokens, _ = beam_search.beam_search(model.decode_step, prompt, cache,
                                            beam_size=beam_size, max_new_tokens=max_new_tokens,
                                            eos_id=eos_id, pad_id=pad_id, alpha=alpha)
        return tokens
    cache = model.init_cache(encoded, input_segments_BxS, slots)
    return sampling.sample(model.decode_step, prompt, jnp.ones_like(prompt), cache, rng,
                           max_new_tokens=max_new_tokens, eos_id=eos_id, pad_id=pad_id,
                           temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p,
                           repetition_penalty=repetition_penalty)

