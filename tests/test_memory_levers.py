"""model.remat and model.scan_layers compute the same function as the plain layer loop:
the same outputs and gradients, dropout included, for all three families; and the remat
policies really drop saved activations."""

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from llmjax.models import Decoder, EncoderDecoder, ModelConfig
from llmjax.models.encoder import Encoder

BASE = ModelConfig(vocab_size=40, num_layers=2, num_heads=2, head_dim=8, emb_dim=16,
                   mlp_dim=32, max_len=32, dropout_rate=0.1, attention_dropout_rate=0.1)
TOKENS = jnp.asarray(np.random.RandomState(0).randint(4, 40, (2, 10)), jnp.int32)
SEG = jnp.array([[1] * 6 + [2] * 4, [1] * 8 + [0] * 2])
RNG = jax.random.PRNGKey(7)


def forward(cls):
    """f(params, cfg) -> logits with dropout on, for a model family."""
    def f(params, graphdef):
        model = nnx.merge(graphdef, params)
        if cls is EncoderDecoder:
            return model(TOKENS, TOKENS[:, :7], segment_ids=SEG, rng=RNG)
        return model(TOKENS, segment_ids=SEG, rng=RNG)
    return f


def loss_and_grads(cls, cfg):
    """(mean squared logits, its gradients): one compile covers forward and backward."""
    graphdef, params = nnx.split(cls(cfg, rngs=nnx.Rngs(0)))
    f = forward(cls)
    return jax.jit(jax.value_and_grad(lambda p: (f(p, graphdef) ** 2).mean()))(params)


FULL, SCAN_DOTS = dict(remat="full"), dict(scan_layers=True, remat="dots")
CASES = [(Decoder, FULL), (Decoder, SCAN_DOTS)] + [
    pytest.param(cls, lever, marks=pytest.mark.slow)
    for cls, lever in [(Decoder, dict(remat="dots")), (Decoder, dict(scan_layers=True)),
                       (Encoder, FULL), (Encoder, SCAN_DOTS), (EncoderDecoder, FULL),
                       (EncoderDecoder, SCAN_DOTS)]]


@pytest.mark.parametrize("cls,lever", CASES, ids=lambda x: getattr(x, "__name__", str(x)))
def test_levers_compute_the_same_function(cls, lever):
    want_loss, want_grads = loss_and_grads(cls, BASE)
    loss, grads = loss_and_grads(cls, dataclasses.replace(BASE, **lever))
    assert float(loss) == pytest.approx(float(want_loss), rel=1e-6)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), grads, want_grads)


def saved_residual_bytes(cfg) -> int:
    """Bytes the forward pass keeps for the backward pass (jax's own residual accounting)."""
    graphdef, params = nnx.split(Decoder(cfg, rngs=nnx.Rngs(0)))
    f = forward(Decoder)
    # traced, not run: the residuals' shapes are all that is counted
    vjp = jax.eval_shape(lambda p: jax.vjp(lambda q: f(q, graphdef), p)[1], params)
    return sum(math.prod(x.shape) * np.dtype(x.dtype).itemsize for x in jax.tree.leaves(vjp))


def test_remat_keeps_fewer_activations():
    cfg = dataclasses.replace(BASE, num_layers=4, dropout_rate=0.0, attention_dropout_rate=0.0)
    none = saved_residual_bytes(cfg)
    dots = saved_residual_bytes(dataclasses.replace(cfg, remat="dots"))
    full = saved_residual_bytes(dataclasses.replace(cfg, remat="full"))
    assert full < dots < none, (full, dots, none)
