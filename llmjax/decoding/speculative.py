"""Speculative decoding (Leviathan et al. 2023; Chen et al. 2023): a small draft model proposes
K tokens one at a time, the target model scores all of them in one call, and the longest
prefix the target agrees with is kept, plus one token of the target's own. Greedy decoding
gives the target's greedy tokens; sampling keeps each draft token with probability
min(1, p/q) and replaces the first rejected one by a draw from max(0, p - q), so every token
has the target's (filtered) distribution. Both are the target's output, in fewer target calls.
The draft is another, smaller decoder (`speculate`), or the target's own first
multi-token-prediction module (`self_speculate`, DeepSeek-V3's use of it: one draft per call).

The caches keep one write index per row: each round writes the same K + 1 slots of a row to
both caches (the pending token and the K drafts), then moves the row's index past the tokens
it kept, so the next round overwrites its rejected drafts. Rows advance apart and no slot is
left empty: the caches need the prompt's slots, the new tokens' and one block's.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp

from llmjax.decoding.sampling import TokensToLogits, filter_logits, sample_token

if TYPE_CHECKING:
    from llmjax.models.decoder import Decoder

Array = jax.Array


def cache_slots(prompt_len: int, max_new_tokens: int, draft_tokens: int) -> int:
    """Cache slots that speculative decoding writes at most: a row's index stays below the
    prompt and its new tokens, and a round writes K + 1 slots past it."""
    return prompt_len + max_new_tokens + draft_tokens + 1


def _probabilities(logits: Array, temperature: float, top_k: int, top_p: float,
                   min_p: float) -> Array:
    """The distribution sampling draws from: logits / temperature, filtered, softmaxed."""
    logits = filter_logits(logits.astype(jnp.float32) / temperature, top_k, top_p, min_p)
    return jax.nn.softmax(logits, axis=-1)


def verify(target_logits_BxKp1xV: Array, draft_logits_BxKxV: Array, drafts_BxK: Array,
           rng: Array, *, temperature: float, top_k: int = 0, top_p: float = 1.0,
           min_p: float = 0.0) -> tuple[Array, Array]:
    """(accepted [B]: how many leading drafts to keep, next [B]: the token after them).

    `target_logits[:, j]` scores the token after the pending token and drafts 1..j;
    `draft_logits[:, j]` is what draft j+1 was drawn from. Greedy (temperature 0): a draft is
    kept while it is the target's argmax, and `next` is the target's argmax after the kept
    ones. Sampling: draft j is kept with probability min(1, p(d)/q(d)); `next` is drawn from
    norm(max(0, p - q)) at the first rejection, or from p after the last draft."""
    k = drafts_BxK.shape[1]
    rows = jnp.arange(drafts_BxK.shape[0])
    if temperature == 0.0:
        predicted = jnp.argmax(target_logits_BxKp1xV, axis=-1)  # [B, K+1]
        agree = predicted[:, :k] == drafts_BxK
        accepted = jnp.cumprod(agree, axis=1).sum(axis=1)
        return accepted, predicted[rows, accepted]
    options = (temperature, top_k, top_p, min_p)
    p = _probabilities(target_logits_BxKp1xV, *options)  # [B, K+1, V]
    q = _probabilities(draft_logits_BxKxV, *options)  # [B, K, V]
    p_draft = jnp.take_along_axis(p[:, :k], drafts_BxK[..., None], axis=-1)[..., 0]
    q_draft = jnp.take_along_axis(q, drafts_BxK[..., None], axis=-1)[..., 0]
    accept_key, next_key = jax.random.split(rng)
    # u < p/q, written without the division (q(d) > 0: d was drawn from q)
    keep = jax.random.uniform(accept_key, drafts_BxK.shape) * q_draft < p_draft
    accepted = jnp.cumprod(keep, axis=1).sum(axis=1)
    p_next = p[rows, accepted]
    q_next = jnp.where((accepted < k)[:, None], q[rows, jnp.minimum(accepted, k - 1)], 0.0)
    residual = jnp.maximum(p_next - q_next, 0.0)
    # rounding can leave no mass where p and q agree: then p itself
    residual = jnp.where(residual.sum(axis=-1, keepdims=True) > 0, residual, p_next)
    next_token = jax.random.categorical(next_key, jnp.log(residual), axis=-1)
    return accepted, next_token


def _rewind(cache: dict, before: dict, kept_B: Array, block: int) -> dict:
    """`cache` after a block of `block` tokens was appended to `before`, with each row's slots
    past its first `kept` ones emptied and its write index moved past the kept ones."""
    index = before["index"][:, None]  # [B, 1]
    slot = jnp.arange(cache["key_valid"].shape[1])[None]
    rejected = (slot >= index + kept_B[:, None]) & (slot < index + block)
    return {**cache, "index": before["index"] + kept_B,
            "key_valid": jnp.where(rejected, 0, cache["key_valid"]),
            "next_position": before["next_position"] + kept_B}


def _per_row(cache: dict) -> dict:
    """`cache` with one write index per row."""
    batch = cache["key_valid"].shape[0]
    return {**cache, "index": jnp.broadcast_to(cache["index"], (batch,))}


def _emit(out: Array, count: Array, done: Array, drafts_BxK: Array, accepted: Array,
          next_token: Array, *, eos_id: int, max_new_tokens: int
          ) -> tuple[Array, Array, Array]:
    """(out, count, done) after a round: each unfinished row writes its kept drafts and the
    target's token at its `count`, up to and including an <eos>."""
    batch, block = drafts_BxK.shape[0], drafts_BxK.shape[1] + 1
    rows = jnp.arange(batch)
    emitted = jnp.concatenate([drafts_BxK, jnp.zeros((batch, 1), drafts_BxK.dtype)], axis=1)
    emitted = emitted.at[rows, accepted].set(next_token).astype(jnp.int32)
    j = jnp.arange(block)[None]
    is_eos = (emitted == eos_id) & (j <= accepted[:, None])
    first_eos = jnp.where(is_eos.any(axis=1), jnp.argmax(is_eos, axis=1), block)
    writes = (j <= jnp.minimum(accepted, first_eos)[:, None]) & ~done[:, None]
    columns = jnp.where(writes, count[:, None] + j, out.shape[1])  # past the end: dropped
    out = out.at[rows[:, None], columns].set(emitted, mode="drop")
    count = count + jnp.where(done, 0, accepted + 1)
    done = done | (first_eos < block) | (count >= max_new_tokens)
    return out, count, done


