"""Corpus scores of decoded texts against their reference texts, chosen by
`eval_decode_metrics`, each computed by the package the field reports it with:

- `bleu`: sacrebleu's corpus BLEU (13a tokenization), 0-100;
- `chrf`: sacrebleu's corpus chrF (character 6-grams, beta 2), 0-100;
- `rouge`: rouge-score's ROUGE-1, ROUGE-2, ROUGE-L and ROUGE-Lsum F-measures (Porter stemming,
  its English tokenizer), the mean over examples x 100, as summarisation papers quote them;
- `exact_match`: the fraction of texts equal to their reference (whitespace-stripped).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

import numpy as np
import sacrebleu

# ROUGE-Lsum scores sentence by sentence, and rouge-score reads sentences as lines; a text
# without line breaks is split after . ! ? and the space that follows (nltk's punkt, which
# Hugging Face's summarisation example uses, is a download this offline pipeline avoids).
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
ROUGE_TYPES = ("rouge1", "rouge2", "rougeL", "rougeLsum")


def sentence_lines(text: str) -> str:
    """`text` with one sentence per line: its own lines, each split after . ! or ?."""
    return "\n".join(sentence for line in text.splitlines()
                     for sentence in _SENTENCE_END.split(line.strip()) if sentence)


def _bleu(hypotheses: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    return {"bleu": float(sacrebleu.corpus_bleu(list(hypotheses), [list(references)]).score)}


def _chrf(hypotheses: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    return {"chrf": float(sacrebleu.corpus_chrf(list(hypotheses), [list(references)]).score)}


def _rouge(hypotheses: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    from rouge_score import rouge_scorer  # imports nltk (~1 s): only runs that ask for ROUGE

    if not hypotheses:
        return dict.fromkeys(ROUGE_TYPES, 0.0)
    scorer = rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=True)
    scores = [scorer.score(sentence_lines(ref), sentence_lines(hyp))  # (target, prediction)
              for hyp, ref in zip(hypotheses, references, strict=True)]
    return {name: 100.0 * float(np.mean([s[name].fmeasure for s in scores]))
            for name in ROUGE_TYPES}


def _exact_match(hypotheses: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    if not hypotheses:
        return {"exact_match": 0.0}
    return {"exact_match": float(np.mean([h.strip() == r.strip() for h, r in
                                          zip(hypotheses, references, strict=True)]))}


# eval_decode_metrics name -> (the metric names it reports, how they are computed)
TEXT_METRICS: dict[str, tuple[tuple[str, ...], Callable]] = {
    "bleu": (("bleu",), _bleu),
    "chrf": (("chrf",), _chrf),
    "rouge": (ROUGE_TYPES, _rouge),
    "exact_match": (("exact_match",), _exact_match),
}


def selection(spec: str) -> tuple[str, ...]:
    """The names of a comma-separated `eval_decode_metrics` value, in its order; ValueError
    for an unknown, repeated or missing name."""
    names = tuple(name.strip() for name in spec.split(","))
    unknown = [name for name in names if name not in TEXT_METRICS]
    if unknown or not all(names) or len(set(names)) != len(names):
        raise ValueError(f"eval_decode_metrics={spec!r}: a comma-separated list of distinct "
                         f"names from {', '.join(TEXT_METRICS)}")
    return names


def reported_names(spec: str) -> tuple[str, ...]:
    """The metric names an eval with `eval_decode_metrics=spec` reports."""
    return tuple(name for choice in selection(spec) for name in TEXT_METRICS[choice][0])


def text_metrics(spec: str, hypotheses: Sequence[str], references: Sequence[str]
                 ) -> dict[str, float]:
    """{metric name: score} of `hypotheses` against `references` (one each), for every metric
    `spec` names."""
    metrics: dict[str, float] = {}
    for choice in selection(spec):
        metrics.update(TEXT_METRICS[choice][1](hypotheses, references))
    return metrics
