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
POOLED_OBJECTIVES = ("classification", "regression", "nsp", "mlm_nsp")  # use the pooler
_ACTIVATIONS = {"gelu": "gelu_exact", "gelu_new": "gelu", "relu": "relu", "silu": "silu"}


# A BERT-layout block's tensors: llmjax's name -> the Hugging Face family's, under `layer`
LAYOUT = {"layer": "encoder.layer.{i}.", "query": "attention.self.query",
          "key": "attention.self.key", "value": "attention.self.value",
          "out": "attention.output.dense", "attention_norm": "attention.output.LayerNorm",
          "wi": "intermediate.dense", "wo": "output.dense", "mlp_norm": "output.LayerNorm"}


def task_objective(hf: dict, tensors: dict) -> str | None:
    """A BERT-family checkpoint's fine-tuning task by its head: token classification (by the
    architecture: its `classifier` is a sequence classifier's too), question answering."""
    if any(a.endswith("ForTokenClassification") for a in hf.get("architectures") or ()):
        return "token_classification"
    if "qa_outputs.weight" in tensors:  # ForQuestionAnswering: start and end logits
        return "question_answering"
    return None


def _objective_of(hf: dict, tensors: dict) -> str:
    if task := task_objective(hf, tensors):
        return task
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


class BodyReader:
    """BERT-layout tensors (with or without `prefix`, `bert.` or `roberta.`) read into llmjax
    names (`out`), recording what was read (`body.used`)."""

    def __init__(self, tensors: dict[str, np.ndarray], prefix: str):
        self.body = TensorReader(tensors, prefix)
        self.out: dict[str, np.ndarray] = {}

    def __contains__(self, name: str) -> bool:
        return name in self.body

    def get(self, short: str) -> np.ndarray:
        if short not in self.body:  # old checkpoints: LayerNorm.gamma / beta
            short = short.replace("LayerNorm.weight", "LayerNorm.gamma").replace(
                "LayerNorm.bias", "LayerNorm.beta")
        return self.body(short)

    def norm(self, ours: str, theirs: str) -> None:
        self.out[f"{ours}/scale"] = self.get(f"{theirs}.weight")
        self.out[f"{ours}/bias"] = self.get(f"{theirs}.bias")

    def dense(self, ours: str, theirs: str, in_shape, out_shape) -> None:
        self.out[f"{ours}/kernel"] = self.get(f"{theirs}.weight").T.reshape(*in_shape,
                                                                             *out_shape)
        self.out[f"{ours}/bias"] = self.get(f"{theirs}.bias").reshape(out_shape)

    def encoder(self, m: ml_collections.ConfigDict, layout: dict = LAYOUT) -> None:
        """The embeddings (token types when the model has them) and the blocks, named as
        `layout` names them (BERT's, or DistilBERT's)."""
        h, d = m.num_heads, m.emb_dim
        k = d // h
        e = "embeddings."
        self.out.update({
            "encoder/embed/embedding": self.get(e + "word_embeddings.weight"),
            "encoder/position_embed/embedding": self.get(e + "position_embeddings.weight")})
        if m.num_token_types:
            self.out["encoder/token_type_embed/embedding"] = self.get(
                e + "token_type_embeddings.weight")
        self.norm("encoder/embed_norm", e + "LayerNorm")
        for i in range(m.num_layers):
            p, q = layout["layer"].format(i=i), f"encoder/layers/{i}/"
            for name in ("query", "key", "value"):
                self.dense(q + f"attention/{name}", p + layout[name], (d,), (h, k))
            self.dense(q + "attention/out", p + layout["out"], (h, k), (d,))
            self.dense(q + "mlp/wi", p + layout["wi"], (d,), (m.mlp_dim,))
            self.dense(q + "mlp/wo", p + layout["wo"], (m.mlp_dim,), (d,))
            for norm in ("attention_norm", "mlp_norm"):
                self.norm(q + norm, p + layout[norm])


def import_tensors(hf: dict, tensors: dict[str, np.ndarray], config: ml_collections.ConfigDict
                   ) -> tuple[dict[str, np.ndarray], set[str]]:
    m = config.model
    d = m.emb_dim
    r = BodyReader(tensors, "bert.")
    r.encoder(m)
    if "pooler.dense.weight" in r:
        r.dense("pooler/dense", "pooler.dense", (d,), (d,))
    if "cls.predictions.bias" in r:
        r.dense("mlm_head/transform", "cls.predictions.transform.dense", (d,), (d,))
        r.norm("mlm_head/norm", "cls.predictions.transform.LayerNorm")
        r.out["mlm_head/output_bias"] = r.get("cls.predictions.bias")
    if "cls.seq_relationship.weight" in r:
        r.dense("nsp_head/dense", "cls.seq_relationship", (d,), (2,))
    if "classifier.weight" in r:
        r.dense("classifier/dense", "classifier", (d,), (r.get("classifier.weight").shape[0],))
    if "qa_outputs.weight" in r and config.objective == "question_answering":
        r.dense("classifier/dense", "qa_outputs", (d,), (2,))  # our token classifier, 2 classes
    return r.out, r.body.used


def inexpressible(config: ml_collections.ConfigDict) -> list[str]:
    m = config.model
    wanted = {"position_embedding": "learned", "norm": "layernorm", "norm_position": "post",
              "gated_mlp": False, "use_bias": True, "scale_attention": True}
    if config.objective in POOLED_OBJECTIVES:
        wanted["pooler_activation"] = "tanh"
    problems = settings_problems(m, wanted, "BERT")
    return problems