def _first_token(logits_BxV: Array, rng: Array, options: dict, *, max_new_tokens: int,
                 block: int, eos_id: int, pad_id: int) -> tuple[Array, ...]:
    """(the token after the prompt, the output buffer holding it, count, done)."""
    token = sample_token(logits_BxV, rng, **options)
    batch = logits_BxV.shape[0]
    # room for a last round's whole block past max_new_tokens
    out = jnp.full((batch, max_new_tokens + block), pad_id, jnp.int32)
    out = out.at[:, 0].set(token.astype(jnp.int32))
    count = jnp.ones((batch,), jnp.int32)
    done = (token == eos_id) | (count >= max_new_tokens)
    return token, out, count, done


def speculate(target: TokensToLogits, draft: TokensToLogits, prompt_BxP: Array,
              prompt_valid_BxP: Array, target_cache: dict, draft_cache: dict, rng: Array, *,
              draft_tokens: int, max_new_tokens: int, eos_id: int, pad_id: int = 0,
              temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
              min_p: float = 0.0) -> tuple[Array, Array]:
    """(new tokens [B, max_new_tokens], pad after each row's <eos>; target calls after the
    prompt's). `target` and `draft` append tokens to their caches and return logits, as
    `Decoder.decode`; the caches hold `cache_slots(...)` slots."""
    k, block = draft_tokens, draft_tokens + 1
    options = {"temperature": temperature, "top_k": top_k, "top_p": top_p, "min_p": min_p}
    limits = {"eos_id": eos_id, "max_new_tokens": max_new_tokens}
    target_cache, draft_cache = _per_row(target_cache), _per_row(draft_cache)
    logits, target_cache = target(prompt_BxP, target_cache, prompt_valid_BxP)
    _, draft_cache = draft(prompt_BxP, draft_cache, prompt_valid_BxP)
    rng, key = jax.random.split(rng)
    # the pending token: emitted, not yet in the caches
    pending, out, count, done = _first_token(logits[:, -1], key, options, block=block,
                                             pad_id=pad_id, **limits)

    def propose(carry, key):
        token, cache = carry
        logits, cache = draft(token[:, None], cache, None)
        logits = logits[:, -1]
        return (sample_token(logits, key, **options), cache), (token, logits)

    def round_(state):
        pending, out, count, done, target_cache, draft_cache, rng, calls = state
        rng, draft_key, verify_key = jax.random.split(rng, 3)
        # K + 1 draft steps: the last writes draft K to the draft cache (its proposal unused),
        # so both caches get the same block of slots
        (_, new_draft_cache), (fed, draft_logits) = jax.lax.scan(
            propose, (pending, draft_cache), jax.random.split(draft_key, block))
        fed_BxKp1 = fed.T  # pending, d1..dK
        drafts = fed_BxKp1[:, 1:]
        target_logits, new_target_cache = target(fed_BxKp1, target_cache, None)
        accepted, next_token = verify(target_logits, draft_logits[:k].transpose(1, 0, 2),
                                      drafts, verify_key, **options)
        accepted = jnp.where(done, 0, accepted)
        # the pending token and the kept drafts (a finished row's index stays)
        kept = jnp.where(done, 0, accepted + 1)
        target_cache = _rewind(new_target_cache, target_cache, kept, block)
        draft_cache = _rewind(new_draft_cache, draft_cache, kept, block)
        out, count, done = _emit(out, count, done, drafts, accepted, next_token, **limits)
        return (next_token, out, count, done, target_cache, draft_cache, rng, calls + 1)

    state = (pending, out, count, done, target_cache, draft_cache, rng, jnp.zeros((), jnp.int32))
    state = jax.lax.while_loop(lambda s: ~jnp.all(s[3]), round_, state)
    return state[1][:, :max_new_tokens], state[7]


