"""model.attention_impl=blockwise: attention over tiles of queries x keys with an online softmax
(FlashAttention's algorithm in JAX), every query against each key block or a causal mask's lower
triangle of tiles, computes the einsum path's function and gradients, with every mask,
grouped-query heads, soft-capping, biases and dropout; models built on it train, decode and shard as
the einsum path's do; and it holds a fraction of the einsum path's temporaries."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import decode_in_steps, jitted, tiny_config
from flax import nnx
from test_mesh import family_setup, run_steps, step_memory

from llmjax.models import Decoder, EncoderDecoder, ModelConfig, attention
from llmjax.models.attention import grouped_attention, make_attention_mask
from llmjax.models.blockwise_attention import blockwise_attention, tile_keep

# two packed documents and padding, and a full row; 37 keys: the last block of 8 is padded
SEG = jnp.array([[1] * 20 + [2] * 10 + [0] * 7, [1] * 37])
REAL = np.asarray(SEG != 0)[:, :, None, None]


def inputs(dtype, heads=4, kv_heads=2, seed=0):
    ks = jax.random.split(jax.random.PRNGKey(seed), 5)
    b, length = SEG.shape
    q = jax.random.normal(ks[0], (b, length, heads, 8), dtype)
    k = jax.random.normal(ks[1], (b, length, kv_heads, 8), dtype)
    v = jax.random.normal(ks[2], (b, length, kv_heads, 6), dtype)
    bias = jax.random.normal(ks[3], (1, heads, length, length))
    weights = jax.random.normal(ks[4], (b, length, heads, 6))
    return q, k, v, bias, weights


def loss_and_grads(attention, q, k, v, bias, weights):
    """A weighted sum of the real queries' outputs and its gradients in q, k, v and the bias."""
    def loss(q, k, v, bias):
        out = attention(q, k, v, bias).astype(jnp.float32)
        return (jnp.where(REAL, out, 0.0) * weights).sum()
    return jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2, 3)))(q, k, v, bias)


@pytest.mark.parametrize("softcap,window,tiles", [
    (None, None, "key blocks"), (None, None, "causal tiles"), (5.0, 9, "causal tiles")])
def test_blockwise_attention_equals_the_einsum_path_with_its_gradients(softcap, window, tiles):
    """Causal, packed and padded rows (and a sliding window), 4 query heads over 2 key heads,
    a trained bias; 8-key blocks over 37 keys, against every query at once or in the lower
    triangle of 8 x 8 tiles (with the window: the two diagonals it reaches). The bias gradient
    is the scores' gradient."""
    mask = make_attention_mask(SEG, SEG, causal=True, window=window)
    q, k, v, bias, weights = inputs(jnp.float32)
    want = loss_and_grads(lambda q, k, v, b: grouped_attention(
        q, k, v, mask, b, softcap=softcap, dropout_rate=0.0, rng=None), q, k, v, bias, weights)
    got = loss_and_grads(lambda q, k, v, b: blockwise_attention(
        q, k, v, mask, b, softcap=softcap, block_size=8, causal=tiles == "causal tiles",
        window=window if tiles == "causal tiles" else None), q, k, v, bias, weights)
    np.testing.assert_allclose(got[0], want[0], rtol=1e-5)
    for name, g, w in zip("qkvb", got[1], want[1], strict=True):
        np.testing.assert_allclose(g, w, atol=2e-5, err_msg=f"d{name}")
    assert np.abs(np.asarray(got[1][3])).max() > 0.1  # the bias gradient is not trivially 0


