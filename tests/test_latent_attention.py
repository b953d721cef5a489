"""Multi-head latent attention (models/latent_attention.py): the module computes DeepSeek's
formula (a float64 per-head reference), decoding over cached latents equals the full forward
with LoRA adapters on the up-projections too, the cache holds r + p numbers per token, and the
settings it cannot take are refused by name."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from conftest import decode_in_steps, jitted, tiny_config
from flax import nnx

from llmjax import configs, sharding, validation
from llmjax.models import Decoder, ModelConfig
from llmjax.models.latent_attention import LatentAttention, attention_scale
from llmjax.models.lora import attach

D, H, N, P, R, V = 32, 4, 8, 4, 12, 6


def config(**kw) -> ModelConfig:
    base = dict(vocab_size=40, num_layers=2, num_heads=H, head_dim=N, emb_dim=D, mlp_dim=64,
                max_len=32, position_embedding="rotary", norm="rmsnorm", use_bias=False,
                kv_lora_rank=R, qk_rope_head_dim=P, v_head_dim=V)
    return ModelConfig(**{**base, **kw})


def rms(x, scale, eps=1e-6):  # the latents' norms: DeepSeek's epsilon
    return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * scale


def rope(x_LxK, positions, base=10000.0):
    """Rotate-half RoPE of x [L, K] at `positions`, in float64."""
    half = x_LxK.shape[-1] // 2
    inv_freq = base ** (-np.arange(half) / half)
    angle = positions[:, None] * inv_freq
    x1, x2 = x_LxK[:, :half], x_LxK[:, half:]
    return np.concatenate([x1 * np.cos(angle) - x2 * np.sin(angle),
                           x2 * np.cos(angle) + x1 * np.sin(angle)], -1)


def reference(params: dict, x_LxD: np.ndarray, q_lora: bool) -> np.ndarray:
    """DeepSeek-V2's attention for one causal sequence, one head at a time, in float64."""
    p = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
    length = x_LxD.shape[0]
    pos = np.arange(length, dtype=np.float64)
    h = rms(x_LxD @ p["query_down"]["kernel"], p["query_norm"]["scale"]) if q_lora else x_LxD
    q = np.einsum("ld,dhk->lhk", h, p["query"]["kernel"])  # [L, H, N + P]
    kv = x_LxD @ p["kv_down"]["kernel"]  # [L, R + P]
    c = rms(kv[:, :R], p["kv_norm"]["scale"])
    k_rope = rope(kv[:, R:], pos)
    out = np.zeros((length, D))
    for head in range(H):
        q_h = np.concatenate([q[:, head, :N], rope(q[:, head, N:], pos)], -1)
        k_h = np.concatenate([c @ p["key_up"]["kernel"][:, head], k_rope], -1)
        v_h = c @ p["value_up"]["kernel"][:, head]
        logits = q_h @ k_h.T / np.sqrt(N + P)
        logits = np.where(np.tril(np.ones((length, length), bool)), logits, -np.inf)
        probs = np.exp(logits - logits.max(-1, keepdims=True))
        probs /= probs.sum(-1, keepdims=True)
        out += probs @ v_h @ p["out"]["kernel"][head]
    return out


@pytest.mark.parametrize("q_lora", [False, True])
def test_the_module_is_deepseeks_attention_head_by_head(q_lora):
    cfg = config(q_lora_rank=10 if q_lora else 0)
    attention = LatentAttention(cfg, rngs=nnx.Rngs(1))
    # norm scales away from 1, so a missing or misplaced norm shows
    for norm in ("kv_norm", "query_norm") if q_lora else ("kv_norm",):
        scale = getattr(attention, norm).scale
        scale[...] = 1.0 + jax.random.uniform(jax.random.key(2), scale.shape)
    x = np.random.RandomState(0).randn(7, D)
    seg = jnp.ones((1, 7), jnp.int32)
    mask = jnp.tril(jnp.ones((7, 7), bool))[None, None]
    ours = jax.jit(lambda x: attention(x, mask, positions_BxQ=jnp.arange(7)[None] * seg)[0])(
        jnp.asarray(x[None], jnp.float32))
    params = nnx.state(attention, nnx.Param).to_pure_dict()
    np.testing.assert_allclose(ours[0], reference(params, x, q_lora), rtol=2e-4, atol=2e-5)


def test_decoding_with_lora_adapters_on_the_up_projections_equals_the_full_forward():
    """Decoding folds key_up and value_up into the queries and output: adapters on them must
    fold in too."""
    model = Decoder(config(), rngs=nnx.Rngs(0))
    attach(model, ml_collections.ConfigDict({"rank": 2, "alpha": 4.0,
                                              "targets": "key_up|value_up"}), seed=0)
    for dense in (layer.attention.key_up for layer in model.layers):
        dense.lora_b[...] = 0.1 * jax.random.normal(jax.random.key(3), dense.lora_b.shape)
    for dense in (layer.attention.value_up for layer in model.layers):
        dense.lora_b[...] = 0.1 * jax.random.normal(jax.random.key(4), dense.lora_b.shape)
    toks = jnp.asarray(np.random.RandomState(0).randint(0, 40, (2, 9)), jnp.int32)
    full = jitted(model)(toks)
    steps = decode_in_steps(jitted(model, "decode"), toks, model.init_cache(2, 12), 4)
    np.testing.assert_allclose(steps, full, atol=2e-5)


