"""BART (BartModel / BartForConditionalGeneration) <-> llmjax EncoderDecoder.

BART is a post-LayerNorm encoder-decoder with biases, exact GELU, learned positions (its tables
have two extra leading rows: position p is row p + 2) and a LayerNorm on the summed embeddings
of each stack, optionally scaling token embeddings by sqrt(d_model). PyTorch Linear weights are
[out, in]: transposed into llmjax's [in, out] kernels. Its decoder starts from </s>.
"""

from __future__ import annotations

import ml_collections
import numpy as np

from llmjax.convert.common import TensorReader, settings_problems

MODEL_TYPE = "bart"
HEADS = ()
IGNORED = (r"(model\.)?(encoder|decoder)\.embed_tokens\.weight", r"lm_head\.weight",
           r"final_logits_bias")
_OFFSET = 2  # BartLearnedPositionalEmbedding's offset


def _prefix(tensors: dict) -> str:
    return "model." if "model.shared.weight" in tensors else ""


def configure(config: ml_collections.ConfigDict, hf: dict, tensors: dict, objective: str | None
              ) -> None:
    from llmjax.convert.hf import ConversionError

    m = config.model
    m.arch, config.objective = "encoder_decoder", objective or "seq2seq"
    if (hf["encoder_attention_heads"] != hf["decoder_attention_heads"]
            or hf["encoder_ffn_dim"] != hf["decoder_ffn_dim"]):
        raise ConversionError("this BART has different encoder and decoder head counts or "
                              "feed-forward sizes, which llmjax's encoder_decoder shares")
    bias = tensors.get("final_logits_bias")
    if bias is not None and np.any(bias != 0):
        raise ConversionError("final_logits_bias is not zero: llmjax has no output bias")
    m.num_layers = m.num_encoder_layers = hf["encoder_layers"]
    m.num_decoder_layers = hf["decoder_layers"]
    m.num_heads, m.emb_dim = hf["encoder_attention_heads"], hf["d_model"]
    m.head_dim = m.emb_dim // m.num_heads
    m.mlp_dim, m.vocab_size = hf["encoder_ffn_dim"], hf["vocab_size"]
    m.max_len = hf["max_position_embeddings"]
    m.activation = {"gelu": "gelu_exact", "gelu_new": "gelu", "relu": "relu", "silu": "silu"}[
        hf.get("activation_function", "gelu")]
    m.norm, m.norm_position, m.norm_epsilon = "layernorm", "post", 1e-5
    m.position_embedding, m.use_bias, m.gated_mlp = "learned", True, False
    m.scale_embeddings = bool(hf.get("scale_embedding", False))
    lm_head, shared = tensors.get("lm_head.weight"), tensors[_prefix(tensors) + "shared.weight"]
    m.tie_embeddings = lm_head is None or np.array_equal(lm_head, shared)
    m.scale_attention, m.scale_decoder_outputs = True, False
    m.dropout_rate = m.attention_dropout_rate = 0.0
    config.tokenizer.extra_ids = 0


_ATTENTION = (("q_proj", "query"), ("k_proj", "key"), ("v_proj", "value"))
_NORMS = (("self_attn_layer_norm", "attention_norm"), ("encoder_attn_layer_norm",
                                                       "cross_attention_norm"),
          ("final_layer_norm", "mlp_norm"))


def import_tensors(hf: dict, tensors: dict[str, np.ndarray], config: ml_collections.ConfigDict
                   ) -> tuple[dict[str, np.ndarray], set[str]]:
    m = config.model
    d, h = m.emb_dim, m.num_heads
    k = d // h
    get = TensorReader(tensors, _prefix(tensors))

    out = {"embed/embedding": get("shared.weight")}
    for side, layers in (("encoder", m.num_encoder_layers), ("decoder", m.num_decoder_layers)):
        out[f"{side}/position_embed/embedding"] = get(f"{side}.embed_positions.weight")[_OFFSET:]
        out[f"{side}/embed_norm/scale"] = get(f"{side}.layernorm_embedding.weight")
        out[f"{side}/embed_norm/bias"] = get(f"{side}.layernorm_embedding.bias")
        for i in range(layers):
            p, q = f"{side}.layers.{i}.", f"{side}/layers/{i}/"
            attentions = [("self_attn", "attention")]
            if side == "decoder":
                attentions.append(("encoder_attn", "cross_attention"))
            for theirs, ours in attentions:
                for t_name, o_name in _ATTENTION:
                    out[f"{q}{ours}/{o_name}/kernel"] = get(
                        f"{p}{theirs}.{t_name}.weight").T.reshape(d, h, k)
                    out[f"{q}{ours}/{o_name}/bias"] = get(
                        f"{p}{theirs}.{t_name}.bias").reshape(h, k)
                out[f"{q}{ours}/out/kernel"] = get(f"{p}{theirs}.out_proj.weight").T.reshape(
                    h, k, d)
                out[f"{q}{ours}/out/bias"] = get(f"{p}{theirs}.out_proj.bias")
            for theirs, ours in _NORMS:
                if ours == "cross_attention_norm" and side == "encoder":
                    continue
                out[f"{q}{ours}/scale"] = get(f"{p}{theirs}.weight")
                out[f"{q}{ours}/bias"] = get(f"{p}{theirs}.bias")
            for theirs, ours in (("fc1", "wi"), ("fc2", "wo")):
                out[f"{q}mlp/{ours}/kernel"] = get(f"{p}{theirs}.weight").T
                out[f"{q}mlp/{ours}/bias"] = get(f"{p}{theirs}.bias")
    if not m.tie_embeddings:
        out["lm_head/kernel"] = get("lm_head.weight").T
    return out, get.used


