"""Causal language modelling: predict each token from the ones before it in its document."""

from __future__ import annotations

from collections.abc import Sequence

import jax
import ml_collections
import numpy as np

from llmjax.data import packing
from llmjax.data.sources import read_documents
from llmjax.data.tokenizers import Tokenizer
from llmjax.objectives.base import NO_REGULARIZERS, MetricSums, Regularizers
from llmjax.objectives.lm_loss import token_sums


class CausalLM:
    name = "causal_lm"
    chunks_logits = True  # its loss honours model.logits_chunks (lm_loss.token_sums)

    def model_kwargs(self, config: ml_collections.ConfigDict) -> dict:
        return {}

    def make_examples(self, records: Sequence[dict], tokenizer: Tokenizer,
                      config: ml_collections.ConfigDict, *, train: bool) -> packing.Windows:
        docs = read_documents(records, config.data.text_column)
        tokens, doc_ids = packing.token_stream(tokenizer.encode_batch(docs), tokenizer)
        stride, scored_tail = config.seq_len, None
        if train and config.data.train_window_stride:
            stride = config.data.train_window_stride
        sliding = config.data.eval_window_stride
        if not train and sliding and sliding < config.seq_len:
            stride = scored_tail = sliding
        return packing.Windows(tokens, doc_ids, config.seq_len, stride,
                               keep_partial=not train, pad_id=tokenizer.pad_id,
                               scored_tail=scored_tail)

    def padding_example(self, seq_len: int) -> dict[str, np.ndarray]:
        zeros = np.zeros((seq_len,), np.int32)
        return {"inputs": zeros, "targets": zeros, "segment_ids": zeros,
                "weights": np.zeros((seq_len,), np.float32)}

    def loss(self, model, batch: dict[str, jax.Array], rng: jax.Array | None,
             regularizers: Regularizers = NO_REGULARIZERS) -> MetricSums:
        hidden = model.hidden_states(batch["inputs"], segment_ids=batch["segment_ids"], rng=rng)
        weights = batch["weights"]
        loss_sum, correct = token_sums(model, hidden, batch["targets"], weights, regularizers)
        count = weights.sum()
        return {"loss": (loss_sum, count), "token_accuracy": (correct, count)}

    def loss_floor(self, config: ml_collections.ConfigDict, tokenizer,
                   eval_batches: list[dict[str, np.ndarray]]) -> float | None:
        """The Bayes-optimal eval loss, for the `generated` source with a char/byte tokenizer."""
        from llmjax.data import pipeline, sources
        from llmjax.data.generated import best_achievable_loss

        source, _ = pipeline.eval_source_and_split(config)
        if source != "generated" or tokenizer.kind not in ("char", "byte"):
            return None
        train_docs = sources.read_documents(
            sources.open_split("generated", config.data.train_split, config), "text")
        return best_achievable_loss(config.data.generated, tokenizer, eval_batches, train_docs)
