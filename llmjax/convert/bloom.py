"""BLOOM (BloomModel / BloomForCausalLM) <-> llmjax Decoder.

BLOOM is a pre-LayerNorm decoder with ALiBi instead of position embeddings, a LayerNorm on the
word embeddings, biases, tanh-GELU and tied embeddings. Its fused query_key_value weight is
[H * 3 * K, D] with the three projections interleaved per head (common.import_fused_block);
PyTorch Linear weights are [out, in], transposed into llmjax's [in, out] kernels.
"""

from __future__ import annotations

import ml_collections
import numpy as np

from llmjax.convert.common import (
    TensorReader,
    export_fused_block,
    import_fused_block,
    read_layer_norm,
    settings_problems,
    write_layer_norm,
)

MODEL_TYPE = "bloom"
HEADS = ()
IGNORED = (r"lm_head\.weight",)


def configure(config: ml_collections.ConfigDict, hf: dict, tensors: dict, objective: str | None
              ) -> None:
    m = config.model
    m.arch, config.objective = "decoder", objective or "causal_lm"
    m.emb_dim = hf.get("hidden_size") or hf["n_embed"]
    m.num_layers, m.num_heads = hf["n_layer"], hf["n_head"]
    m.mlp_dim, m.vocab_size = 4 * m.emb_dim, hf["vocab_size"]
    m.norm, m.norm_position = "layernorm", "pre"
    m.norm_epsilon = hf.get("layer_norm_epsilon", 1e-5)
    m.position_embedding, m.embed_norm, m.activation = "alibi", True, "gelu"
    m.use_bias, m.gated_mlp, m.tie_embeddings = True, False, True
    m.max_len = 2048  # ALiBi has no table: this only sizes the decoding cache
    m.dropout_rate = m.attention_dropout_rate = 0.0


def import_tensors(hf: dict, tensors: dict[str, np.ndarray], config: ml_collections.ConfigDict
                   ) -> tuple[dict[str, np.ndarray], set[str]]:
    m = config.model
    d, h = m.emb_dim, m.num_heads
    k = d // h
    get = TensorReader(tensors, "transformer.")

    def norm(ours: str, theirs: str) -> None:
        out.update(read_layer_norm(get, theirs, ours))

    out = {"embed/embedding": get("word_embeddings.weight")}
    norm("embed_norm", "word_embeddings_layernorm")
    norm("final_norm", "ln_f")
    for i in range(m.num_layers):
        out.update(import_fused_block(get, f"h.{i}.", f"layers/{i}/", "self_attention", h, k))
    return out, get.used


def inexpressible(config: ml_collections.ConfigDict) -> list[str]:
    m = config.model
    wanted = {"position_embedding": "alibi", "embed_norm": True, "norm": "layernorm",
              "norm_position": "pre", "use_bias": True, "gated_mlp": False,
              "tie_embeddings": True, "activation": "gelu", "scale_attention": True}
    problems = settings_problems(m, wanted, "BLOOM")
    if m.mlp_dim != 4 * m.emb_dim:
        problems.append("model.mlp_dim != 4 x emb_dim")
    return problems


def export_tensors(config: ml_collections.ConfigDict, flat: dict[str, np.ndarray]
                   ) -> tuple[dict, dict[str, np.ndarray]]:
    m = config.model
    d, h = m.emb_dim, m.num_heads
    t = {"transformer.word_embeddings.weight": flat["embed/embedding"]}

    def norm(theirs: str, ours: str) -> None:
        t.update(write_layer_norm(flat, ours, theirs))

    norm("transformer.word_embeddings_layernorm", "embed_norm")
    norm("transformer.ln_f", "final_norm")
    for i in range(m.num_layers):
        t.update(export_fused_block(flat, f"layers/{i}/", f"transformer.h.{i}.",
                                    "self_attention"))
    hf = {"model_type": MODEL_TYPE, "architectures": ["BloomForCausalLM"],
          "vocab_size": m.vocab_size, "hidden_size": d, "n_layer": m.num_layers, "n_head": h,
          "layer_norm_epsilon": m.norm_epsilon, "hidden_dropout": 0.0, "attention_dropout": 0.0,
          "tie_word_embeddings": True}
    return hf, t
