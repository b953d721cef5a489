"""model.logits_chunks: the language-model losses computed a chunk of the sequence at a time
give the plain path's sums and gradients (regularizers, soft-capping, untied heads and the
encoder-decoder included), keep fewer bytes live, and train the same under a mesh that splits
the vocabulary."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import tiny_config
from flax import nnx
from test_mesh import family_setup, run_steps

from llmjax import configs, validation
from llmjax.models import Decoder, EncoderDecoder, ModelConfig
from llmjax.objectives.base import Regularizers
from llmjax.objectives.causal_lm import CausalLM
from llmjax.objectives.seq2seq import seq2seq_loss

BASE = ModelConfig(vocab_size=40, num_layers=1, num_heads=2, head_dim=8, emb_dim=16,
                   mlp_dim=32, max_len=32)
REGULARIZED = Regularizers(label_smoothing=0.1, z_loss=1e-3)
CASES = {
    "decoder_tied": (Decoder, dict(logit_softcap=3.0)),
    "decoder_untied": (Decoder, dict(tie_embeddings=False, lm_head_bias=True)),
    "encoder_decoder": (EncoderDecoder, dict(scale_decoder_outputs=True)),
}


def batch(cls, length: int = 10) -> dict:
    rs = np.random.RandomState(0)
    tokens = lambda: jnp.asarray(rs.randint(4, 40, (2, length)), jnp.int32)  # noqa: E731
    b = {"inputs": tokens(), "targets": tokens(),
         "weights": jnp.asarray(rs.rand(2, length) > 0.2, jnp.float32)}
    segments = jnp.array([[1] * 6 + [2] * (length - 6), [1] * (length - 2) + [0] * 2])
    if cls is EncoderDecoder:
        return {**b, "decoder_inputs": tokens(), "input_segments": segments,
                "target_segments": segments}
    return {**b, "segment_ids": segments}


def loss_fn(cls, cfg, batch, regularizers=REGULARIZED):
    """(params, f(params) -> (mean loss, hit count))."""
    graphdef, params = nnx.split(cls(cfg, rngs=nnx.Rngs(0)))
    loss = seq2seq_loss if cls is EncoderDecoder else CausalLM().loss

    def f(p):  # a mean, as the train step differentiates: the gradient's scale is checked
        sums = loss(nnx.merge(graphdef, p), batch, None, regularizers)
        return sums["loss"][0] / sums["loss"][1], sums["token_accuracy"][0]
    return params, f


def with_hits(cls, cfg, b):
    """`b` with half its targets set to the plain model's predictions, so hits are counted."""
    graphdef, params = nnx.split(cls(cfg, rngs=nnx.Rngs(0)))
    model = nnx.merge(graphdef, params)
    logits = (model(b["inputs"], b["decoder_inputs"]) if cls is EncoderDecoder
              else model(b["inputs"]))
    half = np.arange(b["targets"].shape[1]) % 2 == 0
    return {**b, "targets": jnp.where(half, logits.argmax(-1), b["targets"])}


@pytest.mark.parametrize("case", CASES)
# 10 positions: padded chunks of 4 and 3 (4 slow: both pad the last chunk)
@pytest.mark.parametrize("chunks", [3, pytest.param(4, marks=pytest.mark.slow)])
def test_chunked_sums_and_gradients_equal_the_plain_path(case, chunks):
    cls, extra = CASES[case]
    cfg = dataclasses.replace(BASE, **extra)
    b = with_hits(cls, cfg, batch(cls))
    params, plain = loss_fn(cls, cfg, b)
    _, chunked = loss_fn(cls, dataclasses.replace(cfg, logits_chunks=chunks), b)
    (want_loss, want_hits), want_grads = jax.jit(jax.value_and_grad(plain, has_aux=True))(params)
    (loss, hits), grads = jax.jit(jax.value_and_grad(chunked, has_aux=True))(params)
    assert float(want_hits) > 0
    assert float(hits) == float(want_hits)
    assert float(loss) == pytest.approx(float(want_loss), rel=1e-6)
    assert float(jax.jit(chunked)(params)[0]) == pytest.approx(float(want_loss), rel=1e-6)
    jax.tree.map(lambda a, w: np.testing.assert_allclose(a, w, rtol=1e-5, atol=1e-6),
                 grads, want_grads)
    assert any(float(jnp.abs(g).max()) > 0 for g in jax.tree.leaves(nnx.state(grads)))


def compiled_temp_bytes(cfg, b) -> int:
    params, f = loss_fn(Decoder, cfg, b)
    compiled = jax.jit(jax.grad(lambda p: f(p)[0])).lower(params).compile()
    return compiled.memory_analysis().temp_size_in_bytes


def test_chunks_keep_fewer_logits_live():
    cfg = dataclasses.replace(BASE, vocab_size=8192, max_len=64)
    rs = np.random.RandomState(0)
    b = {"inputs": jnp.asarray(rs.randint(0, 8192, (4, 64)), jnp.int32),
         "targets": jnp.asarray(rs.randint(0, 8192, (4, 64)), jnp.int32),
         "segment_ids": jnp.ones((4, 64), jnp.int32), "weights": jnp.ones((4, 64))}
    logits_bytes = 4 * 64 * 8192 * 4
    plain = compiled_temp_bytes(cfg, b)
    chunked = compiled_temp_bytes(dataclasses.replace(cfg, logits_chunks=8), b)
    # the plain step holds the logits and their gradient; 8 chunks hold an eighth of each
    assert plain > 2 * logits_bytes
    assert chunked < plain - logits_bytes, (chunked, plain)


def test_training_on_a_vocabulary_splitting_mesh_equals_one_device(tmp_path):
    c, objective, batches = family_setup(tmp_path, "decoder")
    reference, _, _ = run_steps(c, objective, batches, "single")
    c.model.logits_chunks = 3  # 32 positions: chunks of 11, padded
    losses, _, _ = run_steps(c, objective, batches, "mesh", mesh=(1, 2, 2, 2))
    assert len(set(reference)) == 3
    np.testing.assert_allclose(losses, reference, rtol=1e-5)


def test_the_config_key_reaches_the_model_and_is_checked():
    c = tiny_config(**{"model.logits_chunks": 4, "model.vocab_size": 40})
    assert ModelConfig.from_config(c.model).logits_chunks == 4
    c.model.logits_chunks = 0
    with pytest.raises(configs.ConfigError, match="model.logits_chunks=0"):
        validation.validate(c)
    c = tiny_config(**{"model.logits_chunks": 2, "model.arch": "encoder", "objective": "mlm"})
    with pytest.raises(configs.ConfigError, match="not objective=mlm's: set model.logits_ch"):
        validation.validate(c)