class BodyWriter:
    """llmjax parameters (`flat`) written as BERT-layout tensors (`out`)."""

    def __init__(self, flat: dict[str, np.ndarray]):
        self.flat = flat
        self.out: dict[str, np.ndarray] = {}
        self.labels: dict = {}  # id2label / label2id, once task_heads wrote a classifier

    def norm(self, theirs: str, ours: str) -> None:
        self.out[f"{theirs}.weight"] = self.flat[f"{ours}/scale"]
        self.out[f"{theirs}.bias"] = self.flat[f"{ours}/bias"]

    def dense(self, theirs: str, ours: str) -> None:
        kernel, bias = self.flat[f"{ours}/kernel"], self.flat[f"{ours}/bias"].reshape(-1)
        self.out[f"{theirs}.weight"] = kernel.reshape(-1, bias.size).T  # [*in, *out] -> [out, in]
        self.out[f"{theirs}.bias"] = bias

    def encoder(self, m: ml_collections.ConfigDict, prefix: str, layout: dict = LAYOUT
                ) -> None:
        """The embeddings and the blocks, under `prefix` (`bert.`, `roberta.`,
        `distilbert.`), named as `layout` names them."""
        e, f = prefix + "embeddings.", self.flat
        self.out[e + "word_embeddings.weight"] = f["encoder/embed/embedding"]
        self.out[e + "position_embeddings.weight"] = f["encoder/position_embed/embedding"]
        if m.num_token_types:
            self.out[e + "token_type_embeddings.weight"] = f[
                "encoder/token_type_embed/embedding"]
        self.norm(e + "LayerNorm", "encoder/embed_norm")
        for i in range(m.num_layers):
            p, q = prefix + layout["layer"].format(i=i), f"encoder/layers/{i}/"
            for name in ("query", "key", "value", "out"):
                self.dense(p + layout[name], q + f"attention/{name}")
            for name in ("wi", "wo"):
                self.dense(p + layout[name], q + f"mlp/{name}")
            for norm in ("attention_norm", "mlp_norm"):
                self.norm(p + layout[norm], q + norm)

    def task_heads(self, config: ml_collections.ConfigDict, pooler: str | None,
                   classifier: str) -> str | None:
        """The classifier under the family's names: `qa_outputs` (question answering),
        `classifier` (token classification), else the sequence classifier `pooler` (None:
        written with the body) + `classifier`; with the labels in `self.labels`. Returns the
        architecture's suffix (`ForSequenceClassification`, ...), None without a classifier."""
        if "classifier/dense/kernel" not in self.flat:
            return None
        if config.objective == "question_answering":
            self.dense("qa_outputs", "classifier/dense")
            return "ForQuestionAnswering"
        self.labels = label_config(config)
        if config.objective == "token_classification":
            self.dense("classifier", "classifier/dense")
            return "ForTokenClassification"
        if pooler is not None:
            self.dense(pooler, "pooler/dense")
        self.dense(classifier, "classifier/dense")
        return "ForSequenceClassification"


def body_config(m: ml_collections.ConfigDict, model_type: str) -> dict:
    """config.json's body settings of a BERT-layout model."""
    return {"model_type": model_type, "vocab_size": m.vocab_size, "hidden_size": m.emb_dim,
            "num_hidden_layers": m.num_layers, "num_attention_heads": m.num_heads,
            "intermediate_size": m.mlp_dim, "max_position_embeddings": m.max_len,
            "hidden_act": {"gelu_exact": "gelu", "gelu": "gelu_new"}.get(m.activation,
                                                                          m.activation),
            "layer_norm_eps": m.norm_epsilon, "type_vocab_size": m.num_token_types,
            "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}


def label_config(config: ml_collections.ConfigDict) -> dict:
    """id2label / label2id of a classification run's data.labels."""
    labels = (config.data.labels or "").split(",")
    return {"id2label": {str(i): name for i, name in enumerate(labels)},
            "label2id": {name: i for i, name in enumerate(labels)}}


def export_tensors(config: ml_collections.ConfigDict, flat: dict[str, np.ndarray]
                   ) -> tuple[dict, dict[str, np.ndarray]]:
    m = config.model
    w = BodyWriter(flat)
    w.encoder(m, "bert.")
    architecture = "BertModel"
    if "pooler/dense/kernel" in flat:
        w.dense("bert.pooler.dense", "pooler/dense")
    if "mlm_head/output_bias" in flat:
        w.dense("cls.predictions.transform.dense", "mlm_head/transform")
        w.norm("cls.predictions.transform.LayerNorm", "mlm_head/norm")
        w.out["cls.predictions.bias"] = flat["mlm_head/output_bias"]
        architecture = "BertForMaskedLM"
    if "nsp_head/dense/kernel" in flat:
        w.dense("cls.seq_relationship", "nsp_head/dense")
        architecture = "BertForPreTraining" if "mlm_head/output_bias" in flat else \
            "BertForNextSentencePrediction"
    hf = body_config(m, MODEL_TYPE)
    task = w.task_heads(config, None, "classifier")  # the pooler is written above
    hf.update(w.labels, architectures=["Bert" + task if task else architecture])
    return hf, w.out
