"""BERT (BertModel / BertForPreTraining / BertForMaskedLM / BertForSequenceClassification /
BertForTokenClassification / BertForQuestionAnswering) <-> llmjax EncoderWithHeads.

BERT is a post-LayerNorm encoder with token-type embeddings, an embedding LayerNorm, learned
positions and exact GELU. PyTorch Linear weights are [out, in]: transposed into llmjax's [in,
out] kernels. Checkpoints may or may not carry the `bert.` prefix, and old ones name LayerNorm
parameters gamma / beta.
"""

from __future__ import annotations

import ml_collections
import numpy as np

from llmjax.convert.common import TensorReader, settings_problems

MODEL_TYPE = "bert"
IGNORED = (r"(bert\.)?embeddings\.position_ids", r"cls\.predictions\.decoder\.(weight|bias)")
HEADS = ("mlm_head", "nsp_head", "classifier", "pooler")  # droppable / re-initialisable
_ACTIVATIONS = {"gelu": "gelu_exact", "gelu_new": "gelu", "relu": "relu", "silu": "silu"}


def _objective_of(hf: dict, tensors: dict) -> str:
    if any(a.endswith("ForTokenClassification") for a in hf.get("architectures") or ()):
        return "token_classification"
    if "qa_outputs.weight" in tensors:  # BertForQuestionAnswering: start and end logits
        return "question_answering"
    names = set(tensors)
    has_mlm = "cls.predictions.bias" in names
    has_nsp = "cls.seq_relationship.weight" in names
    if has_mlm and has_nsp:
        return "mlm_nsp"
    if has_mlm:
        return "mlm"
    if has_nsp:
        return "nsp"
    return "classification"  # BertModel (a fresh classifier) or BertForSequenceClassification


def configure(config: ml_collections.ConfigDict, hf: dict, tensors: dict, objective: str | None
              ) -> None:
    m = config.model
    m.arch = "encoder"
    config.objective = objective or _objective_of(hf, tensors)
    m.num_layers, m.num_heads, m.emb_dim = (hf["num_hidden_layers"], hf["num_attention_heads"],
                                            hf["hidden_size"])
    m.mlp_dim, m.max_len = hf["intermediate_size"], hf["max_position_embeddings"]
    m.vocab_size = hf["vocab_size"]
    m.activation = _ACTIVATIONS[hf.get("hidden_act", "gelu")]
    m.norm, m.norm_position = "layernorm", "post"
    m.norm_epsilon = hf.get("layer_norm_eps", 1e-12)
    m.position_embedding, m.use_bias, m.tie_embeddings = "learned", True, True
    m.dropout_rate = m.attention_dropout_rate = 0.0
    if config.objective in ("classification", "token_classification"):
        labels = hf.get("id2label") or {"0": "LABEL_0", "1": "LABEL_1"}
        config.data.labels = ",".join(labels[str(i)] if str(i) in labels else labels[i]
                                      for i in range(len(labels)))
        m.num_classes = len(labels)
    if config.objective == "question_answering":
        m.num_classes = 2
    config.seq_len = min(config.seq_len, m.max_len)


def import_tensors(hf: dict, tensors: dict[str, np.ndarray], config: ml_collections.ConfigDict
                   ) -> tuple[dict[str, np.ndarray], set[str]]:
    m = config.model
    h, d = m.num_heads, m.emb_dim
    k = d // h
    body = TensorReader(tensors, "bert.")

    def get(short: str) -> np.ndarray:
        if short not in body:  # old checkpoints: LayerNorm.gamma / beta
            short = short.replace("LayerNorm.weight", "LayerNorm.gamma").replace(
                "LayerNorm.bias", "LayerNorm.beta")
        return body(short)

    def norm(ours: str, theirs: str) -> None:
        out[f"{ours}/scale"], out[f"{ours}/bias"] = get(f"{theirs}.weight"), get(f"{theirs}.bias")

    def dense(ours: str, theirs: str, in_shape, out_shape) -> None:
        out[f"{ours}/kernel"] = get(f"{theirs}.weight").T.reshape(*in_shape, *out_shape)
        out[f"{ours}/bias"] = get(f"{theirs}.bias").reshape(out_shape)

    e = "embeddings."
    out = {"encoder/embed/embedding": get(e + "word_embeddings.weight"),
           "encoder/position_embed/embedding": get(e + "position_embeddings.weight"),
           "encoder/token_type_embed/embedding": get(e + "token_type_embeddings.weight")}
    norm("encoder/embed_norm", e + "LayerNorm")
    for i in range(m.num_layers):
        p, q = f"encoder.layer.{i}.", f"encoder/layers/{i}/"
        for name in ("query", "key", "value"):
            dense(q + f"attention/{name}", p + f"attention.self.{name}", (d,), (h, k))
        dense(q + "attention/out", p + "attention.output.dense", (h, k), (d,))
        norm(q + "attention_norm", p + "attention.output.LayerNorm")
        dense(q + "mlp/wi", p + "intermediate.dense", (d,), (m.mlp_dim,))
        dense(q + "mlp/wo", p + "output.dense", (m.mlp_dim,), (d,))
        norm(q + "mlp_norm", p + "output.LayerNorm")
    if "pooler.dense.weight" in body:
        dense("pooler/dense", "pooler.dense", (d,), (d,))
    if "cls.predictions.bias" in body:
        dense("mlm_head/transform", "cls.predictions.transform.dense", (d,), (d,))
        norm("mlm_head/norm", "cls.predictions.transform.LayerNorm")
        out["mlm_head/output_bias"] = get("cls.predictions.bias")
    if "cls.seq_relationship.weight" in body:
        dense("nsp_head/dense", "cls.seq_relationship", (d,), (2,))
    if "classifier.weight" in body:
        dense("classifier/dense", "classifier", (d,), (body("classifier.weight").shape[0],))
    if "qa_outputs.weight" in body and config.objective == "question_answering":
        dense("classifier/dense", "qa_outputs", (d,), (2,))  # our token classifier, 2 classes
    return out, body.used


