"""Decoder properties: causality, padding and packing isolation, KV cache == full forward."""

from unittest import mock

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import decode_in_steps, jitted
from flax import nnx

from llmjax.models import Decoder, ModelConfig
from llmjax.models.attention import make_attention_mask, segment_positions


def make(**kw):
    defaults = dict(vocab_size=40, num_layers=2, num_heads=2, head_dim=8, emb_dim=16,
                    mlp_dim=32, max_len=32)
    cfg = ModelConfig(**{**defaults, **kw})
    return Decoder(cfg, rngs=nnx.Rngs(0))


def tokens(shape, seed=0):
    return jnp.asarray(np.random.RandomState(seed).randint(4, 40, shape), jnp.int32)


@pytest.mark.parametrize("position", ["learned", "rotary", "latent"])
def test_gradient_of_logits_wrt_later_inputs_is_zero(position):
    model = (make(position_embedding="rotary", kv_lora_rank=8, qk_rope_head_dim=4)
             if position == "latent" else make(position_embedding=position))
    toks = tokens((1, 10))
    original = Decoder._embed

    def logits_at(delta, t):
        with mock.patch.object(Decoder, "_embed",
                               lambda self, *a: original(self, *a) + delta):
            return model(toks)[0, t].sum()

    delta = jnp.zeros((1, 10, 16))
    grad_at = jax.jit(jax.grad(logits_at))  # one program for every t
    for t in (0, 4, 8):
        grad = grad_at(delta, jnp.int32(t))
        norms = jnp.abs(grad[0]).sum(-1)
        assert jnp.all(norms[t + 1:] == 0), f"position {t} depends on later inputs"
        assert jnp.all(norms[: t + 1] > 0), "earlier inputs must matter"


def test_padding_does_not_change_real_positions():
    model = jitted(make())
    toks = tokens((1, 7))
    alone = model(toks)
    padded = jnp.concatenate([toks, jnp.zeros((1, 5), jnp.int32)], axis=1)
    seg = jnp.array([[1] * 7 + [0] * 5])
    np.testing.assert_allclose(model(padded, segment_ids=seg)[:, :7], alone, atol=1e-5)


@pytest.mark.parametrize("position", ["learned", "sinusoidal", "rotary"])
def test_packed_documents_do_not_attend_to_each_other(position):
    model = jitted(make(position_embedding=position))
    a, b = tokens((1, 6), 1), tokens((1, 9), 2)
    packed = jnp.concatenate([a, b], axis=1)
    seg = jnp.array([[1] * 6 + [2] * 9])
    out = model(packed, segment_ids=seg)
    np.testing.assert_allclose(out[:, :6], model(a), atol=1e-5)
    np.testing.assert_allclose(out[:, 6:], model(b), atol=1e-5)


def test_default_positions_restart_per_segment():
    seg = jnp.array([[1, 1, 1, 2, 2, 0, 0]])
    np.testing.assert_array_equal(segment_positions(seg), [[0, 1, 2, 0, 1, 0, 1]])


def test_sliding_window_mask_keeps_the_last_window_keys():
    seg = jnp.array([[1, 1, 1, 1, 1, 2, 2, 0]])
    mask = np.asarray(make_attention_mask(seg, seg, causal=True, window=2)[0, 0])
    expected = np.zeros((8, 8), bool)
    for q, k in [(0, 0), (1, 0), (1, 1), (2, 1), (2, 2), (3, 2), (3, 3), (4, 3), (4, 4),
                 (5, 5), (6, 5), (6, 6)]:  # itself and the one before, in its own document
        expected[q, k] = True
    np.testing.assert_array_equal(mask, expected)


def test_attention_mask_blocks_padding_and_future():
    seg = jnp.array([[1, 1, 0]])
    mask = make_attention_mask(seg, seg, causal=True)[0, 0]
    np.testing.assert_array_equal(mask, [[1, 0, 0], [1, 1, 0], [0, 0, 0]])


