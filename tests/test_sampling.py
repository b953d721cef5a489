"""Sampling filters: top-k and top-p keep exactly the tokens they should."""

import jax
import jax.numpy as jnp
import numpy as np

from llmjax.decoding.sampling import filter_logits, sample_token


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
