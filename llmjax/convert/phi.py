"""Phi (PhiModel / PhiForCausalLM: phi-1, phi-1.5, phi-2) <-> llmjax Decoder.

Phi is a pre-LayerNorm decoder whose blocks add attention and MLP side by side, both reading
the block's one LayerNorm (model.parallel_residual + model.parallel_shared_norm), with
biases everywhere, tanh-GELU, rotary positions on a share of each head
(`partial_rotary_factor`: model.rotary_fraction, phi-2's 0.4) and an untied output projection
with a bias (model.lm_head_bias). `qk_layernorm` (a LayerNorm over each head's queries and
keys) is model.qk_norm. PyTorch Linear weights are [out, in], transposed into llmjax's [in,
out] kernels.
"""

from __future__ import annotations

import ml_collections
import numpy as np

from llmjax.convert import llama
from llmjax.convert.common import (
    ACTIVATION_NAMES,
    HF_ACTIVATIONS,
    TensorReader,
    read_attention,
    read_layer_norm,
    settings_problems,
    write_layer_norm,
)

MODEL_TYPE = "phi"
HEADS = ("lm_head",)  # absent from a bare PhiModel: the head starts fresh
IGNORED = ()
_PROJECTIONS = {"query": "q_proj", "key": "k_proj", "value": "v_proj", "out": "dense"}


def configure(config: ml_collections.ConfigDict, hf: dict, tensors: dict, objective: str | None
              ) -> None:
    from llmjax.convert.hf import ConversionError

    m = config.model
    m.arch, config.objective = "decoder", objective or "causal_lm"
    activation = hf.get("hidden_act", "gelu_new")
    if activation not in HF_ACTIVATIONS:
        raise ConversionError(f"Phi hidden_act {activation!r} has no llmjax match")
    if hf.get("tie_word_embeddings"):
        raise ConversionError("tie_word_embeddings=true with Phi's output bias has no llmjax "
                              "match (llmjax ties the projection alone)")
    llama.configure_sizes(m, hf, default_max_len=2048)
    llama.configure_rope(m, hf)
    m.rotary_fraction = llama.rotary_fraction(hf, default=0.5)
    m.parallel_residual = m.parallel_shared_norm = True
    m.norm, m.norm_position = "layernorm", "pre"
    m.norm_epsilon = hf.get("layer_norm_eps", 1e-5)
    m.activation, m.use_bias, m.gated_mlp = HF_ACTIVATIONS[activation], True, False
    m.qk_norm = bool(hf.get("qk_layernorm", False))
    m.tie_embeddings, m.lm_head_bias = False, True
    m.dropout_rate = m.attention_dropout_rate = 0.0
    config.seq_len = min(config.seq_len, m.max_len)


def import_tensors(hf: dict, tensors: dict[str, np.ndarray], config: ml_collections.ConfigDict
                   ) -> tuple[dict[str, np.ndarray], set[str]]:
    """({llmjax parameter name: array}, the HF names used)."""
    m = config.model
    get = TensorReader(tensors, "model.")

    def norm(ours: str, theirs: str) -> None:
        out.update(read_layer_norm(get, theirs, ours))

    out = {"embed/embedding": get("embed_tokens.weight")}
    norm("final_norm", "final_layernorm")
    for i in range(m.num_layers):
        p, q = f"layers.{i}.", f"layers/{i}/"
        out.update(read_attention(get, p + "self_attn.", q + "attention/", _PROJECTIONS,
                                  m.head_dim))
        if m.qk_norm:
            norm(q + "attention/query_norm", p + "self_attn.q_layernorm")
            norm(q + "attention/key_norm", p + "self_attn.k_layernorm")
        norm(q + "attention_norm", p + "input_layernorm")
        for ours, theirs in (("wi", "fc1"), ("wo", "fc2")):
            out[q + f"mlp/{ours}/kernel"] = get(p + f"mlp.{theirs}.weight").T
            out[q + f"mlp/{ours}/bias"] = get(p + f"mlp.{theirs}.bias")
    if "lm_head.weight" in get:  # a bare PhiModel has none
        out["lm_head/kernel"] = get("lm_head.weight").T
        out["lm_head/bias"] = get("lm_head.bias")
    return out, get.used


