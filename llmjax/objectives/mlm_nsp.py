"""BERT's pretraining: masked language modelling and next-sentence prediction on the same
inputs, loss = MLM mean + NSP mean.

Examples are NSP's sentence pairs ([<bos>] A [<eos>] B [<eos>], B drawn with every batch, see
nsp.py), masked over both segments afresh for every batch (see mlm.py). The two terms have
different weights (chosen tokens, pairs), so each is divided by its own global count: the
step differentiates sum_t (psum sum_t / psum count_t), exact under pmap and accumulation.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import ml_collections
import numpy as np

from llmjax.data.tokenizers import Tokenizer
from llmjax.objectives.base import NO_REGULARIZERS, MetricSums, Regularizers
from llmjax.objectives.mlm import BertMasking, MaskedLM, mlm_loss
from llmjax.objectives.nsp import SegmentPairs, nsp_loss, padding_first, segment_pairs
from llmjax.objectives.pairs import encode


class MaskedLMAndNextSentence:
    name = "mlm_nsp"
    loss_weights = {"mlm_loss": "mlm_weights", "nsp_loss": "weights"}
    vocab_positions = staticmethod(MaskedLM.vocab_positions)  # the MLM head's, for FLOPs

    def model_kwargs(self, config: ml_collections.ConfigDict) -> dict:
        return {"heads": ("mlm", "nsp")}

    def make_examples(self, records: Sequence[dict], tokenizer: Tokenizer,
                      config: ml_collections.ConfigDict, *, train: bool) -> SegmentPairs:
        masking = BertMasking(tokenizer, config)  # config errors before data errors
        return segment_pairs(records, tokenizer, config, masking)

    def padding_example(self, seq_len: int) -> dict[str, np.ndarray]:
        return padding_first()

    def loss(self, model, batch: dict[str, jax.Array], rng: jax.Array | None,
             regularizers: Regularizers = NO_REGULARIZERS) -> MetricSums:
        hidden = encode(model, batch, rng, tokens_key="inputs")
        mlm_sum, mlm_correct, mlm_count = mlm_loss(model, hidden, batch, "mlm_weights",
                                                   regularizers)
        nsp_sum, nsp_correct, nsp_count = nsp_loss(model, hidden, batch, rng, regularizers)
        return {"mlm_loss": (mlm_sum, mlm_count), "mlm_accuracy": (mlm_correct, mlm_count),
                "nsp_loss": (nsp_sum, nsp_count), "nsp_accuracy": (nsp_correct, nsp_count)}