def test_the_cache_holds_the_latent_and_the_rotary_key_per_token():
    cache = Decoder(config(), rngs=nnx.Rngs(0)).init_cache(3, 16)
    assert [set(layer) for layer in cache["layers"]] == [{"latent"}] * 2
    assert cache["layers"][0]["latent"].shape == (3, 16, 1, R + P)


def test_yarns_logit_factor_is_deepseeks_mscale_squared():
    cfg = config(rope_scaling="yarn", rope_scaling_factor=40.0, rope_mscale_all_dim=1.0)
    mscale = 0.1 * np.log(40.0) + 1.0
    assert attention_scale(cfg) == pytest.approx((N + P) ** -0.5 * mscale**2)
    assert attention_scale(config()) == pytest.approx((N + P) ** -0.5)


def test_up_projections_split_heads_over_the_tensor_axis():
    assert sharding.param_logical_axes("layers/0/attention/key_up/kernel", 3) == (
        None, "heads", "kv")
    assert sharding.param_logical_axes("layers/0/attention/kv_down/kernel", 2) == (
        "embed", None)


@pytest.mark.parametrize("overrides, expected", [
    ({"model.q_lora_rank": 8}, "set model.kv_lora_rank too"),
    ({"model.kv_lora_rank": 8}, "set model.position_embedding=rotary, not 'learned'"),
    ({"model.kv_lora_rank": 8, "model.position_embedding": "rotary",
      "model.qk_rope_head_dim": 3}, "qk_rope_head_dim=3: rotary positions rotate pairs"),
    ({"model.kv_lora_rank": 8, "model.position_embedding": "rotary", "model.num_kv_heads": 1},
     "leave model.num_kv_heads unset"),
    ({"model.kv_lora_rank": 8, "model.position_embedding": "rotary", "model.qk_norm": True},
     "set model.qk_norm=False"),
    ({"model.kv_lora_rank": 8, "model.position_embedding": "rotary",
      "model.attention_impl": "xla"}, "set model.attention_impl=einsum"),
    ({"model.kv_lora_rank": 8, "model.position_embedding": "rotary",
      "model.rotary_fraction": 0.5}, "leave model.rotary_fraction at 1"),
    ({"model.kv_lora_rank": -1}, "model.kv_lora_rank=-1 must be >= 0"),
])
def test_settings_latent_attention_cannot_take_are_refused(overrides, expected):
    with pytest.raises(configs.ConfigError, match=expected):
        validation.validate(tiny_config(**overrides))


def test_an_encoder_decoder_is_refused():
    c = tiny_config(**{"model.arch": "encoder_decoder", "objective": "seq2seq",
                       "model.kv_lora_rank": 8, "model.position_embedding": "rotary"})
    with pytest.raises(configs.ConfigError, match="not model.arch='encoder_decoder'"):
        validation.validate(c)


@pytest.mark.slow  # decoding == the full forward: test_models' latent cases, by default
def test_a_latent_attention_run_trains_and_generates_from_its_cache(tmp_path):
    import json

    import llmjax
    from llmjax.train.loop import train_and_evaluate

    c = tiny_config(**{"model.position_embedding": "rotary", "model.kv_lora_rank": 16,
                       "model.q_lora_rank": 16, "model.qk_rope_head_dim": 8,
                       "num_train_steps": 30, "eval_every_steps": 30,
                       "checkpoint_every_steps": 30})
    train_and_evaluate(c, tmp_path / "run")
    rows = [json.loads(line) for line in (tmp_path / "run/metrics.jsonl").read_text().split("\n")
            if line]
    train = [r["train/loss"] for r in rows if "train/loss" in r]
    assert train[-1] < train[0] - 0.15
    run = llmjax.load(tmp_path / "run")
    assert set(nnx.state(run.model)["layers"][0]["attention"]) == {
        "query_down", "query_norm", "query", "kv_down", "kv_norm", "key_up", "value_up", "out"}
    # a batch of prompts of different lengths (left-padded in one latent cache) decodes as
    # each prompt alone
    prompts = ["ab", "abcab"]
    together = run.generate(prompts, max_new_tokens=6, temperature=0.0)
    assert together == [run.generate(p, max_new_tokens=6, temperature=0.0) for p in prompts]
    assert isinstance(run.generate("ab", max_new_tokens=4, beam_size=2), str)
