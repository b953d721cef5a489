"""Encoder-decoder properties: cached decoding == full recompute (self- and cross-attention),
decoder causality, source padding invariance, T5 relative-position buckets."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import decode_in_steps, jitted
from flax import nnx

from llmjax.models import EncoderDecoder, ModelConfig
from llmjax.models.relative_position import relative_bucket


def make(**kw):
    defaults = dict(vocab_size=40, num_layers=2, num_heads=2, head_dim=8, emb_dim=16,
                    mlp_dim=32, max_len=32, num_encoder_layers=2, num_decoder_layers=3)
    return EncoderDecoder(ModelConfig(**{**defaults, **kw}), rngs=nnx.Rngs(0))


def tokens(shape, seed=0):
    return jnp.asarray(np.random.RandomState(seed).randint(4, 40, shape), jnp.int32)


@pytest.mark.parametrize("position", [  # T5's relative and rotary by default; the rest slow
    "relative", "rotary", pytest.param("learned", marks=pytest.mark.slow),
    pytest.param("sinusoidal", marks=pytest.mark.slow)])
def test_cached_decoding_equals_full_recompute(position):
    model = make(position_embedding=position)
    decode_step = jitted(model, "decode_step")
    source = tokens((2, 9), 1)
    source_seg = jnp.array([[1] * 9, [1] * 6 + [0] * 3])  # the second source is padded
    target = tokens((2, 7), 2)
    full = jitted(model)(source, target, segment_ids=source_seg)
    encoded = jitted(model, "encode")(source, segment_ids=source_seg)
    cache = model.init_cache(encoded, source_seg, max_len=12)
    # the first three tokens at once, then one at a time
    np.testing.assert_allclose(decode_in_steps(decode_step, target, cache, 3), full,
                               atol=2e-5)


def test_decoder_is_causal_and_reads_the_source():
    model = jitted(make())
    source, target = tokens((1, 8), 1), tokens((1, 6), 2)
    base = model(source, target)
    changed_later = model(source, target.at[0, 4].set(5))
    np.testing.assert_allclose(changed_later[:, :4], base[:, :4], atol=1e-6)
    assert not np.allclose(changed_later[:, 4:], base[:, 4:])
    changed_source = model(source.at[0, 7].set(5), target)
    assert not np.allclose(changed_source[:, 0], base[:, 0]), "position 0 must see the source"


def test_source_padding_changes_nothing():
    model = jitted(make())
    source, target = tokens((1, 5), 1), tokens((1, 6), 2)
    alone = model(source, target)
    padded = jnp.concatenate([source, jnp.full((1, 4), 7, jnp.int32)], axis=1)
    seg = jnp.array([[1] * 5 + [0] * 4])
    np.testing.assert_allclose(model(padded, target, segment_ids=seg), alone, atol=1e-5)


def test_relative_buckets_follow_t5():
    rel = jnp.arange(-200, 201)[None, None, :]
    bi = np.asarray(relative_bucket(rel, bidirectional=True, num_buckets=32,
                                    max_distance=128))[0, 0]
    causal = np.asarray(relative_bucket(rel, bidirectional=False, num_buckets=32,
                                        max_distance=128))[0, 0]
    at = lambda d: d + 200  # noqa: E731
    # bidirectional: 16 buckets per direction, exact below 8, keys after the query offset by 16
    assert bi[at(0)] == 0 and bi[at(-3)] == 3 and bi[at(3)] == 19 and bi[at(-7)] == 7
    assert bi[at(-8)] == 8 and bi[at(-200)] == 15 and bi[at(200)] == 31
    # causal: later keys all share bucket 0; 32 buckets for earlier ones, exact below 16
    assert causal[at(5)] == 0 and causal[at(-15)] == 15 and causal[at(-500 // 4)] <= 31
    assert causal[at(-200)] == 31
    assert np.all(np.diff(bi[: at(0) + 1]) <= 0) and np.all(np.diff(bi[at(1):]) >= 0)


@pytest.mark.slow  # ~10 s: the eager call compiles op by op
def test_jitted_step_is_pure():
    model = make()
    graphdef, params = nnx.split(model)
    source, target = tokens((2, 6), 1), tokens((2, 5), 2)

    @jax.jit
    def forward(p):
        return nnx.merge(graphdef, p)(source, target)

    np.testing.assert_allclose(forward(params), model(source, target), atol=1e-6)