def inexpressible(config: ml_collections.ConfigDict) -> list[str]:
    m = config.model
    wanted = {"position_embedding": "learned", "norm": "layernorm", "norm_position": "post",
              "gated_mlp": False, "use_bias": True, "scale_attention": True}
    problems = settings_problems(m, wanted, "BERT")
    return problems


def export_tensors(config: ml_collections.ConfigDict, flat: dict[str, np.ndarray]
                   ) -> tuple[dict, dict[str, np.ndarray]]:
    m = config.model
    d = m.emb_dim
    t: dict[str, np.ndarray] = {}

    def norm(theirs: str, ours: str) -> None:
        t[f"{theirs}.weight"], t[f"{theirs}.bias"] = flat[f"{ours}/scale"], flat[f"{ours}/bias"]

    def dense(theirs: str, ours: str) -> None:
        kernel = flat[f"{ours}/kernel"]
        bias = flat[f"{ours}/bias"].reshape(-1)
        t[f"{theirs}.weight"] = kernel.reshape(-1, bias.size).T  # [*in, *out] -> [out, in]
        t[f"{theirs}.bias"] = bias

    e = "bert.embeddings."
    t[e + "word_embeddings.weight"] = flat["encoder/embed/embedding"]
    t[e + "position_embeddings.weight"] = flat["encoder/position_embed/embedding"]
    t[e + "token_type_embeddings.weight"] = flat["encoder/token_type_embed/embedding"]
    norm(e + "LayerNorm", "encoder/embed_norm")
    for i in range(m.num_layers):
        p, q = f"bert.encoder.layer.{i}.", f"encoder/layers/{i}/"
        for name in ("query", "key", "value"):
            dense(p + f"attention.self.{name}", q + f"attention/{name}")
        dense(p + "attention.output.dense", q + "attention/out")
        norm(p + "attention.output.LayerNorm", q + "attention_norm")
        dense(p + "intermediate.dense", q + "mlp/wi")
        dense(p + "output.dense", q + "mlp/wo")
        norm(p + "output.LayerNorm", q + "mlp_norm")
    architecture = "BertModel"
    if "pooler/dense/kernel" in flat:
        dense("bert.pooler.dense", "pooler/dense")
    if "mlm_head/output_bias" in flat:
        dense("cls.predictions.transform.dense", "mlm_head/transform")
        norm("cls.predictions.transform.LayerNorm", "mlm_head/norm")
        t["cls.predictions.bias"] = flat["mlm_head/output_bias"]
        architecture = "BertForMaskedLM"
    if "nsp_head/dense/kernel" in flat:
        dense("cls.seq_relationship", "nsp_head/dense")
        architecture = "BertForPreTraining" if "mlm_head/output_bias" in flat else \
            "BertForNextSentencePrediction"
    hf = {"model_type": MODEL_TYPE, "vocab_size": m.vocab_size, "hidden_size": d,
          "num_hidden_layers": m.num_layers, "num_attention_heads": m.num_heads,
          "intermediate_size": m.mlp_dim, "max_position_embeddings": m.max_len,
          "hidden_act": {"gelu_exact": "gelu", "gelu": "gelu_new"}.get(m.activation,
                                                                        m.activation),
          "layer_norm_eps": m.norm_epsilon, "type_vocab_size": 2,
          "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}
    if "classifier/dense/kernel" in flat and config.objective == "question_answering":
        dense("qa_outputs", "classifier/dense")
        architecture = "BertForQuestionAnswering"
    elif "classifier/dense/kernel" in flat:
        dense("classifier", "classifier/dense")
        architecture = ("BertForTokenClassification"
                        if config.objective == "token_classification"
                        else "BertForSequenceClassification")
        labels = (config.data.labels or "").split(",")
        hf["id2label"] = {str(i): name for i, name in enumerate(labels)}
        hf["label2id"] = {name: i for i, name in enumerate(labels)}
    hf["architectures"] = [architecture]
    return hf, t
