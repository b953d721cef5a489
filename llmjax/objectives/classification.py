"""Sequence(-pair) classification on the pooled [CLS] state of an encoder, or the last token's
state of a decoder: [<bos>] a [<eos>] (b [<eos>]), token types 0 for a and 1 for b (an
encoder's), longest-first truncation to seq_len.

The label set is read from the training split once (sorted label strings) and recorded in the
run's config as `data.labels`, so eval and predict map labels the same way; a label outside it
is an error. Metrics: loss, accuracy, and precision / recall / F1 / MCC from the summed
confusion matrix (binary: positive class = the second label).
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from llmjax.data.packing import pack_pair
from llmjax.data.sources import column_text, iter_records, open_split
from llmjax.data.text_builder import DataError
from llmjax.data.tokenizers import Tokenizer
from llmjax.objectives.base import (
    NO_REGULARIZERS,
    MetricSums,
    Regularizers,
    cross_entropy,
)
from llmjax.objectives.pairs import (
    ArrayExamples,
    FineTuningTask,
    class_logits,
    encoded_pair_examples,
    padding_pair,
)


def label_names(config: ml_collections.ConfigDict) -> list[str]:
    return config.data.labels.split(",")


def encode_pair(tokenizer: Tokenizer, text: str, pair: str | None, seq_len: int
                ) -> tuple[np.ndarray, np.ndarray]:
    """(tokens, token types) [<= seq_len] of a text (pair); the longer part is trimmed first."""
    b = tokenizer.encode_array(pair) if pair is not None else None
    return pack_pair(tokenizer.encode_array(text), b, seq_len, tokenizer)


class Classification(FineTuningTask):
    name = "classification"

    def resolve_config(self, config: ml_collections.ConfigDict) -> None:
        """Fills data.labels (from the training split) and model.num_classes."""
        if config.data.labels is None:
            records = open_split(config.data.source, config.data.train_split, config)
            values = {column_text(record, config.data.label_column)
                      for record in iter_records(records)}
            config.data.labels = ",".join(sorted(values, key=_label_order))
        config.model.num_classes = len(label_names(config))

    def model_kwargs(self, config: ml_collections.ConfigDict) -> dict:
        return {"heads": ("classifier",), "num_classes": len(label_names(config))}

    def make_examples(self, records: Sequence[dict], tokenizer: Tokenizer,
                      config: ml_collections.ConfigDict, *, train: bool) -> ArrayExamples:
        labels = {name: i for i, name in enumerate(label_names(config))}

        def parse_label(label: str, index: int) -> int:
            if label not in labels:
                raise DataError(f"label {label!r} (record {index}) is not in the label set "
                                f"{sorted(labels)}; an eval source needs labels from the "
                                "training set (unlabelled data, e.g. GLUE test, cannot be "
                                "evaluated)")
            return labels[label]

        return encoded_pair_examples(records, tokenizer, config, parse_label)

    def padding_example(self, seq_len: int) -> dict[str, np.ndarray]:
        return padding_pair(seq_len)

    def loss(self, model, batch: dict[str, jax.Array], rng: jax.Array | None,
             regularizers: Regularizers = NO_REGULARIZERS) -> MetricSums:
        logits = class_logits(model, batch, rng)
        weights = batch["weights"]
        loss_sum = (cross_entropy(logits, batch["label"], regularizers) * weights).sum()
        predicted = logits.argmax(-1)
        correct = ((predicted == batch["label"]) * weights).sum()
        classes = logits.shape[-1]
        confusion = jnp.einsum("b,bi,bj->ij", weights, jax.nn.one_hot(batch["label"], classes),
                               jax.nn.one_hot(predicted, classes))
        count = weights.sum()
        return {"loss": (loss_sum, count), "accuracy": (correct, count),
                "confusion": (confusion, jnp.ones(()))}


def _label_order(label: str):
    """Numeric labels in numeric order ('2' before '10'), others alphabetically."""
    try:
        return (0, float(label), label)
    except ValueError:
        return (1, 0.0, label)
