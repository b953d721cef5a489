"""model.float32_matmul_outputs=False: the weight matmuls write the compute dtype (the float32
accumulator rounded once) instead of float32. The same function up to that rounding, for all
three families; a no-op in float32; the gradients do not depend on it."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import jitted, tiny_config
from flax import nnx
from test_mesh import family_setup, run_steps

from llmjax.models import Decoder, ModelConfig, layers

TINY = dict(vocab_size=40, num_layers=2, num_heads=2, head_dim=8, emb_dim=16, mlp_dim=32,
            max_len=32)


def decoder_logits(dtype: str, float32_outputs: bool) -> np.ndarray:
    cfg = ModelConfig(**TINY, dtype=dtype, float32_matmul_outputs=float32_outputs)
    tokens = jnp.asarray(np.random.RandomState(0).randint(0, 40, (2, 12)), jnp.int32)
    return np.asarray(jitted(Decoder(cfg, rngs=nnx.Rngs(0)))(tokens))


def is_bfloat16(x: np.ndarray) -> bool:
    return bool(np.all(np.asarray(jnp.asarray(x).astype(jnp.bfloat16), np.float32) == x))


def test_bfloat16_logits_are_the_rounded_matmul_and_close_to_float32_outputs():
    rounded, unrounded = decoder_logits("bfloat16", False), decoder_logits("bfloat16", True)
    assert rounded.dtype == unrounded.dtype == np.float32  # the loss reads float32 either way
    assert is_bfloat16(rounded) and not is_bfloat16(unrounded)
    # logits ~0.3 in size here: a few bfloat16 ulps apart
    np.testing.assert_allclose(rounded, unrounded, atol=8e-3)
    assert np.abs(rounded - unrounded).max() > 0


def test_float32_compute_ignores_the_switch():
    np.testing.assert_array_equal(decoder_logits("float32", False),
                                  decoder_logits("float32", True))


def test_matmul_result_dtype_rounds_the_result_and_keeps_the_gradients():
    rng = np.random.default_rng(0)
    a, b = (jnp.asarray(rng.normal(size=s), jnp.bfloat16) for s in ((3, 5, 7), (3, 7, 4)))
    g = jnp.asarray(rng.normal(size=(3, 5, 4)), jnp.float32)
    full, full_vjp = jax.vjp(layers.batched_matmul, a, b)
    rounded, rounded_vjp = jax.vjp(
        lambda a, b: layers.batched_matmul(a, b, None, jnp.bfloat16), a, b)
    assert (full.dtype, rounded.dtype) == (jnp.float32, jnp.bfloat16)
    # XLA:CPU's bfloat16 GEMMs write float32 and the rounding follows; other backends write
    # bfloat16 straight from the GEMM (and the MFU benchmark's reference matmul does the same)
    on_cpu = jax.default_backend() == "cpu"
    assert layers.written_dtype(jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.bfloat16)) == (
        jnp.float32 if on_cpu else jnp.bfloat16)
    # one rounding of the float32 accumulator (the backends' bfloat16 GEMMs accumulate in
    # float32; XLA:CPU's writes float32, cast after)
    np.testing.assert_allclose(np.asarray(rounded, np.float32),
                               np.asarray(full.astype(jnp.bfloat16), np.float32), rtol=1e-2)
    for x, y in zip(rounded_vjp(g.astype(jnp.bfloat16)), full_vjp(g), strict=True):
        np.testing.assert_array_equal(np.asarray(x, np.float32), np.asarray(y, np.float32))


@pytest.mark.parametrize("family", [
    "decoder", pytest.param("encoder", marks=pytest.mark.slow),
    pytest.param("encoder_decoder", marks=pytest.mark.slow)])
def test_training_losses_match_float32_outputs(tmp_path, family):
    c, objective, batches = family_setup(tmp_path, family, **{"model.dtype": "bfloat16"})
    reference, _, _ = run_steps(c, objective, batches, "single")
    c.model.float32_matmul_outputs = False
    rounded, _, _ = run_steps(c, objective, batches, "single")
    assert len(set(reference)) == 3
    np.testing.assert_allclose(rounded, reference, atol=0.02)  # a few bfloat16 ulps of ~4


def test_the_config_key_reaches_the_model():
    c = tiny_config(**{"model.dtype": "bfloat16", "model.vocab_size": 40})
    assert ModelConfig.from_config(c.model).matmul_result_dtype == jnp.float32
    c.model.float32_matmul_outputs = False
    assert ModelConfig.from_config(c.model).matmul_result_dtype == jnp.bfloat16
