"""Encoder and heads: bidirectional attention, padding invariance, tied MLM output."""

import jax
import jax.numpy as jnp
import numpy as np
from conftest import jitted
from flax import nnx

from llmjax.models import ModelConfig
from llmjax.models.encoder import Encoder
from llmjax.models.heads import ClassifierHead, MLMHead, Pooler

CFG = ModelConfig(vocab_size=40, num_layers=2, num_heads=2, head_dim=8, emb_dim=16, mlp_dim=32,
                  max_len=32, norm_position="post", activation="gelu_exact")


def tokens(shape, seed=0):
    return jnp.asarray(np.random.RandomState(seed).randint(4, 40, shape), jnp.int32)


def test_every_position_sees_every_other():
    enc = Encoder(CFG, rngs=nnx.Rngs(0))
    toks = tokens((1, 8))
    g, p = nnx.split(enc)
    # a random readout: a plain sum of a LayerNorm's output (uniform scale) has gradient 0
    readout = jnp.asarray(np.random.RandomState(1).normal(size=CFG.emb_dim), jnp.float32)

    def first_output(table):
        p2 = jax.tree.map(lambda x: x, p)
        p2["embed"]["embedding"][...] = table
        return (nnx.merge(g, p2)(toks)[0, 0] * readout).sum()

    grad = jax.jit(jax.grad(first_output))(p["embed"]["embedding"][...])
    used = np.abs(np.asarray(grad)).sum(-1) > 0
    assert used[np.asarray(toks[0])].all(), "position 0 depends on every token, later ones too"


def test_padding_does_not_change_real_positions():
    enc = jitted(Encoder(CFG, rngs=nnx.Rngs(0)))
    toks = tokens((1, 6))
    types = jnp.array([[0, 0, 0, 1, 1, 1]])
    alone = enc(toks, token_types=types)
    padded = jnp.concatenate([toks, jnp.zeros((1, 4), jnp.int32)], axis=1)
    out = enc(padded, token_types=jnp.concatenate([types, jnp.zeros((1, 4), jnp.int32)], 1))
    np.testing.assert_allclose(out[:, :6], alone, atol=1e-5)


def test_token_types_change_the_output():
    enc = jitted(Encoder(CFG, rngs=nnx.Rngs(0)))
    toks = tokens((1, 6))
    a = enc(toks, token_types=jnp.zeros((1, 6), jnp.int32))
    b = enc(toks, token_types=jnp.ones((1, 6), jnp.int32))
    assert not np.allclose(a, b)


def test_heads_shapes_and_tied_mlm_output():
    rngs = nnx.Rngs(0)
    enc, mlm = Encoder(CFG, rngs=rngs), MLMHead(CFG, rngs=rngs)
    pooler, nsp = Pooler(CFG, rngs=rngs), ClassifierHead(CFG, 2, rngs=rngs)
    h = enc(tokens((3, 7)))
    logits = mlm(h, enc.embed)
    assert logits.shape == (3, 7, 40) and logits.dtype == jnp.float32
    assert nsp(pooler(h)).shape == (3, 2)
    names = {"/".join(map(str, k)) for k, _ in nnx.to_flat_state(nnx.state(mlm))}
    assert not any("kernel" in n and "transform" not in n for n in names), \
        "the MLM output matrix is the encoder's embedding, not a parameter of its own"