def inexpressible(config: ml_collections.ConfigDict) -> list[str]:
    """What keeps an llmjax decoder from being a Phi model (empty: nothing)."""
    m = config.model
    wanted = {"position_embedding": "rotary", "norm": "layernorm", "norm_position": "pre",
              "use_bias": True, "gated_mlp": False, "embed_norm": False,
              "scale_attention": True, "post_norms": False, "scale_embeddings": False,
              "parallel_residual": True, "parallel_shared_norm": True,
              "tie_embeddings": False, "lm_head_bias": True, "qkv_bias": None,
              "attention_window": None, "qk_norm_scope": "head"}
    return settings_problems(m, wanted, "Phi", whole_heads=False, llama_like=True,
                             neox_like=True, activations=tuple(ACTIVATION_NAMES))


def export_tensors(config: ml_collections.ConfigDict, flat: dict[str, np.ndarray]
                   ) -> tuple[dict, dict[str, np.ndarray]]:
    m = config.model
    d = m.emb_dim
    t = {"model.embed_tokens.weight": flat["embed/embedding"]}
    if "lm_head/kernel" in flat:  # a classifier has none: its head is `score`
        t.update({"lm_head.weight": flat["lm_head/kernel"].T,
                  "lm_head.bias": flat["lm_head/bias"]})

    def norm(theirs: str, ours: str) -> None:
        t.update(write_layer_norm(flat, ours, theirs))

    norm("model.final_layernorm", "final_norm")
    for i in range(m.num_layers):
        p, q = f"model.layers.{i}.", f"layers/{i}/"
        for ours, theirs in _PROJECTIONS.items():
            kernel = flat[q + f"attention/{ours}/kernel"]
            t[p + f"self_attn.{theirs}.weight"] = (kernel.reshape(-1, d) if ours == "out"
                                                   else kernel.reshape(d, -1)).T
            t[p + f"self_attn.{theirs}.bias"] = flat[q + f"attention/{ours}/bias"].reshape(-1)
        if m.qk_norm:
            norm(p + "self_attn.q_layernorm", q + "attention/query_norm")
            norm(p + "self_attn.k_layernorm", q + "attention/key_norm")
        norm(p + "input_layernorm", q + "attention_norm")
        for ours, theirs in (("wi", "fc1"), ("wo", "fc2")):
            t[p + f"mlp.{theirs}.weight"] = flat[q + f"mlp/{ours}/kernel"].T
            t[p + f"mlp.{theirs}.bias"] = flat[q + f"mlp/{ours}/bias"]
    rope = {**llama.rope_parameters(m), "partial_rotary_factor": m.rotary_fraction}
    hf = {"model_type": MODEL_TYPE, "architectures": ["PhiForCausalLM"],
          "vocab_size": m.vocab_size, "hidden_size": d, "intermediate_size": m.mlp_dim,
          "num_hidden_layers": m.num_layers, "num_attention_heads": m.num_heads,
          "num_key_value_heads": m.num_kv_heads or m.num_heads, "head_dim": m.head_dim,
          "hidden_act": ACTIVATION_NAMES[m.activation], "layer_norm_eps": m.norm_epsilon,
          "max_position_embeddings": m.max_len, "partial_rotary_factor": m.rotary_fraction,
          "rope_theta": m.rotary_base, "rope_parameters": rope,
          "rope_scaling": None if m.rope_scaling == "none" else rope,
          "qk_layernorm": bool(m.qk_norm), "tie_word_embeddings": False,
          "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attention_dropout": 0.0}
    return hf, t
