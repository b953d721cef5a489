"""model.attention_impl: jax.nn.dot_product_attention (xla, and cudnn where a GPU is present)
computes the same function as the project's own einsum attention, for all three families, with
padding, packing, relative and ALiBi biases, and a KV cache."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import jitted
from flax import nnx

from llmjax.models import Decoder, EncoderDecoder, ModelConfig
from llmjax.models.encoder import Encoder

BASE = dict(vocab_size=40, num_layers=2, num_heads=2, head_dim=8, emb_dim=16, mlp_dim=32,
            max_len=32)
ON_GPU = jax.default_backend() == "gpu"


def tokens(shape, seed=0):
    return jnp.asarray(np.random.RandomState(seed).randint(4, 40, shape), jnp.int32)


def pair(cls, impl, **kw):
    """(reference model, same parameters with `impl`)."""
    cfg = ModelConfig(**{**BASE, **kw})
    reference = cls(cfg, rngs=nnx.Rngs(0))
    other = cls(dataclasses.replace(cfg, attention_impl=impl), rngs=nnx.Rngs(0))
    return reference, other


SEG = jnp.array([[1] * 5 + [2] * 4 + [0] * 3, [1] * 12])  # packed + padded, and full


@pytest.mark.parametrize("kw", [
    dict(position_embedding="learned"),
    dict(position_embedding="rotary", num_heads=4, num_kv_heads=2, head_dim=4),  # grouped
    pytest.param(dict(position_embedding="rotary"), marks=pytest.mark.slow),
    pytest.param(dict(position_embedding="alibi", embed_norm=True), marks=pytest.mark.slow)])
def test_decoder_xla_attention_equals_einsum(kw):
    reference, other = pair(Decoder, "xla", **kw)
    forward, forward_xla, decode_xla = jitted(reference), jitted(other), jitted(other, "decode")
    toks = tokens((2, 12))
    np.testing.assert_allclose(forward_xla(toks, segment_ids=SEG), forward(toks, segment_ids=SEG),
                               atol=2e-5)
    # and with a KV cache, one token at a time
    cache = other.init_cache(2, 12)
    steps = []
    for t in range(12):
        logits, cache = decode_xla(toks[:, t:t + 1], cache)
        steps.append(logits)
    np.testing.assert_allclose(jnp.concatenate(steps, axis=1), forward(toks), atol=2e-5)


def test_encoder_xla_attention_equals_einsum():
    reference, other = map(jitted, pair(Encoder, "xla", causal=False, norm_position="post"))
    toks = tokens((2, 12))
    np.testing.assert_allclose(other(toks, segment_ids=SEG), reference(toks, segment_ids=SEG),
                               atol=2e-5)


@pytest.mark.parametrize("position", ["relative",
                                      pytest.param("learned", marks=pytest.mark.slow)])
def test_encoder_decoder_xla_attention_equals_einsum(position):
    reference, other = map(jitted, pair(EncoderDecoder, "xla", position_embedding=position,
                                        num_decoder_layers=3))
    source, target = tokens((2, 12), 1), tokens((2, 7), 2)
    source_seg = jnp.array([[1] * 12, [1] * 8 + [0] * 4])
    np.testing.assert_allclose(other(source, target, segment_ids=source_seg),
                               reference(source, target, segment_ids=source_seg), atol=2e-5)


@pytest.mark.skipif(not ON_GPU, reason="cuDNN attention needs an NVIDIA GPU")
def test_cudnn_attention_matches_einsum_in_bfloat16():
    kw = dict(BASE, num_heads=4, head_dim=64, emb_dim=256, mlp_dim=512, max_len=128,
              dtype="bfloat16")
    reference, other = pair(Decoder, "cudnn", **kw)
    toks = tokens((4, 128))
    seg = jnp.ones((4, 128), jnp.int32).at[1, 100:].set(0)
    got = other(toks, segment_ids=seg).astype(jnp.float32)
    want = reference(toks, segment_ids=seg).astype(jnp.float32)
    real = np.asarray(seg, bool)
    # bfloat16 keeps 8 bits of mantissa: compare as relative error of the logits
    err = np.abs(np.asarray(got - want))[real].max() / np.abs(np.asarray(want))[real].max()
    assert err < 2e-2, f"cudnn vs einsum relative error {err:.3g}"


def test_bfloat16_compute_stays_close_to_float32():
    """bfloat16 matmuls (float32 params, norms, softmax and accumulation) change the logits by
    about bfloat16's precision, not more."""
    reference, other = (jitted(Decoder(ModelConfig(**BASE, dtype=dtype), rngs=nnx.Rngs(0)))
                        for dtype in ("float32", "bfloat16"))
    toks = tokens((2, 12))
    want = np.asarray(reference(toks, segment_ids=SEG))
    got = np.asarray(other(toks, segment_ids=SEG).astype(jnp.float32))
    real = np.asarray(SEG) > 0
    err = np.abs(got - want)[real].max() / np.abs(want)[real].max()
    assert err < 2e-2, f"bfloat16 vs float32 relative error {err:.3g}"
