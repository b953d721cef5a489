"""OPT (OPTModel / OPTForCausalLM: facebook/opt-125m ... opt-66b) -> llmjax Decoder.

OPT is GPT-2's function under other names: a pre-LayerNorm decoder (post-LayerNorm with
`do_layer_norm_before=false`) with learned positions, biases, ReLU and tied embeddings. Its
position table starts two rows early (row 2 is position 0, as fairseq counted from the pad
id): the first two rows are cut on import. PyTorch Linear weights are [out, in], transposed
into llmjax's [in, out] kernels. A run imported from OPT exports as GPT-2, the same function
(OPT-350m's projections between a narrower embedding and the blocks have no llmjax match).
"""

from __future__ import annotations

import ml_collections
import numpy as np

from llmjax.convert.common import (
    HF_ACTIVATIONS,
    TensorReader,
    read_attention,
    read_layer_norm,
)

MODEL_TYPE = "opt"
HEADS = ()
IGNORED = (r"lm_head\.weight",)  # tied to the token embedding
_POSITION_OFFSET = 2
_PROJECTIONS = {"query": "q_proj", "key": "k_proj", "value": "v_proj", "out": "out_proj"}


def configure(config: ml_collections.ConfigDict, hf: dict, tensors: dict, objective: str | None
              ) -> None:
    from llmjax.convert.hf import ConversionError

    m = config.model
    m.arch, config.objective = "decoder", objective or "causal_lm"
    activation = hf.get("activation_function", "relu")
    problems = [f"{key}={hf[key]}" for key, fine in (
        ("enable_bias", True), ("layer_norm_elementwise_affine", True),
        ("tie_word_embeddings", True), ("_remove_final_layer_norm", False))
        if key in hf and hf[key] != fine]
    if hf.get("word_embed_proj_dim", hf["hidden_size"]) != hf["hidden_size"]:
        problems.append(f"word_embed_proj_dim={hf['word_embed_proj_dim']} (projections "
                        "between embeddings and blocks)")
    if activation not in HF_ACTIVATIONS:
        problems.append(f"activation_function={activation!r}")
    if problems:
        raise ConversionError(f"this OPT checkpoint's {', '.join(problems)} has no llmjax "
                              "match")
    m.emb_dim, m.num_layers = hf["hidden_size"], hf["num_hidden_layers"]
    m.num_heads, m.mlp_dim = hf["num_attention_heads"], hf["ffn_dim"]
    m.vocab_size, m.max_len = hf["vocab_size"], hf["max_position_embeddings"]
    m.activation = HF_ACTIVATIONS[activation]
    m.norm, m.norm_epsilon = "layernorm", 1e-5
    m.norm_position = "pre" if hf.get("do_layer_norm_before", True) else "post"
    m.position_embedding, m.use_bias, m.gated_mlp, m.tie_embeddings = "learned", True, False, True
    m.dropout_rate = m.attention_dropout_rate = 0.0
    config.seq_len = min(config.seq_len, m.max_len)


def import_tensors(hf: dict, tensors: dict[str, np.ndarray], config: ml_collections.ConfigDict
                   ) -> tuple[dict[str, np.ndarray], set[str]]:
    """({llmjax parameter name: array}, the HF names used)."""
    m = config.model
    k = m.emb_dim // m.num_heads
    get = TensorReader(tensors, "model.decoder.")
    if "decoder.embed_tokens.weight" in get:  # OPTModel: no `model.` prefix
        get = TensorReader(tensors, "decoder.")
    positions = get("embed_positions.weight")
    out = {"embed/embedding": get("embed_tokens.weight"),
           "position_embed/embedding": positions[_POSITION_OFFSET: _POSITION_OFFSET + m.max_len]}
    if m.norm_position == "pre":
        out.update(read_layer_norm(get, "final_layer_norm", "final_norm"))
    for i in range(m.num_layers):
        p, q = f"layers.{i}.", f"layers/{i}/"
        out.update(read_attention(get, p + "self_attn.", q + "attention/", _PROJECTIONS, k))
        out.update(read_layer_norm(get, p + "self_attn_layer_norm", q + "attention_norm"))
        out.update(read_layer_norm(get, p + "final_layer_norm", q + "mlp_norm"))
        for ours, theirs in (("wi", "fc1"), ("wo", "fc2")):
            out[q + f"mlp/{ours}/kernel"] = get(p + f"{theirs}.weight").T
            out[q + f"mlp/{ours}/bias"] = get(p + f"{theirs}.bias")
    return out, get.used

