"""T5 (v1.0: ReLU, output states scaled by d_model ** -0.5; v1.1: gated GELU, no scaling,
and in older configs a separate lm_head) <-> llmjax EncoderDecoder.

T5 is pre-RMSNorm without biases, with a bucketed relative position bias per stack (stored in
the first block, shared by all), no 1/sqrt(d) attention scaling, and a decoder that starts from
<pad>. PyTorch Linear weights are [out, in]: transposed into llmjax's [in, out] kernels.
"""

from __future__ import annotations

import ml_collections
import numpy as np

from llmjax.convert.common import TensorReader, settings_problems

MODEL_TYPE = "t5"
HEADS = ()
IGNORED = (r"(encoder|decoder)\.embed_tokens\.weight",)


def configure(config: ml_collections.ConfigDict, hf: dict, tensors: dict, objective: str | None
              ) -> None:
    m = config.model
    m.arch, config.objective = "encoder_decoder", objective or "seq2seq"
    m.num_layers = m.num_encoder_layers = hf["num_layers"]
    m.num_decoder_layers = hf.get("num_decoder_layers") or hf["num_layers"]
    m.num_heads, m.head_dim, m.emb_dim = hf["num_heads"], hf["d_kv"], hf["d_model"]
    m.mlp_dim, m.vocab_size = hf["d_ff"], hf["vocab_size"]
    projection = hf.get("feed_forward_proj", "relu")
    gated = projection.startswith("gated-")
    m.gated_mlp = gated
    m.activation = {"relu": "relu", "gelu": "gelu", "gelu_new": "gelu", "silu": "silu"}[
        projection.removeprefix("gated-")]
    m.norm, m.norm_position, m.norm_epsilon = "rmsnorm", "pre", hf.get("layer_norm_epsilon",
                                                                      1e-6)
    m.position_embedding, m.use_bias = "relative", False
    m.relative_buckets = hf.get("relative_attention_num_buckets", 32)
    m.relative_max_distance = hf.get("relative_attention_max_distance", 128)
    # transformers 5 records the output scaling apart from tying (`scale_decoder_outputs`);
    # older configs let tie_word_embeddings mean both. A separate lm_head.weight unties.
    tied = hf.get("tie_word_embeddings", True)
    if "lm_head.weight" in tensors and not np.array_equal(tensors["lm_head.weight"],
                                                          tensors["shared.weight"]):
        tied = False
    m.tie_embeddings = tied
    m.scale_attention = False
    m.scale_decoder_outputs = hf.get("scale_decoder_outputs",
                                     hf.get("tie_word_embeddings", True))
    m.max_len, m.dropout_rate, m.attention_dropout_rate = 512, 0.0, 0.0
    config.tokenizer.extra_ids = 100


def _attention(get, out, theirs: str, ours: str, d: int, h: int, k: int) -> None:
    for t_name, o_name in (("q", "query"), ("k", "key"), ("v", "value")):
        out[f"{ours}/{o_name}/kernel"] = get(f"{theirs}.{t_name}.weight").T.reshape(d, h, k)
    out[f"{ours}/out/kernel"] = get(f"{theirs}.o.weight").T.reshape(h, k, d)


def import_tensors(hf: dict, tensors: dict[str, np.ndarray], config: ml_collections.ConfigDict
                   ) -> tuple[dict[str, np.ndarray], set[str]]:
    m = config.model
    d, h, k = m.emb_dim, m.num_heads, m.head_dim
    get = TensorReader(tensors)

    out = {"embed/embedding": get("shared.weight")}
    for side, layers in (("encoder", m.num_encoder_layers), ("decoder", m.num_decoder_layers)):
        out[f"{side}/relative_bias/embedding"] = get(
            f"{side}.block.0.layer.0.SelfAttention.relative_attention_bias.weight")
        out[f"{side}/final_norm/scale"] = get(f"{side}.final_layer_norm.weight")
        for i in range(layers):
            p, q = f"{side}.block.{i}.layer.", f"{side}/layers/{i}/"
            _attention(get, out, p + "0.SelfAttention", q + "attention", d, h, k)
            out[q + "attention_norm/scale"] = get(p + "0.layer_norm.weight")
            ff = 1
            if side == "decoder":
                _attention(get, out, p + "1.EncDecAttention", q + "cross_attention", d, h, k)
                out[q + "cross_attention_norm/scale"] = get(p + "1.layer_norm.weight")
                ff = 2
            out[q + "mlp_norm/scale"] = get(p + f"{ff}.layer_norm.weight")
            dense = p + f"{ff}.DenseReluDense."
            if m.gated_mlp:
                out[q + "mlp/wi/kernel"] = get(dense + "wi_0.weight").T
                out[q + "mlp/wg/kernel"] = get(dense + "wi_1.weight").T
            else:
                out[q + "mlp/wi/kernel"] = get(dense + "wi.weight").T
            out[q + "mlp/wo/kernel"] = get(dense + "wo.weight").T
    if m.tie_embeddings:
        get.used.add("lm_head.weight")  # a tied copy, when saved
    else:
        out["lm_head/kernel"] = get("lm_head.weight").T
    return out, get.used


