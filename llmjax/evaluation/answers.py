"""SQuAD's answer metrics: exact match and word-overlap F1 after the official normalisation
(lower case, no punctuation, no English articles, single spaces), each the best over a
question's reference answers. A question without an answer (SQuAD 2.0) scores 1 only for an
empty prediction, as the official v2.0 script scores it."""

from __future__ import annotations

import collections
import re
import string
from collections.abc import Sequence

_PUNCTUATION = frozenset(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalize_answer(text: str) -> str:
    """The official SQuAD normalisation: lower case, punctuation removed, articles removed,
    whitespace collapsed."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def answer_f1(prediction: str, reference: str) -> float:
    """Harmonic mean of precision and recall of the normalised words (as bags); two empty
    answers agree (1.0), an empty one and a non-empty one do not (0.0)."""
    predicted, expected = normalize_answer(prediction).split(), normalize_answer(reference).split()
    if not predicted or not expected:
        return float(predicted == expected)
    common = sum((collections.Counter(predicted) & collections.Counter(expected)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(predicted), common / len(expected)
    return 2 * precision * recall / (precision + recall)


def answer_scores(prediction: str, references: Sequence[str]) -> tuple[float, float]:
    """(exact match, F1) of one prediction: the best over `references` (none: the question has
    no answer, and only an empty prediction is right)."""
    references = list(references) or [""]
    exact = max(float(normalize_answer(prediction) == normalize_answer(r)) for r in references)
    return exact, max(answer_f1(prediction, r) for r in references)


def squad_metrics(predictions: Sequence[str], references: Sequence[Sequence[str]]
                  ) -> dict[str, float]:
    """{exact_match, f1}: means over the questions, as fractions (the official script's
    percentages / 100)."""
    if not predictions:
        return {"exact_match": 0.0, "f1": 0.0}
    scores = [answer_scores(p, r) for p, r in zip(predictions, references, strict=True)]
    return {"exact_match": sum(e for e, _ in scores) / len(scores),
            "f1": sum(f for _, f in scores) / len(scores)}
