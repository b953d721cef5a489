"""GPT-2 (GPT2Model / GPT2LMHeadModel) <-> llmjax Decoder.

GPT-2 is a pre-LayerNorm decoder with learned positions, biases, tanh-GELU and tied embeddings.
Its Conv1D weights are [in, out], the layout of llmjax's Dense kernels; the fused c_attn
[D, 3D] splits into query, key and value [D, H, K].
"""

from __future__ import annotations

import ml_collections
import numpy as np

from llmjax.convert.common import (
    ACTIVATION_NAMES,
    HF_ACTIVATIONS,
    TensorReader,
    settings_problems,
)

MODEL_TYPE = "gpt2"
HEADS = ("lm_head",)  # untied, absent from a bare GPT2Model: the head starts fresh
IGNORED = (r"(transformer\.)?h\.\d+\.attn\.(masked_)?bias", r"lm_head\.weight")


def configure(config: ml_collections.ConfigDict, hf: dict, tensors: dict, objective: str | None
              ) -> None:
    m = config.model
    m.arch, config.objective = "decoder", objective or "causal_lm"
    m.num_layers, m.num_heads, m.emb_dim = hf["n_layer"], hf["n_head"], hf["n_embd"]
    m.mlp_dim = hf.get("n_inner") or 4 * hf["n_embd"]
    m.max_len, m.vocab_size = hf["n_positions"], hf["vocab_size"]
    activation = hf.get("activation_function", "gelu_new")
    if activation not in HF_ACTIVATIONS:
        from llmjax.convert.hf import ConversionError

        raise ConversionError(f"GPT-2 activation_function {activation!r} has no llmjax match")
    m.activation = HF_ACTIVATIONS[activation]
    m.norm, m.norm_position, m.norm_epsilon = "layernorm", "pre", hf.get("layer_norm_epsilon",
                                                                        1e-5)
    m.position_embedding, m.use_bias, m.gated_mlp = "learned", True, False
    m.tie_embeddings = hf.get("tie_word_embeddings", True)
    m.dropout_rate = m.attention_dropout_rate = 0.0
    config.seq_len = min(config.seq_len, m.max_len)


def import_tensors(hf: dict, tensors: dict[str, np.ndarray], config: ml_collections.ConfigDict
                   ) -> tuple[dict[str, np.ndarray], set[str]]:
    """({llmjax parameter name: array}, the HF names used)."""
    m = config.model
    h, d = m.num_heads, m.emb_dim
    k = d // h
    get = TensorReader(tensors, "transformer.")

    out = {"embed/embedding": get("wte.weight"), "position_embed/embedding": get("wpe.weight"),
           "final_norm/scale": get("ln_f.weight"), "final_norm/bias": get("ln_f.bias")}
    for i in range(m.num_layers):
        p, q = f"h.{i}.", f"layers/{i}/"
        w, b = get(p + "attn.c_attn.weight"), get(p + "attn.c_attn.bias")
        for j, name in enumerate(("query", "key", "value")):
            out[q + f"attention/{name}/kernel"] = w[:, j * d:(j + 1) * d].reshape(d, h, k)
            out[q + f"attention/{name}/bias"] = b[j * d:(j + 1) * d].reshape(h, k)
        out[q + "attention/out/kernel"] = get(p + "attn.c_proj.weight").reshape(h, k, d)
        out[q + "attention/out/bias"] = get(p + "attn.c_proj.bias")
        for ours, theirs in (("attention_norm", "ln_1"), ("mlp_norm", "ln_2")):
            out[q + f"{ours}/scale"] = get(p + f"{theirs}.weight")
            out[q + f"{ours}/bias"] = get(p + f"{theirs}.bias")
        for ours, theirs in (("wi", "c_fc"), ("wo", "c_proj")):
            out[q + f"mlp/{ours}/kernel"] = get(p + f"mlp.{theirs}.weight")
            out[q + f"mlp/{ours}/bias"] = get(p + f"mlp.{theirs}.bias")
    if not m.tie_embeddings and "lm_head.weight" in get:
        out["lm_head/kernel"] = get("lm_head.weight").T
    return out, get.used


def inexpressible(config: ml_collections.ConfigDict) -> list[str]:
    """What keeps an llmjax decoder from being a GPT-2 model (empty: nothing)."""
    m = config.model
    wanted = {"position_embedding": "learned", "norm": "layernorm", "norm_position": "pre",
              "gated_mlp": False, "use_bias": True, "scale_attention": True}
    return settings_problems(m, wanted, "GPT-2", activations=tuple(ACTIVATION_NAMES))


def export_tensors(config: ml_collections.ConfigDict, flat: dict[str, np.ndarray]
                   ) -> tuple[dict, dict[str, np.ndarray]]:
    m = config.model
    d = m.emb_dim
    t = {"transformer.wte.weight": flat["embed/embedding"],
         "transformer.wpe.weight": flat["position_embed/embedding"],
         "transformer.ln_f.weight": flat["final_norm/scale"],
         "transformer.ln_f.bias": flat["final_norm/bias"]}
    for i in range(m.num_layers):
        p, q = f"transformer.h.{i}.", f"layers/{i}/"
        t[p + "attn.c_attn.weight"] = np.concatenate(
            [flat[q + f"attention/{n}/kernel"].reshape(d, d) for n in ("query", "key", "value")],
            axis=1)
        t[p + "attn.c_attn.bias"] = np.concatenate(
            [flat[q + f"attention/{n}/bias"].reshape(d) for n in ("query", "key", "value")])
        t[p + "attn.c_proj.weight"] = flat[q + "attention/out/kernel"].reshape(d, d)
        t[p + "attn.c_proj.bias"] = flat[q + "attention/out/bias"]
        for ours, theirs in (("attention_norm", "ln_1"), ("mlp_norm", "ln_2")):
            t[p + f"{theirs}.weight"] = flat[q + f"{ours}/scale"]
            t[p + f"{theirs}.bias"] = flat[q + f"{ours}/bias"]
        for ours, theirs in (("wi", "c_fc"), ("wo", "c_proj")):
            t[p + f"mlp.{theirs}.weight"] = flat[q + f"mlp/{ours}/kernel"]
            t[p + f"mlp.{theirs}.bias"] = flat[q + f"mlp/{ours}/bias"]
    if "lm_head/kernel" in flat:  # untied (a classifier has none: its head is `score`)
        t["lm_head.weight"] = flat["lm_head/kernel"].T
    hf = {"model_type": MODEL_TYPE, "architectures": ["GPT2LMHeadModel"],
          "vocab_size": m.vocab_size, "n_positions": m.max_len, "n_embd": d,
          "n_layer": m.num_layers, "n_head": m.num_heads, "n_inner": m.mlp_dim,
          "activation_function": ACTIVATION_NAMES[m.activation],
          "layer_norm_epsilon": m.norm_epsilon, "tie_word_embeddings": m.tie_embeddings,
          "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0}
    return hf, t
