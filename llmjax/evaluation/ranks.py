"""Rank-based evaluation of regression: Spearman's rank correlation of the predicted and true
scores of an eval split (GLUE's STS-B reports it beside Pearson's r). Ranks need every
prediction at once, which the eval step's summed metrics do not gather, so the eval records
are scored on the host as `Run.score` scores them."""

from __future__ import annotations

import ml_collections
import numpy as np
import scipy.stats
from flax import nnx

from llmjax.data import sources
from llmjax.data.sources import column_text, iter_records
from llmjax.objectives.regression import parse_score

_BATCH = 256  # texts scored at once


def spearman(predicted: np.ndarray, true: np.ndarray) -> float:
    """Spearman's rho (Pearson's r of the ranks, ties sharing their mean rank); 0 when either
    side is constant (nothing is ranked)."""
    if np.ptp(predicted) == 0 or np.ptp(true) == 0:
        return 0.0
    return float(scipy.stats.spearmanr(predicted, true).statistic)


class RankEval:
    """Holds an eval split's texts (pairs) and true scores; `__call__(params)` scores a model."""

    @staticmethod
    def metric_names(config: ml_collections.ConfigDict) -> tuple[str, ...]:
        """What __call__ reports."""
        return ("spearman",)

    def __init__(self, config: ml_collections.ConfigDict, tokenizer, graphdef: nnx.GraphDef,
                 source: str, split: str):
        self.config, self.tokenizer, self.graphdef = config, tokenizer, graphdef
        d = config.data
        records = list(iter_records(sources.first_records(source, split, config,
                                                          config.eval_decode_examples)))
        self.texts = [column_text(r, d.text_column) for r in records]
        self.pairs = ([column_text(r, d.text_pair_column) for r in records]
                      if d.text_pair_column else None)
        self.labels = np.asarray([parse_score(column_text(r, d.label_column).strip(), i,
                                              d.label_column) for i, r in enumerate(records)],
                                 np.float64)

    def __call__(self, params: nnx.State) -> tuple[dict[str, float], list[tuple[str, str, str]]]:
        """({spearman}, [(text, true score, predicted score)] for the first eval_samples)."""
        from llmjax.evaluation.choices import run_of

        run = run_of(self.config, self.tokenizer, self.graphdef, params, step=0)
        scores = []
        for lo in range(0, len(self.texts), _BATCH):
            pairs = None if self.pairs is None else self.pairs[lo: lo + _BATCH]
            scores += run.score(self.texts[lo: lo + _BATCH], pairs)
        predicted = np.asarray(scores, np.float64)
        shown = [t if self.pairs is None else f"{t} ||| {p}"
                 for t, p in zip(self.texts, self.pairs or self.texts, strict=True)]
        samples = [(text, f"{label:g}", f"{score:.4g}")
                   for text, label, score in zip(shown, self.labels, predicted, strict=True)]
        return {"spearman": spearman(predicted, self.labels)}, samples[: self.config.eval_samples]