def inexpressible(config: ml_collections.ConfigDict) -> list[str]:
    m = config.model
    wanted = {"position_embedding": "learned", "norm": "layernorm", "norm_position": "post",
              "use_bias": True, "gated_mlp": False, "scale_attention": True,
              "scale_decoder_outputs": False}
    problems = settings_problems(m, wanted, "BART")
    return problems


def export_tensors(config: ml_collections.ConfigDict, flat: dict[str, np.ndarray]
                   ) -> tuple[dict, dict[str, np.ndarray]]:
    m = config.model
    d = m.emb_dim
    enc_layers = m.num_encoder_layers or m.num_layers
    dec_layers = m.num_decoder_layers or m.num_layers
    t = {"model.shared.weight": flat["embed/embedding"],
         "final_logits_bias": np.zeros((1, m.vocab_size), np.float32)}
    for side, layers in (("encoder", enc_layers), ("decoder", dec_layers)):
        pos = flat[f"{side}/position_embed/embedding"]
        t[f"model.{side}.embed_positions.weight"] = np.concatenate(
            [np.zeros((_OFFSET, d), pos.dtype), pos])
        t[f"model.{side}.layernorm_embedding.weight"] = flat[f"{side}/embed_norm/scale"]
        t[f"model.{side}.layernorm_embedding.bias"] = flat[f"{side}/embed_norm/bias"]
        for i in range(layers):
            p, q = f"model.{side}.layers.{i}.", f"{side}/layers/{i}/"
            attentions = [("self_attn", "attention")]
            if side == "decoder":
                attentions.append(("encoder_attn", "cross_attention"))
            for theirs, ours in attentions:
                for t_name, o_name in _ATTENTION:
                    t[f"{p}{theirs}.{t_name}.weight"] = flat[
                        f"{q}{ours}/{o_name}/kernel"].reshape(d, d).T
                    t[f"{p}{theirs}.{t_name}.bias"] = flat[f"{q}{ours}/{o_name}/bias"].reshape(d)
                t[f"{p}{theirs}.out_proj.weight"] = flat[f"{q}{ours}/out/kernel"].reshape(d, d).T
                t[f"{p}{theirs}.out_proj.bias"] = flat[f"{q}{ours}/out/bias"]
            for theirs, ours in _NORMS:
                if ours == "cross_attention_norm" and side == "encoder":
                    continue
                t[f"{p}{theirs}.weight"] = flat[f"{q}{ours}/scale"]
                t[f"{p}{theirs}.bias"] = flat[f"{q}{ours}/bias"]
            for theirs, ours in (("fc1", "wi"), ("fc2", "wo")):
                t[f"{p}{theirs}.weight"] = flat[f"{q}mlp/{ours}/kernel"].T
                t[f"{p}{theirs}.bias"] = flat[f"{q}mlp/{ours}/bias"]
    if not m.tie_embeddings:
        t["lm_head.weight"] = flat["lm_head/kernel"].T
    activation = {"gelu_exact": "gelu", "gelu": "gelu_new"}.get(m.activation, m.activation)
    hf = {"model_type": MODEL_TYPE, "architectures": ["BartForConditionalGeneration"],
          "vocab_size": m.vocab_size, "d_model": d, "encoder_layers": enc_layers,
          "decoder_layers": dec_layers, "encoder_attention_heads": m.num_heads,
          "decoder_attention_heads": m.num_heads, "encoder_ffn_dim": m.mlp_dim,
          "decoder_ffn_dim": m.mlp_dim, "max_position_embeddings": m.max_len,
          "activation_function": activation, "scale_embedding": m.scale_embeddings,
          "tie_word_embeddings": m.tie_embeddings, "dropout": 0.0, "attention_dropout": 0.0,
          "activation_dropout": 0.0, "is_encoder_decoder": True}
    return hf, t
