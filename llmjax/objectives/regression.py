"""Sentence(-pair) regression on the pooled state (an encoder's [CLS], a decoder's last token;
STS-B-style similarity scores): the classifier head with one output, trained with squared error.

Inputs are packed as for classification. The label column holds numbers; anything else is a
data error naming the record. Metrics: loss = mean squared error, and Pearson's r from summed
moments (exact under any split of the data); Spearman's rank correlation needs every
prediction at once, so the eval records are scored on the host (evaluation/ranks.py).
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from llmjax.data.text_builder import DataError
from llmjax.data.tokenizers import Tokenizer
from llmjax.objectives.base import NO_REGULARIZERS, MetricSums, Regularizers
from llmjax.objectives.pairs import (
    ArrayExamples,
    FineTuningTask,
    class_logits,
    encoded_pair_examples,
    padding_pair,
)


def parse_score(text: str, index: int, column: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise DataError(f"record {index}: {column}={text!r} is not a number; regression needs "
                        "numeric labels (for class names use objective=classification)") from None


class Regression(FineTuningTask):
    name = "regression"
    prediction = "score"

    def model_kwargs(self, config: ml_collections.ConfigDict) -> dict:
        return {"heads": ("classifier",), "num_classes": 1}

    @staticmethod
    def host_eval() -> type:
        """What evaluation adds on the host: every eval record scored, Spearman's rho."""
        from llmjax.evaluation.ranks import RankEval

        return RankEval

    def make_examples(self, records: Sequence[dict], tokenizer: Tokenizer,
                      config: ml_collections.ConfigDict, *, train: bool) -> ArrayExamples:
        column = config.data.label_column
        return encoded_pair_examples(
            records, tokenizer, config, lambda text, i: parse_score(text, i, column), np.float32)

    def padding_example(self, seq_len: int) -> dict[str, np.ndarray]:
        return padding_pair(seq_len, np.float32)

    def loss(self, model, batch: dict[str, jax.Array], rng: jax.Array | None,
             regularizers: Regularizers = NO_REGULARIZERS) -> MetricSums:
        """Squared error; `regularizers` are for cross-entropies (validation refuses them)."""
        predicted = class_logits(model, batch, rng)[:, 0]
        target, weights = batch["label"], batch["weights"]
        count = weights.sum()
        squared = ((predicted - target) ** 2 * weights).sum()
        # weighted [n, sum x, sum y, sum xx, sum yy, sum xy] for Pearson's r (x predicted, y true)
        moments = jnp.stack([count, (weights * predicted).sum(), (weights * target).sum(),
                             (weights * predicted**2).sum(), (weights * target**2).sum(),
                             (weights * predicted * target).sum()])
        return {"loss": (squared, count), "moments": (moments, jnp.ones(()))}
