"""RoBERTa and XLM-RoBERTa (RobertaModel / RobertaForMaskedLM / RobertaForSequenceClassification
/ RobertaForTokenClassification / RobertaForQuestionAnswering, and the XLMRoberta* classes)
<-> llmjax EncoderWithHeads.

RoBERTa is BERT's body (bert.BodyReader / BodyWriter) with three differences: one token type
(`model.num_token_types=1`: every token reads type 0), positions counted from the padding id
+ 1 (row pad + 1 of the table is position 0; the rows before it are never read for real
tokens and are cut on import, written as zeros on export), and its own heads. The LM head is
`lm_head.dense -> gelu -> lm_head.layer_norm -> tied decoder + lm_head.bias`, BERT's MLM head
under other names. The sequence classifier is `classifier.dense -> tanh -> classifier.out_proj`
on the first token: llmjax's pooler and classifier (dropout sits elsewhere, so the function
is the same at eval). Pairs are laid out `<s> a </s></s> b </s>` by the tokenizer's own
post-processor (Tokenizer.pair_separator).
"""

from __future__ import annotations

import ml_collections
import numpy as np

from llmjax.convert import bert
from llmjax.convert.common import settings_problems

MODEL_TYPE = "roberta"
MODEL_TYPES = ("roberta", "xlm-roberta")  # one architecture; XLM-R has a SentencePiece vocabulary
IGNORED = (r"(roberta\.)?embeddings\.(position_ids|token_type_ids)",
           r"lm_head\.decoder\.(weight|bias)")  # the decoder is the tied embedding table
HEADS = bert.HEADS
POSITIONS_AFTER_PAD = True  # export_tensors needs the tokenizer's pad id (pad_id=)


def _objective_of(hf: dict, tensors: dict) -> str:
    if "lm_head.bias" in tensors:
        return "mlm"
    # else RobertaModel (a fresh head) or RobertaForSequenceClassification
    return bert.task_objective(hf, tensors) or "classification"


def position_offset(hf: dict) -> int:
    """Row of position 0 in the position table: padding id + 1."""
    pad = hf.get("pad_token_id")
    return (1 if pad is None else pad) + 1


def configure(config: ml_collections.ConfigDict, hf: dict, tensors: dict, objective: str | None
              ) -> None:
    bert.configure(config, hf, tensors, objective or _objective_of(hf, tensors))
    m = config.model
    m.max_len = hf["max_position_embeddings"] - position_offset(hf)
    m.num_token_types = hf.get("type_vocab_size", 1)
    m.norm_epsilon = hf.get("layer_norm_eps", 1e-5)
    config.seq_len = min(config.seq_len, m.max_len)


def import_tensors(hf: dict, tensors: dict[str, np.ndarray], config: ml_collections.ConfigDict
                   ) -> tuple[dict[str, np.ndarray], set[str]]:
    m = config.model
    d = m.emb_dim
    r = bert.BodyReader(tensors, "roberta.")
    r.encoder(m)
    offset = position_offset(hf)
    positions = r.out["encoder/position_embed/embedding"]
    r.out["encoder/position_embed/embedding"] = positions[offset: offset + m.max_len]
    if "pooler.dense.weight" in r:
        r.dense("pooler/dense", "pooler.dense", (d,), (d,))
    if "lm_head.bias" in r:
        r.dense("mlm_head/transform", "lm_head.dense", (d,), (d,))
        r.norm("mlm_head/norm", "lm_head.layer_norm")
        r.out["mlm_head/output_bias"] = r.get("lm_head.bias")
    if "classifier.out_proj.weight" in r:  # sequence classification: dense + tanh, out_proj
        r.dense("pooler/dense", "classifier.dense", (d,), (d,))
        r.dense("classifier/dense", "classifier.out_proj", (d,),
                (r.get("classifier.out_proj.weight").shape[0],))
    if "classifier.weight" in r:  # token classification
        r.dense("classifier/dense", "classifier", (d,), (r.get("classifier.weight").shape[0],))
    if "qa_outputs.weight" in r and config.objective == "question_answering":
        r.dense("classifier/dense", "qa_outputs", (d,), (2,))
    return r.out, r.body.used


def inexpressible(config: ml_collections.ConfigDict) -> list[str]:
    wanted = {"position_embedding": "learned", "norm": "layernorm", "norm_position": "post",
              "gated_mlp": False, "use_bias": True, "scale_attention": True,
              "num_token_types": 1}
    if config.objective in bert.POOLED_OBJECTIVES:
        wanted["pooler_activation"] = "tanh"
    problems = settings_problems(config.model, wanted, "RoBERTa")
    if config.objective in ("nsp", "mlm_nsp"):
        problems.append(f"objective={config.objective}: RoBERTa has no next-sentence head")
    return problems


def export_tensors(config: ml_collections.ConfigDict, flat: dict[str, np.ndarray],
                   pad_id: int | None = None) -> tuple[dict, dict[str, np.ndarray]]:
    """`pad_id`: the tokenizer's padding id (RoBERTa's 1 when None), which Hugging Face's
    RoBERTa counts positions from."""
    m = config.model
    pad_id = 1 if pad_id is None else pad_id
    w = bert.BodyWriter(flat)
    w.encoder(m, "roberta.")
    table = w.out["roberta.embeddings.position_embeddings.weight"]
    w.out["roberta.embeddings.position_embeddings.weight"] = np.concatenate(
        [np.zeros((pad_id + 1, table.shape[1]), table.dtype), table])
    hf = bert.body_config(m, MODEL_TYPE)
    hf.update(max_position_embeddings=m.max_len + pad_id + 1, pad_token_id=pad_id)
    architecture = "RobertaModel"
    if "pooler/dense/kernel" in flat and config.objective != "classification":
        w.dense("roberta.pooler.dense", "pooler/dense")
    if "mlm_head/output_bias" in flat:
        w.dense("lm_head.dense", "mlm_head/transform")
        w.norm("lm_head.layer_norm", "mlm_head/norm")
        w.out["lm_head.bias"] = flat["mlm_head/output_bias"]
        architecture = "RobertaForMaskedLM"
    task = w.task_heads(config, "classifier.dense", "classifier.out_proj")
    hf.update(w.labels, architectures=["Roberta" + task if task else architecture])
    return hf, w.out
