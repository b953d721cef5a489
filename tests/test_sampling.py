"""Sampling filters: top-k, top-p and min-p keep exactly the tokens they should; the repetition
penalty is Hugging Face's and steers greedy decoding away from what the text holds."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from llmjax.decoding.sampling import filter_logits, penalize_repeats, sample, sample_token


def kept(logits, **kw):
    return np.asarray(filter_logits(jnp.asarray([logits]), **kw)[0] > -1e30)


def test_top_k_keeps_the_k_largest():
    assert kept([1.0, 3.0, 2.0, 0.0], top_k=2).tolist() == [False, True, True, False]


def test_top_p_keeps_the_smallest_set_reaching_p():
    logits = np.log([0.5, 0.3, 0.15, 0.05])
    assert kept(logits, top_p=0.5).tolist() == [True, False, False, False]
    assert kept(logits, top_p=0.7).tolist() == [True, True, False, False]
    assert kept(logits, top_p=0.9).tolist() == [True, True, True, False]


def test_temperature_zero_is_argmax_and_sampling_follows_the_distribution():
    logits = jnp.log(jnp.asarray([[0.7, 0.2, 0.1]]))
    assert int(sample_token(logits, jax.random.PRNGKey(0), 0.0)[0]) == 0
    keys = jax.random.split(jax.random.PRNGKey(0), 4000)
    draws = jax.vmap(lambda k: sample_token(logits, k, 1.0)[0])(keys)
    freq = np.bincount(np.asarray(draws), minlength=3) / 4000
    np.testing.assert_allclose(freq, [0.7, 0.2, 0.1], atol=0.03)
    top1 = jax.vmap(lambda k: sample_token(logits, k, 1.0, top_k=1)[0])(keys[:100])
    assert (np.asarray(top1) == 0).all()


def test_min_p_and_the_repetition_penalty_are_transformers_processors():
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(3, 50)).astype(np.float32) * 3
    ids = rng.integers(0, 50, (3, 7))
    theirs = transformers.RepetitionPenaltyLogitsProcessor(1.7)(
        torch.tensor(ids), torch.tensor(logits)).numpy()
    seen = np.zeros((3, 50), bool)
    seen[np.arange(3)[:, None], ids] = True
    np.testing.assert_allclose(penalize_repeats(jnp.asarray(logits), jnp.asarray(seen), 1.7),
                               theirs, rtol=1e-6)
    kept_theirs = transformers.MinPLogitsWarper(0.1)(torch.tensor(ids), torch.tensor(logits))
    np.testing.assert_array_equal(
        np.asarray(filter_logits(jnp.asarray(logits), min_p=0.1)) > -1e30,
        kept_theirs.numpy() > -1e30)


def test_repetition_penalty_counts_the_prompt_and_the_new_tokens():
    """Fixed logits rank tokens 2 (2.0), 5 (1.8), 3 (1.5): greedy repeats 2; penalised by 2, a
    seen token's logit halves, so decoding moves on from what the prompt's real tokens (not its
    padding) and its own output hold."""
    table = jnp.zeros((6,)).at[2].set(2.0).at[5].set(1.8).at[3].set(1.5)

    def tokens_to_logits(tokens, cache, valid):
        return jnp.broadcast_to(table, (*tokens.shape, 6)), cache

    def greedy(penalty):
        prompts, valid = [[5, 1], [0, 2]], [[0, 1], [1, 1]]  # row 0: 5 is left padding
        out = sample(tokens_to_logits, jnp.asarray(prompts), jnp.asarray(valid), {},
                     jax.random.PRNGKey(0), max_new_tokens=4, eos_id=-1, temperature=0.0,
                     repetition_penalty=penalty)
        return np.asarray(out).tolist()

    assert greedy(1.0) == [[2, 2, 2, 2]] * 2
    assert greedy(2.0) == [[2, 5, 3, 2], [5, 3, 2, 2]]