@pytest.mark.parametrize("tiles", ["key blocks", "causal tiles"])
def test_attention_dropout_drops_each_tiles_probabilities_forward_and_backward(tiles):
    """With a dropout key, blockwise attention computes dropout(softmax(scores)) v for the keep
    mask its tiles draw (`tile_keep`, assembled here into a whole one): outputs and gradients
    equal that dense computation's."""
    rate, rng = 0.3, jax.random.PRNGKey(9)
    mask = make_attention_mask(SEG, SEG, causal=True)
    q, k, v, bias, weights = inputs(jnp.float32)
    b, length, heads, kv_heads = *q.shape[:3], k.shape[2]
    rows = 8 * (heads // kv_heads)  # a tile's rows: 8 queries x G heads, query-major
    blocks = 5  # 37 keys (and, for causal tiles, queries) padded to 40
    if tiles == "causal tiles":
        keep = jnp.concatenate([jnp.concatenate([
            tile_keep(rng, i, j, (b, kv_heads, rows, 8), rate) for j in range(blocks)], -1)
            for i in range(blocks)], 2)
    else:
        keep = jnp.concatenate([tile_keep(rng, 0, j, (b, kv_heads, length * rows // 8, 8), rate)
                                for j in range(blocks)], -1)
    g = heads // kv_heads
    keep = keep[:, :, :length * g, :length].reshape(b, kv_heads, length, g, length)

    def dense(q, k, v, b):  # the einsum path's scores, then dropout with `keep`
        logits = attention._scores(q, k) + b.reshape(1, kv_heads, g, length, length).transpose(
            0, 1, 3, 2, 4)
        probs = attention.masked_softmax(logits, mask[:, :, :, None, :], jnp.float32)
        return attention._mix(jnp.where(keep, probs / (1 - rate), 0.0), v)

    want = loss_and_grads(dense, q, k, v, bias, weights)
    got = loss_and_grads(lambda q, k, v, b: blockwise_attention(
        q, k, v, mask, b, softcap=None, block_size=8, causal=tiles == "causal tiles",
        dropout_rate=rate, rng=rng), q, k, v, bias, weights)
    np.testing.assert_allclose(got[0], want[0], rtol=1e-5)
    for name, g_, w in zip("qkvb", got[1], want[1], strict=True):
        np.testing.assert_allclose(g_, w, atol=2e-5, err_msg=f"d{name}")
    no_dropout = loss_and_grads(lambda q, k, v, b: blockwise_attention(
        q, k, v, mask, b, softcap=None, block_size=8), q, k, v, bias, weights)
    assert abs(float(no_dropout[0]) - float(got[0])) > 1e-3  # the dropout did something


def test_bfloat16_blockwise_attention_stays_within_bfloat16s_precision():
    mask = make_attention_mask(SEG, SEG, causal=False)
    q, k, v, _, _ = inputs(jnp.bfloat16)
    want = grouped_attention(*[x.astype(jnp.float32) for x in (q, k, v)], mask, None,
                             softcap=None, dropout_rate=0.0, rng=None)
    got = blockwise_attention(q, k, v, mask, None, softcap=None, block_size=16)
    assert got.dtype == jnp.bfloat16
    err = np.abs(np.asarray(got.astype(jnp.float32) - want))[np.broadcast_to(REAL, want.shape)]
    assert err.max() < 3e-2, err.max()


MODEL = ModelConfig(vocab_size=40, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=8,
                    emb_dim=32, mlp_dim=32, max_len=40)
TOKENS = jnp.asarray(np.random.RandomState(0).randint(4, 40, SEG.shape), jnp.int32)


def model_loss_and_grads(cls, cfg, rng=None):
    """Mean squared logits of the real tokens and the gradients of every parameter (with
    dropout drawn from `rng`, if given)."""
    graphdef, params = nnx.split(cls(cfg, rngs=nnx.Rngs(0)))

    def loss(params):
        model = nnx.merge(graphdef, params)
        if cls is EncoderDecoder:  # padded sources; targets attend causally and across
            logits = model(TOKENS, TOKENS[:, :13], segment_ids=jnp.minimum(SEG, 1), rng=rng)
            return (logits ** 2).mean()
        logits = model(TOKENS, segment_ids=SEG, rng=rng)
        return (jnp.where(REAL[..., 0], logits, 0.0) ** 2).mean()
    return jax.jit(jax.value_and_grad(loss))(params)


@pytest.mark.parametrize("cls,options", [
    (EncoderDecoder, dict(position_embedding="relative")),  # a trained bias, cross-attention
    (Decoder, dict(position_embedding="alibi", attention_softcap=20.0)),
    # windowed and global layers, each block rematerialised (the window's tiles skipped)
    (Decoder, dict(position_embedding="rotary", attention_window=6, global_attention_every=2,
                   remat="full")),
    pytest.param(Decoder, dict(position_embedding="rotary", attention_window=6,
                               scan_layers=True), marks=pytest.mark.slow),
    pytest.param(Decoder, dict(position_embedding="rotary", kv_lora_rank=16, qk_rope_head_dim=4,
                               num_kv_heads=None, attention_window=6), marks=pytest.mark.slow)],
    ids=["encoder_decoder_relative", "decoder_alibi_softcap", "windows_remat", "windows_scan",
         "latent_window"])
def test_models_on_blockwise_attention_compute_the_same_function(cls, options):
    cfg = dataclasses.replace(MODEL, **options)
    want_loss, want_grads = model_loss_and_grads(cls, cfg)
    loss, grads = model_loss_and_grads(
        cls, dataclasses.replace(cfg, attention_impl="blockwise", attention_block_size=8))
    assert float(loss) == pytest.approx(float(want_loss), rel=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5), grads, want_grads)


def test_attention_dropout_is_drawn_again_alike_when_blocks_are_rematerialised():
    """A decoder with attention dropout on blockwise attention: remat=full recomputes each
    block in the backward pass, tile bits included, so its loss and gradients are the plain
    loop's; and the dropout changes the loss."""
    cfg = dataclasses.replace(MODEL, attention_impl="blockwise", attention_block_size=8,
                              attention_dropout_rate=0.2, position_embedding="rotary")
    rng = jax.random.PRNGKey(3)
    want_loss, want_grads = model_loss_and_grads(Decoder, cfg, rng)
    loss, grads = model_loss_and_grads(Decoder, dataclasses.replace(cfg, remat="full"), rng)
    assert float(loss) == pytest.approx(float(want_loss), rel=1e-6)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), grads, want_grads)
    assert float(model_loss_and_grads(Decoder, cfg)[0]) != pytest.approx(float(loss), rel=1e-4)