@pytest.mark.parametrize("kw", [
    dict(position_embedding="learned"),
    dict(position_embedding="sinusoidal", norm="rmsnorm", gated_mlp=True),
    dict(position_embedding="rotary", use_bias=False, tie_embeddings=False),
    dict(position_embedding="learned", norm_position="post"),
    dict(position_embedding="alibi", embed_norm=True),
    dict(position_embedding="rotary", num_heads=4, num_kv_heads=2, head_dim=4),
    dict(position_embedding="rotary", attention_window=3),
    dict(position_embedding="rotary", qk_norm=True, norm="rmsnorm"),
    # GPT-NeoX: a quarter of each head rotating, attention and MLP side by side
    dict(position_embedding="rotary", rotary_fraction=0.25, parallel_residual=True),
    # Phi: one norm under both, an output bias
    dict(position_embedding="rotary", rotary_fraction=0.5, parallel_residual=True,
         parallel_shared_norm=True, tie_embeddings=False, lm_head_bias=True),
    # OLMo 2: norms on the sublayers' outputs, QK-norm over all heads at once
    dict(position_embedding="rotary", norm_position="output", qk_norm=True,
         qk_norm_scope="all", num_heads=4, num_kv_heads=2, head_dim=4),
    # a mixture of experts on every other layer: dropless, so a token's output does not
    # depend on how many tokens its call holds
    dict(position_embedding="rotary", num_experts=4, moe_every=2, moe_capacity_factor=0.5),
    # DeepSeek's latent attention: decoding attends over cached latents (absorbed weights),
    # the full forward over keys and values expanded from them; with a query bottleneck,
    # a window and YaRN's logit factor
    dict(position_embedding="rotary", kv_lora_rank=12, qk_rope_head_dim=4, v_head_dim=6),
    dict(position_embedding="rotary", kv_lora_rank=12, q_lora_rank=10, qk_rope_head_dim=4,
         attention_window=3, rope_scaling="yarn", rope_scaling_factor=4.0,
         rope_original_max_len=8, rope_mscale_all_dim=1.0),
])
def test_kv_cache_decoding_equals_full_forward(kw):
    model = make(**kw)
    forward, decode = jitted(model), jitted(model, "decode")
    toks = tokens((2, 12))
    full = forward(toks)
    steps = decode_in_steps(decode, toks, model.init_cache(2, 16), 5)
    np.testing.assert_allclose(steps, full, atol=1e-5)


@pytest.mark.parametrize("position", ["rotary", "alibi"])
def test_kv_cache_with_left_padded_prompts(position):
    model = make(position_embedding=position)
    forward, decode = jitted(model), jitted(model, "decode")
    short, long = tokens((1, 3), 3), tokens((1, 6), 4)
    prompts = jnp.concatenate([jnp.concatenate([jnp.zeros((1, 3), jnp.int32), short], 1), long])
    valid = jnp.array([[0, 0, 0, 1, 1, 1], [1] * 6])
    cache = model.init_cache(2, 10)
    logits, cache = decode(prompts, cache, valid)
    np.testing.assert_allclose(logits[0, 3:], forward(short)[0], atol=1e-5)
    np.testing.assert_allclose(logits[1], forward(long)[0], atol=1e-5)
    nxt = tokens((2, 1), 5)
    step, _ = decode(nxt, cache)
    np.testing.assert_allclose(step[0, 0], forward(jnp.concatenate([short, nxt[:1]], 1))[0, -1],
                               atol=1e-5)