def inexpressible(config: ml_collections.ConfigDict) -> list[str]:
    m = config.model
    wanted = {"position_embedding": "relative", "norm": "rmsnorm", "norm_position": "pre",
              "use_bias": False, "scale_attention": False}
    problems = settings_problems(m, wanted, "T5", whole_heads=False)
    if m.activation not in ("relu", "gelu", "silu"):
        problems.append(f"model.activation={m.activation!r}")
    return problems


def export_tensors(config: ml_collections.ConfigDict, flat: dict[str, np.ndarray]
                   ) -> tuple[dict, dict[str, np.ndarray]]:
    m = config.model
    t = {"shared.weight": flat["embed/embedding"]}
    enc_layers = m.num_encoder_layers or m.num_layers
    dec_layers = m.num_decoder_layers or m.num_layers
    for side, layers in (("encoder", enc_layers), ("decoder", dec_layers)):
        t[f"{side}.block.0.layer.0.SelfAttention.relative_attention_bias.weight"] = flat[
            f"{side}/relative_bias/embedding"]
        t[f"{side}.final_layer_norm.weight"] = flat[f"{side}/final_norm/scale"]
        for i in range(layers):
            p, q = f"{side}.block.{i}.layer.", f"{side}/layers/{i}/"
            attentions = [("0.SelfAttention", "attention")]
            if side == "decoder":
                attentions.append(("1.EncDecAttention", "cross_attention"))
                t[p + "1.layer_norm.weight"] = flat[q + "cross_attention_norm/scale"]
            for theirs, ours in attentions:
                for t_name, o_name in (("q", "query"), ("k", "key"), ("v", "value")):
                    kernel = flat[f"{q}{ours}/{o_name}/kernel"]  # [D, H, K]
                    t[f"{p}{theirs}.{t_name}.weight"] = kernel.reshape(m.emb_dim, -1).T
                kernel = flat[f"{q}{ours}/out/kernel"]  # [H, K, D]
                t[f"{p}{theirs}.o.weight"] = kernel.reshape(-1, m.emb_dim).T
            t[p + "0.layer_norm.weight"] = flat[q + "attention_norm/scale"]
            ff = 2 if side == "decoder" else 1
            t[p + f"{ff}.layer_norm.weight"] = flat[q + "mlp_norm/scale"]
            dense = p + f"{ff}.DenseReluDense."
            if m.gated_mlp:
                t[dense + "wi_0.weight"] = flat[q + "mlp/wi/kernel"].T
                t[dense + "wi_1.weight"] = flat[q + "mlp/wg/kernel"].T
            else:
                t[dense + "wi.weight"] = flat[q + "mlp/wi/kernel"].T
            t[dense + "wo.weight"] = flat[q + "mlp/wo/kernel"].T
    if not m.tie_embeddings:
        t["lm_head.weight"] = flat["lm_head/kernel"].T
    activation = {"gelu": "gelu_new", "relu": "relu", "silu": "silu"}[m.activation]
    hf = {"model_type": MODEL_TYPE, "architectures": ["T5ForConditionalGeneration"],
          "vocab_size": m.vocab_size, "d_model": m.emb_dim,
          "d_kv": m.head_dim or m.emb_dim // m.num_heads, "d_ff": m.mlp_dim,
          "num_layers": enc_layers, "num_decoder_layers": dec_layers, "num_heads": m.num_heads,
          "relative_attention_num_buckets": m.relative_buckets,
          "relative_attention_max_distance": m.relative_max_distance,
          "layer_norm_epsilon": m.norm_epsilon, "dropout_rate": 0.0,
          "feed_forward_proj": ("gated-" if m.gated_mlp else "") + activation,
          "tie_word_embeddings": m.tie_embeddings,
          "scale_decoder_outputs": m.scale_decoder_outputs, "is_encoder_decoder": True,
          "decoder_start_token_id": 0, "pad_token_id": 0, "eos_token_id": 1}
    return hf, t