def test_decoding_over_a_cache_longer_than_a_block_gives_the_full_forwards_logits():
    """A KV cache of 37 slots is read 8 slots at a time: a 10-token prompt, then one token at
    a time, gives the einsum forward pass's logits (a windowed layer among them)."""
    cfg = dataclasses.replace(MODEL, position_embedding="rotary", attention_window=6,
                              global_attention_every=2)
    blockwise = dataclasses.replace(cfg, attention_impl="blockwise", attention_block_size=8)
    model = Decoder(blockwise, rngs=nnx.Rngs(0))
    want = jitted(Decoder(cfg, rngs=nnx.Rngs(0)))(TOKENS)
    got = decode_in_steps(jitted(model, "decode"), TOKENS, model.init_cache(2, 37), first=10)
    np.testing.assert_allclose(got, want, atol=2e-5)


def test_a_long_sequences_step_holds_a_fraction_of_the_einsum_paths_temporaries():
    """At 2048 tokens the einsum path's [B, H, L, L] scores and probabilities dominate a
    step's temporaries; blocks of 128 keys hold a sixteenth of a row's scores at a time."""
    long = {"model.vocab_size": 64, "model.max_len": 2048, "seq_len": 2048, "batch_size": 1,
            "model.position_embedding": "rotary"}
    einsum = step_memory(tiny_config(**long)).temp_size_in_bytes
    blockwise = step_memory(tiny_config(**long, **{
        "model.attention_impl": "blockwise", "model.attention_block_size": 128})).temp_size_in_bytes
    scores = 4 * 2048 * 2048 * 4  # one float32 [1, H, L, L]
    print(f"temporaries: einsum {einsum / 2**20:.1f} MiB, blockwise {blockwise / 2**20:.1f} MiB")
    assert einsum > 2 * scores
    assert blockwise < einsum / 4


@pytest.mark.slow  # the suite's time budget: both tilings' functions are checked above
def test_blockwise_attention_on_a_sequence_mesh_trains_as_one_device_does(tmp_path):
    """Context parallelism's queries split 8 ways, each device scanning the gathered keys a
    block at a time (4 blocks of 16), beside the einsum path on one device: the same losses."""
    c, objective, batches = family_setup(tmp_path, "decoder", **{
        "model.num_heads": 4, "model.num_kv_heads": 2, "model.position_embedding": "rotary",
        "seq_len": 64})
    single, _, _ = run_steps(c, objective, batches, "single")
    assert len(set(single)) == 3
    c.model.attention_impl, c.model.attention_block_size = "blockwise", 16
    losses, _, _ = run_steps(c, objective, batches, "mesh", (1, 1, 8, 1))
    np.testing.assert_allclose(losses, single, atol=1e-5)
