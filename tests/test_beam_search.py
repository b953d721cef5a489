"""Beam search: finds the best sequence where greedy does not, equals greedy at beam size 1,
and matches an exhaustive search on a small random language."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from llmjax.decoding.beam_search import beam_search, length_penalty, repeat_for_beams
from llmjax.decoding.sampling import sample
from llmjax.models import EncoderDecoder, ModelConfig

PAD, EOS, A, B, C = range(5)


def table_model(probs_by_last: dict[int, dict[int, float]], vocab: int = 5):
    """tokens_to_logits for a bigram language: the next token depends on the last one."""
    table = np.full((vocab, vocab), 1e-6)
    for last, row in probs_by_last.items():
        for token, p in row.items():
            table[last, token] = p
    log_table = jnp.log(jnp.asarray(table / table.sum(1, keepdims=True), jnp.float32))

    def tokens_to_logits(tokens_BxT, cache, valid=None):
        del valid
        return log_table[tokens_BxT], {"last": tokens_BxT[:, -1], "steps": cache["steps"] + 1}

    return tokens_to_logits


def test_beam_search_finds_the_best_sequence_greedy_misses():
    # greedy takes A (0.6) and then <eos> (0.34): 0.204; the best is B <eos>: 0.4 * 0.9 = 0.36
    model = table_model({PAD: {A: 0.6, B: 0.4}, A: {EOS: 0.34, B: 0.33, C: 0.33},
                         B: {EOS: 0.9, C: 0.1}, C: {EOS: 1.0}, EOS: {EOS: 1.0}})
    prompt = jnp.zeros((1, 1), jnp.int32)
    cache = {"last": jnp.zeros((1,), jnp.int32), "steps": jnp.zeros((), jnp.int32)}
    greedy = sample(model, prompt, jnp.ones_like(prompt), cache, jax.random.PRNGKey(0),
                    max_new_tokens=4, eos_id=EOS, temperature=0.0)
    assert greedy[0].tolist() == [A, EOS, PAD, PAD]
    seq, score = beam_search(model, prompt, repeat_for_beams(cache, 2), beam_size=2,
                             max_new_tokens=4, eos_id=EOS, alpha=0.0)
    assert seq[0].tolist() == [B, EOS, PAD, PAD]
    np.testing.assert_allclose(float(score[0]), np.log(0.36), atol=1e-4)


def test_beam_size_one_equals_greedy_on_a_model():
    cfg = ModelConfig(vocab_size=30, num_layers=2, num_heads=2, head_dim=8, emb_dim=16,
                      mlp_dim=32, max_len=16, position_embedding="relative")
    model = EncoderDecoder(cfg, rngs=nnx.Rngs(3))
    source = jnp.asarray(np.random.RandomState(0).randint(5, 30, (4, 7)), jnp.int32)
    seg = jnp.ones_like(source)
    prompt = jnp.full((4, 1), 1, jnp.int32)

    @jax.jit  # one program each (run eagerly, every op would compile on its own)
    def greedy_and_beam(source, seg):
        cache = model.init_cache(model.encode(source, segment_ids=seg), seg, 12)
        greedy = sample(model.decode_step, prompt, jnp.ones_like(prompt), cache,
                        jax.random.PRNGKey(0), max_new_tokens=10, eos_id=7, temperature=0.0)
        beam, _ = beam_search(model.decode_step, prompt, repeat_for_beams(cache, 1),
                              beam_size=1, max_new_tokens=10, eos_id=7, alpha=0.0)
        return greedy, beam

    greedy, beam = greedy_and_beam(source, seg)  # rows that reach <eos> (7) and rows that do not
    np.testing.assert_array_equal(beam, greedy)


def test_wide_beam_matches_exhaustive_search():
    rng = np.random.RandomState(1)
    vocab, length, alpha = 4, 3, 0.6  # tokens 1..3, 1 = <eos>
    probs = {last: dict(enumerate(rng.dirichlet([0.5] * vocab))) for last in range(vocab)}
    model = table_model(probs, vocab)
    table = np.zeros((vocab, vocab))
    for last, row in probs.items():
        for t, p in row.items():
            table[last, t] = max(p, 1e-6)
    table /= table.sum(1, keepdims=True)
    best, best_score = None, -np.inf
    for n in range(1, length + 1):  # sequences of n tokens, <eos> exactly at the end
        for seq in itertools.product(range(vocab), repeat=n):
            if seq[-1] != 1 or 1 in seq[:-1]:
                continue
            logp = sum(np.log(table[prev, t]) for prev, t in zip((0, *seq[:-1]), seq,
                                                                 strict=True))
            score = logp / float(length_penalty(n, alpha))
            if score > best_score:
                best, best_score = seq, score
    prompt = jnp.zeros((1, 1), jnp.int32)
    # a beam as wide as the number of sequences makes the search exact
    beams = vocab**length
    cache = {"last": jnp.zeros((beams,), jnp.int32), "steps": jnp.zeros((), jnp.int32)}
    seq, score = beam_search(model, prompt, cache, beam_size=beams, max_new_tokens=length,
                             eos_id=1, alpha=alpha)
    assert seq[0].tolist()[: len(best)] == list(best)
    np.testing.assert_allclose(float(score[0]), best_score, atol=1e-4)


@pytest.mark.slow
def test_decoder_beam_size_one_equals_greedy():
    from llmjax.models import Decoder

    cfg = ModelConfig(vocab_size=30, num_layers=2, num_heads=2, head_dim=8, emb_dim=16,
                      mlp_dim=32, max_len=24, position_embedding="rotary")
    model = Decoder(cfg, rngs=nnx.Rngs(5))
    prompt = jnp.asarray(np.random.RandomState(1).randint(5, 30, (2, 5)), jnp.int32)
    greedy = sample(model.decode, prompt, jnp.ones_like(prompt), model.init_cache(2, 20),
                    jax.random.PRNGKey(0), max_new_tokens=12, eos_id=9, temperature=0.0)
    beam, _ = beam_search(model.decode, prompt, model.init_cache(2, 20), beam_size=1,
                          max_new_tokens=12, eos_id=9, alpha=0.0)
    np.testing.assert_array_equal(beam, greedy)
    wide, _ = beam_search(model.decode, prompt, model.init_cache(2 * 3, 20), beam_size=3,
                          max_new_tokens=12, eos_id=9, alpha=0.6)
    assert wide.shape == (2, 12)