@pytest.mark.parametrize("kv_heads", [1, 2])
def test_grouped_query_attention_is_multi_head_with_shared_key_value_heads(kv_heads):
    """num_kv_heads=N: query head h reads key/value head h // (H / N), i.e. the multi-head
    model whose key and value projections repeat each of the N heads H / N times in a row
    (Hugging Face's repeat_kv); the cache holds N heads."""
    kw = dict(num_heads=4, head_dim=4, position_embedding="rotary")
    grouped = make(num_kv_heads=kv_heads, **kw)
    full = make(**kw)

    def repeated(path, x):
        name = "/".join(map(str, path))
        if "/key/" in name or "/value/" in name:  # kernel [D, N, K], bias [N, K]
            assert x.shape[-2] == kv_heads
            return jnp.repeat(x, 4 // kv_heads, axis=x.ndim - 2)
        return x

    nnx.update(full, jax.tree_util.tree_map_with_path(
        lambda p, x: repeated([getattr(k, "key", k) for k in p], x),
        nnx.state(grouped, nnx.Param)))
    toks = tokens((2, 10))
    seg = jnp.array([[1] * 6 + [2] * 4, [1] * 7 + [0] * 3])
    np.testing.assert_allclose(jitted(grouped)(toks, segment_ids=seg),
                               jitted(full)(toks, segment_ids=seg), atol=1e-5)
    assert grouped.init_cache(2, 16)["layers"][0]["k"].shape == (2, 16, kv_heads, 4)


def test_options_change_the_parameter_set():
    def names(model):
        return {"/".join(map(str, p)) for p, _ in nnx.to_flat_state(nnx.state(model))}

    base = names(make())
    assert not any("bias" in n for n in names(make(use_bias=False)))
    assert {"query_norm", "key_norm"} <= {n.split("/")[-2] for n in names(make(qk_norm=True))}
    qkv_only = {n for n in names(make(use_bias=False, qkv_bias=True)) if "bias" in n}
    assert {n.split("/")[-2] for n in qkv_only} == {"query", "key", "value"}
    assert any("lm_head" in n for n in names(make(tie_embeddings=False)))
    assert not any("lm_head" in n for n in base)
    assert any("wg" in n for n in names(make(gated_mlp=True)))
    assert not any("position_embed" in n for n in names(make(position_embedding="rotary")))


def test_dropout_is_active_only_with_an_rng():
    model = jitted(make(dropout_rate=0.5))
    toks = tokens((1, 8))
    np.testing.assert_allclose(model(toks), model(toks))
    assert not np.allclose(model(toks, rng=jax.random.PRNGKey(0)), model(toks))


def test_exact_gelu_is_jaxs_exact_gelu():
    """layers' gelu_exact (through erf, cheaper on XLA:CPU) = jax.nn.gelu(approximate=False)."""
    from llmjax.models.layers import ACTIVATIONS

    x = jnp.linspace(-8.0, 8.0, 4001)
    ours, reference = ACTIVATIONS["gelu_exact"], lambda v: jax.nn.gelu(v, approximate=False)
    np.testing.assert_allclose(ours(x), reference(x), atol=1e-6)
    np.testing.assert_allclose(jax.vmap(jax.grad(ours))(x), jax.vmap(jax.grad(reference))(x),
                               atol=1e-6)


@pytest.mark.parametrize("centered", [True, False])
@pytest.mark.parametrize("with_bias", [True, False])
def test_norm_gradients_equal_autodiffs(centered, with_bias):
    """layers.normalize's hand-written gradient = autodiff of the textbook LayerNorm / RMSNorm."""
    from llmjax.models import layers

    def textbook(x, scale, bias):
        if centered:
            x = x - x.mean(-1, keepdims=True)
        y = x * jax.lax.rsqrt((x * x).mean(-1, keepdims=True) + 1e-5) * scale
        return y if bias is None else y + bias

    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(3, 5, 16)) * 3 + 1, jnp.float32)
    scale = jnp.asarray(rng.normal(size=16), jnp.float32)
    bias = jnp.asarray(rng.normal(size=16), jnp.float32) if with_bias else None
    probe = jnp.asarray(rng.normal(size=(3, 5, 16)), jnp.float32)

    def loss(norm):
        return lambda x, s, b: (norm(x, s, b) * probe).sum()

    ours = jax.grad(loss(lambda x, s, b: layers.normalize(x, s, b, centered, 1e-5)),
                    argnums=(0, 1, 2))(x, scale, bias)
    theirs = jax.grad(loss(textbook), argnums=(0, 1, 2))(x, scale, bias)
    np.testing.assert_allclose(layers.normalize(x, scale, bias, centered, 1e-5),
                               textbook(x, scale, bias), rtol=1e-5, atol=1e-5)
    for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(theirs), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_masked_softmax_gradient_equals_autodiffs():
    """attention.masked_softmax's hand-written gradient = autodiff of where + softmax + cast,
    a fully masked row (a padding query) included: zero gradient at masked positions."""
    from llmjax.models.attention import masked_softmax

    rng = np.random.default_rng(0)
    logits = jnp.asarray(rng.normal(size=(2, 3, 4, 6)) * 3, jnp.float32)
    mask = jnp.asarray(rng.random((2, 1, 4, 6)) < 0.7).at[1, 0, 2].set(False)
    probe = jnp.asarray(rng.normal(size=(2, 3, 4, 6)), jnp.float32)

    def textbook(x, dtype):
        x = jnp.where(mask, x, jnp.finfo(jnp.float32).min)
        return jax.nn.softmax(x, axis=-1).astype(dtype)

    for dtype, tol in ((jnp.float32, 1e-6), (jnp.bfloat16, 0.02)):
        def grad(f, dtype=dtype):
            return jax.grad(lambda x: (f(x, dtype).astype(jnp.float32) * probe).sum())(logits)

        ours = grad(lambda x, d: masked_softmax(x, mask, d))
        np.testing.assert_allclose(masked_softmax(logits, mask, dtype).astype(jnp.float32),
                                   textbook(logits, dtype).astype(jnp.float32), atol=tol)
        np.testing.assert_allclose(ours, grad(textbook), rtol=tol, atol=tol)
        assert not np.any(np.asarray(ours)[~np.broadcast_to(mask, ours.shape)])
