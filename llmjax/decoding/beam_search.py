"""Beam search over a `tokens_to_logits(tokens, cache, valid) -> (logits, cache)` callable,
with GNMT's length penalty ((5 + length) / 6) ** alpha and early stopping.

Each step extends the K live beams of every batch row by every token and keeps the 2K best
extensions (enough for K of them not to end in <eos>): those ending in <eos> and ranking among
the K best compete for the K finished slots by length-normalised score (so beam size 1 is
greedy), the others not ending in <eos> become the new live beams. The search stops
when no live beam can still beat the worst finished one: with alpha >= 0 a live beam's
normalised score can at best reach its log-probability over the penalty at the maximum length.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from llmjax.decoding.sampling import TokensToLogits

Array = jax.Array
NEG = -1.0e9  # a finite "minus infinity": no NaNs from -inf - -inf


def length_penalty(length: Array | int, alpha: float) -> Array:
    return ((5.0 + jnp.asarray(length, jnp.float32)) / 6.0) ** alpha


def _gather_beams(cache, beam_indices_BxK: Array, batch: int, beams: int):
    """Picks beams in every [B*K, ...] array of `cache`; scalars (the write index) pass."""
    def gather(x):
        if x.ndim == 0:
            return x
        x_BxK = x.reshape(batch, beams, *x.shape[1:])
        index = beam_indices_BxK.reshape(batch, beams, *([1] * (x.ndim - 1)))
        return jnp.take_along_axis(x_BxK, index, axis=1).reshape(x.shape)
    return jax.tree.map(gather, cache)


def beam_search(tokens_to_logits: TokensToLogits, prompt_BxP: Array, cache: dict, *,
                beam_size: int, max_new_tokens: int, eos_id: int, pad_id: int = 0,
                alpha: float = 0.6, prompt_valid_BxP: Array | None = None
                ) -> tuple[Array, Array]:
    """(best sequence [B, max_new_tokens] with pad after its <eos>, its score [B]).

    `cache` holds B * beam_size rows (each batch row repeated beam_size times, e.g. by
    `repeat_for_beams`); `prompt` [B, P] is fed once to start every beam, left-padded where
    `prompt_valid` (1 = token) says so.
    """
    batch, k = prompt_BxP.shape[0], beam_size
    prompt = jnp.repeat(prompt_BxP, k, axis=0)
    valid = None if prompt_valid_BxP is None else jnp.repeat(prompt_valid_BxP, k, axis=0)
    logits, cache = tokens_to_logits(prompt, cache, valid)
    vocab = logits.shape[-1]

    state = {
        "step": jnp.zeros((), jnp.int32),
        "logits": logits[:, -1],  # [B*K, V]
        "cache": cache,
        # all K beams start equal: only the first is live, so the K initial extensions differ
        "alive_logprob": jnp.tile(jnp.array([0.0] + [NEG] * (k - 1)), (batch, 1)),
        "alive_seq": jnp.full((batch, k, max_new_tokens), pad_id, jnp.int32),
        "finished_score": jnp.full((batch, k), NEG),
        "finished_seq": jnp.full((batch, k, max_new_tokens), pad_id, jnp.int32),
    }

    def not_done(s):
        best_possible = s["alive_logprob"][:, 0] / length_penalty(max_new_tokens, alpha)
        worst_finished = s["finished_score"][:, -1]
        can_improve = jnp.any(best_possible > worst_finished)
        return (s["step"] < max_new_tokens) & can_improve

    def step(s):
        i = s["step"]
        logprobs = jax.nn.log_softmax(s["logits"].astype(jnp.float32), axis=-1)
        candidates = (s["alive_logprob"][:, :, None] + logprobs.reshape(batch, k, vocab))
        top_logprob, top_index = jax.lax.top_k(candidates.reshape(batch, k * vocab), 2 * k)
        top_beam, top_token = top_index // vocab, top_index % vocab
        top_seq = jnp.take_along_axis(s["alive_seq"], top_beam[:, :, None], axis=1)
        top_seq = top_seq.at[:, :, i].set(top_token)
        ends = top_token == eos_id
        # As in Hugging Face: an <eos> extension finishes only if it ranks among the K best,
        # so beam size 1 is greedy decoding.
        finishes = ends & (jnp.arange(2 * k) < k)[None, :]

        # finished: the old K and the new ones that end here, best K by normalised score
        new_score = jnp.where(finishes, top_logprob / length_penalty(i + 1, alpha), NEG)
        scores = jnp.concatenate([s["finished_score"], new_score], axis=1)
        seqs = jnp.concatenate([s["finished_seq"], top_seq], axis=1)
        finished_score, keep = jax.lax.top_k(scores, k)
        finished_seq = jnp.take_along_axis(seqs, keep[:, :, None], axis=1)

        # alive: the best K extensions that do not end in <eos>
        alive_candidates = jnp.where(ends, NEG, top_logprob)
        alive_logprob, keep = jax.lax.top_k(alive_candidates, k)
        alive_seq = jnp.take_along_axis(top_seq, keep[:, :, None], axis=1)
        parent = jnp.take_along_axis(top_beam, keep, axis=1)
        cache = _gather_beams(s["cache"], parent, batch, k)
        next_tokens = jnp.take_along_axis(top_token, keep, axis=1).reshape(-1, 1)
        logits, cache = tokens_to_logits(next_tokens, cache, None)
        return {"step": i + 1, "logits": logits[:, -1], "cache": cache,
                "alive_logprob": alive_logprob, "alive_seq": alive_seq,
                "finished_score": finished_score, "finished_seq": finished_seq}

    s = jax.lax.while_loop(not_done, step, state)
    # a row with no finished beam returns its best live one
    any_finished = s["finished_score"][:, 0] > NEG / 2
    alive_score = s["alive_logprob"][:, 0] / length_penalty(max_new_tokens, alpha)
    seq = jnp.where(any_finished[:, None], s["finished_seq"][:, 0], s["alive_seq"][:, 0])
    score = jnp.where(any_finished, s["finished_score"][:, 0], alive_score)
    return seq, score


def repeat_for_beams(tree, beam_size: int):
    """Repeats every non-scalar array's batch rows beam_size times ([B, ...] -> [B*K, ...])."""
    return jax.tree.map(lambda x: x if x.ndim == 0 else jnp.repeat(x, beam_size, axis=0), tree)
