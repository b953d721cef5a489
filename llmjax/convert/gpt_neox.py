"""GPT-NeoX (GPTNeoXModel / GPTNeoXForCausalLM: Pythia, GPT-NeoX-20B, ...) <-> llmjax Decoder.

GPT-NeoX is a pre-LayerNorm decoder with biases, exact GELU and untied embeddings (`embed_in`,
`embed_out`), whose rotary positions turn only the leading `rotary_pct` (Pythia: 1/4) of each
head's dims (model.rotary_fraction), and whose blocks mostly add attention and MLP of the same
input side by side (`use_parallel_residual`: model.parallel_residual). Its fused
query_key_value weight is laid out per head, as BLOOM's (common.import_fused_block);
PyTorch Linear weights are [out, in], transposed into llmjax's [in, out] kernels.
"""

from __future__ import annotations

import ml_collections
import numpy as np

from llmjax.convert import llama
from llmjax.convert.common import (
    ACTIVATION_NAMES,
    HF_ACTIVATIONS,
    TensorReader,
    export_fused_block,
    import_fused_block,
    read_layer_norm,
    settings_problems,
    write_layer_norm,
)

MODEL_TYPE = "gpt_neox"
HEADS = ("lm_head",)  # a bare body (no head tensor): the head starts fresh
# the causal-mask and rotary buffers older checkpoints saved; the LM head of a tied model
IGNORED = (r"(gpt_neox\.)?layers\.\d+\.attention\.(bias|masked_bias|rotary_emb\.inv_freq)",
           r"(gpt_neox\.)?rotary_emb\.inv_freq", r"(embed_out|lm_head)\.weight")


def _rotary_base(hf: dict) -> float:
    """transformers >= 5's rope_parameters' rope_theta, or the older `rotary_emb_base`
    (default 10000, as transformers keeps it)."""
    params = hf.get("rope_parameters") or {}
    return float(params.get("rope_theta", hf.get("rotary_emb_base", 10000.0)))


def configure(config: ml_collections.ConfigDict, hf: dict, tensors: dict, objective: str | None
              ) -> None:
    from llmjax.convert.hf import ConversionError

    m = config.model
    m.arch, config.objective = "decoder", objective or "causal_lm"
    if hf.get("attention_bias") is False:
        raise ConversionError("attention_bias=false (no biases on attention, biases on the "
                              "MLP) has no llmjax match")
    activation = hf.get("hidden_act", "gelu")
    if activation not in HF_ACTIVATIONS:
        raise ConversionError(f"GPT-NeoX hidden_act {activation!r} has no llmjax match")
    m.emb_dim, m.num_layers = hf["hidden_size"], hf["num_hidden_layers"]
    m.num_heads, m.mlp_dim = hf["num_attention_heads"], hf["intermediate_size"]
    m.vocab_size, m.max_len = hf["vocab_size"], hf.get("max_position_embeddings", 2048)
    llama.configure_rope(m, hf, theta=_rotary_base(hf))
    m.rotary_fraction = llama.rotary_fraction(hf, default=0.25, key="rotary_pct")
    m.parallel_residual = bool(hf.get("use_parallel_residual", True))
    m.norm, m.norm_position = "layernorm", "pre"
    m.norm_epsilon = hf.get("layer_norm_eps", 1e-5)
    m.activation, m.use_bias, m.gated_mlp = HF_ACTIVATIONS[activation], True, False
    m.tie_embeddings = bool(hf.get("tie_word_embeddings", False))
    m.dropout_rate = m.attention_dropout_rate = 0.0
    config.seq_len = min(config.seq_len, m.max_len)


def import_tensors(hf: dict, tensors: dict[str, np.ndarray], config: ml_collections.ConfigDict
                   ) -> tuple[dict[str, np.ndarray], set[str]]:
    """({llmjax parameter name: array}, the HF names used)."""
    m = config.model
    d, h = m.emb_dim, m.num_heads
    k = d // h
    get = TensorReader(tensors, "gpt_neox.")

    def norm(ours: str, theirs: str) -> None:
        out.update(read_layer_norm(get, theirs, ours))

    out = {"embed/embedding": get("embed_in.weight")}
    norm("final_norm", "final_layer_norm")
    for i in range(m.num_layers):
        out.update(import_fused_block(get, f"layers.{i}.", f"layers/{i}/", "attention", h, k))
    # the Hub's checkpoints say embed_out, transformers 5 lm_head; GPTNeoXModel has neither
    head = next((h for h in ("embed_out.weight", "lm_head.weight") if h in get), None)
    if not m.tie_embeddings and head:
        out["lm_head/kernel"] = get(head).T
    return out, get.used


def inexpressible(config: ml_collections.ConfigDict) -> list[str]:
    """What keeps an llmjax decoder from being a GPT-NeoX model (empty: nothing)."""
    m = config.model
    wanted = {"position_embedding": "rotary", "norm": "layernorm", "norm_position": "pre",
              "use_bias": True, "gated_mlp": False, "embed_norm": False,
              "scale_attention": True, "post_norms": False, "scale_embeddings": False,
              "parallel_shared_norm": False}
    problems = settings_problems(m, wanted, "GPT-NeoX", neox_like=True,
                                 activations=tuple(ACTIVATION_NAMES))
    return problems


def export_tensors(config: ml_collections.ConfigDict, flat: dict[str, np.ndarray]
                   ) -> tuple[dict, dict[str, np.ndarray]]:
    m = config.model
    d, h = m.emb_dim, m.num_heads
    t = {"gpt_neox.embed_in.weight": flat["embed/embedding"]}

    def norm(theirs: str, ours: str) -> None:
        t.update(write_layer_norm(flat, ours, theirs))

    norm("gpt_neox.final_layer_norm", "final_norm")
    for i in range(m.num_layers):
        t.update(export_fused_block(flat, f"layers/{i}/", f"gpt_neox.layers.{i}.", "attention"))
    if "lm_head/kernel" in flat:  # untied (a classifier has none: its head is `score`)
        t["embed_out.weight"] = flat["lm_head/kernel"].T  # the name every version reads
    rope = {**llama.rope_parameters(m), "partial_rotary_factor": m.rotary_fraction}
    hf = {"model_type": MODEL_TYPE, "architectures": ["GPTNeoXForCausalLM"],
          "vocab_size": m.vocab_size, "hidden_size": d, "num_hidden_layers": m.num_layers,
          "num_attention_heads": h, "intermediate_size": m.mlp_dim,
          "hidden_act": ACTIVATION_NAMES[m.activation], "layer_norm_eps": m.norm_epsilon,
          "max_position_embeddings": m.max_len, "use_parallel_residual": m.parallel_residual,
          "rotary_pct": m.rotary_fraction, "rotary_emb_base": m.rotary_base,
          "rope_scaling": None if m.rope_scaling == "none" else rope, "rope_parameters": rope,
          "tie_word_embeddings": bool(m.tie_embeddings), "attention_bias": True,
          "hidden_dropout": 0.0, "attention_dropout": 0.0}
    return hf, t
