"""DistilBERT (DistilBertModel / DistilBertForMaskedLM / DistilBertForSequenceClassification /
DistilBertForTokenClassification / DistilBertForQuestionAnswering) <-> llmjax EncoderWithHeads.

DistilBERT is BERT's post-LayerNorm body, six layers, with no token types
(`model.num_token_types=0`) and no pooler, under its own names: q_lin / k_lin / v_lin /
out_lin, sa_layer_norm, ffn.lin1 / lin2, output_layer_norm (LayerNorm epsilon fixed at 1e-12).
Its sequence classifier is `pre_classifier -> ReLU -> dropout -> classifier` on the first
token: llmjax's pooler with `model.pooler_activation=relu` and its classifier. The MLM head is
BERT's under other names (vocab_transform, vocab_layer_norm, the tied vocab_projector + its
bias). A table of sinusoidal positions (`sinusoidal_pos_embds`) is stored like learned ones
and read as such.
"""

from __future__ import annotations

import ml_collections
import numpy as np

from llmjax.convert import bert
from llmjax.convert.common import HF_ACTIVATIONS, settings_problems

MODEL_TYPE = "distilbert"
IGNORED = (r"(distilbert\.)?embeddings\.position_ids", r"vocab_projector\.weight")  # tied
HEADS = bert.HEADS
_EPSILON = 1e-12  # DistilBERT's LayerNorms, not configurable
LAYOUT = {"layer": "transformer.layer.{i}.", "query": "attention.q_lin",
          "key": "attention.k_lin", "value": "attention.v_lin", "out": "attention.out_lin",
          "attention_norm": "sa_layer_norm", "wi": "ffn.lin1", "wo": "ffn.lin2",
          "mlp_norm": "output_layer_norm"}


def _objective_of(hf: dict, tensors: dict) -> str:
    if "vocab_projector.bias" in tensors:
        return "mlm"
    # else DistilBertModel (a fresh head) or DistilBertForSequenceClassification
    return bert.task_objective(hf, tensors) or "classification"


def configure(config: ml_collections.ConfigDict, hf: dict, tensors: dict, objective: str | None
              ) -> None:
    from llmjax.convert.hf import ConversionError

    activation = hf.get("activation", "gelu")
    if activation not in HF_ACTIVATIONS:
        raise ConversionError(f"DistilBERT activation {activation!r} has no llmjax match")
    # BERT's reading of sizes, labels and objective, from DistilBERT's key names
    as_bert = {**hf, "num_hidden_layers": hf["n_layers"], "num_attention_heads": hf["n_heads"],
               "hidden_size": hf["dim"], "intermediate_size": hf["hidden_dim"],
               "hidden_act": activation}
    bert.configure(config, as_bert, tensors, objective or _objective_of(hf, tensors))
    m = config.model
    m.activation = HF_ACTIVATIONS[activation]
    m.norm_epsilon, m.num_token_types, m.pooler_activation = _EPSILON, 0, "relu"


def import_tensors(hf: dict, tensors: dict[str, np.ndarray], config: ml_collections.ConfigDict
                   ) -> tuple[dict[str, np.ndarray], set[str]]:
    m = config.model
    d = m.emb_dim
    r = bert.BodyReader(tensors, "distilbert.")
    r.encoder(m, LAYOUT)
    if "vocab_projector.bias" in r:
        r.dense("mlm_head/transform", "vocab_transform", (d,), (d,))
        r.norm("mlm_head/norm", "vocab_layer_norm")
        r.out["mlm_head/output_bias"] = r.get("vocab_projector.bias")
    if "pre_classifier.weight" in r:  # sequence classification: pre_classifier + ReLU
        r.dense("pooler/dense", "pre_classifier", (d,), (d,))
    if "classifier.weight" in r:
        r.dense("classifier/dense", "classifier", (d,), (r.get("classifier.weight").shape[0],))
    if "qa_outputs.weight" in r and config.objective == "question_answering":
        r.dense("classifier/dense", "qa_outputs", (d,), (2,))
    return r.out, r.body.used


def inexpressible(config: ml_collections.ConfigDict) -> list[str]:
    m = config.model
    wanted = {"position_embedding": "learned", "norm": "layernorm", "norm_position": "post",
              "gated_mlp": False, "use_bias": True, "scale_attention": True,
              "num_token_types": 0, "norm_epsilon": _EPSILON}
    if config.objective in bert.POOLED_OBJECTIVES:
        wanted["pooler_activation"] = "relu"  # pre_classifier + ReLU
    problems = settings_problems(m, wanted, "DistilBERT")
    if m.activation not in ("gelu_exact", "relu"):
        problems.append(f"model.activation={m.activation!r} (DistilBERT has gelu or relu)")
    if config.objective in ("nsp", "mlm_nsp"):
        problems.append(f"objective={config.objective}: DistilBERT has no next-sentence head")
    return problems


def export_tensors(config: ml_collections.ConfigDict, flat: dict[str, np.ndarray]
                   ) -> tuple[dict, dict[str, np.ndarray]]:
    m = config.model
    w = bert.BodyWriter(flat)
    w.encoder(m, "distilbert.", LAYOUT)
    architecture = "DistilBertModel"
    if "mlm_head/output_bias" in flat:
        w.dense("vocab_transform", "mlm_head/transform")
        w.norm("vocab_layer_norm", "mlm_head/norm")
        w.out["vocab_projector.bias"] = flat["mlm_head/output_bias"]
        architecture = "DistilBertForMaskedLM"
    hf = {"model_type": MODEL_TYPE, "vocab_size": m.vocab_size, "dim": m.emb_dim,
          "n_layers": m.num_layers, "n_heads": m.num_heads, "hidden_dim": m.mlp_dim,
          "max_position_embeddings": m.max_len, "sinusoidal_pos_embds": False,
          "activation": {"gelu_exact": "gelu"}.get(m.activation, m.activation),
          "dropout": 0.0, "attention_dropout": 0.0, "seq_classif_dropout": 0.0,
          "qa_dropout": 0.0}
    task = w.task_heads(config, "pre_classifier", "classifier")
    hf.update(w.labels, architectures=["DistilBert" + task if task else architecture])
    return hf, w.out