def self_speculate(model: Decoder, prompt_BxP: Array, prompt_valid_BxP: Array, cache: dict,
                   rng: Array, *, max_new_tokens: int, eos_id: int, pad_id: int = 0,
                   temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
                   min_p: float = 0.0) -> tuple[Array, Array]:
    """`speculate` with the model's own first multi-token-prediction module as the draft
    (DeepSeek-V3, §5.4.3): one draft token per call, which the module predicts from the
    model's states at the last kept token and the token the model chose after it. `model`:
    a Decoder with model.mtp_depth >= 1; `cache`: its `init_cache(..., mtp=True)`."""
    options = {"temperature": temperature, "top_k": top_k, "top_p": top_p, "min_p": min_p}
    limits = {"eos_id": eos_id, "max_new_tokens": max_new_tokens}
    rows = jnp.arange(prompt_BxP.shape[0])
    cache = _per_row(cache)
    logits, states, new_cache = model.decode(prompt_BxP, cache, prompt_valid_BxP,
                                             with_states=True)
    rng, key, draft_key = jax.random.split(rng, 3)
    pending, out, count, done = _first_token(logits[:, -1], key, options, block=2,
                                             pad_id=pad_id, **limits)
    after = jnp.concatenate([prompt_BxP[:, 1:], pending[:, None]], axis=1).astype(jnp.int32)
    draft_logits, mtp_cache = model.mtp_decode(states, after, cache, prompt_valid_BxP)
    cache = {**new_cache, "mtp": mtp_cache}
    draft_logits = draft_logits[:, -1]
    draft = sample_token(draft_logits, draft_key, **options)

    def round_(state):
        pending, draft, draft_logits, out, count, done, cache, rng, calls = state
        rng, verify_key, draft_key = jax.random.split(rng, 3)
        fed = jnp.stack([pending, draft], axis=1).astype(jnp.int32)
        logits, states, new_cache = model.decode(fed, cache, None, with_states=True)
        accepted, next_token = verify(logits, draft_logits[:, None], fed[:, 1:], verify_key,
                                      **options)
        accepted = jnp.where(done, 0, accepted)
        # the token after each fed one: the draft where kept (else the model's), then the
        # model's after the draft
        after = jnp.stack([jnp.where(accepted >= 1, draft, next_token), next_token], axis=1)
        mtp_logits, mtp_cache = model.mtp_decode(states, after.astype(jnp.int32), cache)
        # the module at the last kept token proposes the token after `next_token`
        new_draft_logits = mtp_logits[rows, accepted]
        new_draft = sample_token(new_draft_logits, draft_key, **options)
        kept = jnp.where(done, 0, accepted + 1)
        cache = _rewind({**new_cache, "mtp": mtp_cache}, cache, kept, 2)
        out, count, done = _emit(out, count, done, fed[:, 1:], accepted, next_token, **limits)
        return (next_token, new_draft, new_draft_logits, out, count, done, cache, rng,
                calls + 1)

    state = (pending, draft, draft_logits, out, count, done, cache, rng,
             jnp.zeros((), jnp.int32))
    state = jax.lax.while_loop(lambda s: ~jnp.all(s[5]), round_, state)
    return state[3][:, :max_new_tokens], state[8]
