"""Zero-shot multiple-choice evaluation, as lm-evaluation-harness scores HellaSwag, ARC or
PIQA: each record's context is followed by each of its choices, the model's log-likelihood of
the choice given the context picks the answer, and accuracy is the fraction picked right.

A decoder scores `context + data.choice_delimiter + choice` (the choice's tokens after <bos> and
the context's); a seq2seq run (encoder-decoder, or a decoder trained on pairs) scores the choice
as the target of the context as source. `choice_accuracy` takes the highest total
log-likelihood, `choice_accuracy_norm` the highest per character of the choice (the harness's
acc_norm), which does not favour short choices.
"""

from __future__ import annotations

import ml_collections
import numpy as np
from flax import nnx

from llmjax.data import sources
from llmjax.data.text_builder import DataError


def record_choices(record: dict, config: ml_collections.ConfigDict, index: int
                   ) -> tuple[str, list[str], int]:
    """(context, choices, label index) of one record. Choices: a list (TFDS sequences), or a
    JSON list as text (a jsonl: file's list value); the label: an index, or a choice's text."""
    d = config.data
    context = sources.column_text(record, d.context_column)
    value = sources.column_list(record, d.choices_column)
    if value is None or len(value) < 2:
        raise DataError(f"record {index}: column {d.choices_column!r} holds "
                        f"{record[d.choices_column]!r}, not a list of at least two choices (a "
                        "JSON list in a jsonl: file)")
    choices = [sources.as_text(c) for c in value]
    label = sources.column_text(record, d.label_column).strip()
    if label.lstrip("-").isdigit() and 0 <= int(label) < len(choices):
        return context, choices, int(label)
    if label in choices:
        return context, choices, choices.index(label)
    raise DataError(f"record {index}: label {label!r} is neither the index of one of its "
                    f"{len(choices)} choices nor one of them (set data.label_column)")


class ChoiceEval:
    """The records of one multiple-choice eval set; `__call__(run)` scores a model."""

    metric_names = ("choice_accuracy", "choice_accuracy_norm")

    def __init__(self, config: ml_collections.ConfigDict, source: str, split: str):
        self.config = config
        records = sources.open_split(source, split, config)
        self.items = [record_choices(r, config, i)
                      for i, r in enumerate(sources.iter_records(records))]
        if not self.items:
            raise DataError(f"multiple-choice eval source {source!r} ({split}) has no records")

    def __call__(self, run) -> dict[str, float]:
        """{choice_accuracy, choice_accuracy_norm} of `run` (an llmjax.api.Run)."""
        delimiter = "" if run.answers_prompts or run.is_seq2seq else \
            self.config.data.choice_delimiter
        contexts = [c for c, choices, _ in self.items for _ in choices]
        continuations = [delimiter + choice for _, choices, _ in self.items for choice in choices]
        scores = np.concatenate([
            run.log_likelihood(contexts[lo: lo + self.config.batch_size],
                               continuations[lo: lo + self.config.batch_size])
            for lo in range(0, len(contexts), self.config.batch_size)])
        right = right_norm = 0
        start = 0
        for _, choices, label in self.items:
            ll = scores[start: start + len(choices)]
            lengths = np.array([max(len(c), 1) for c in choices], np.float64)
            right += int(np.argmax(ll) == label)
            right_norm += int(np.argmax(ll / lengths) == label)
            start += len(choices)
        n = len(self.items)
        return {"choice_accuracy": right / n, "choice_accuracy_norm": right_norm / n}


def choice_evals(config: ml_collections.ConfigDict) -> dict[str, ChoiceEval]:
    """{name: ChoiceEval} of `data.choice_eval_sources`."""
    from llmjax.configs import named_sources
    from llmjax.data.pipeline import eval_split_of

    return {name: ChoiceEval(config, source, eval_split_of(source, config))
            for name, source in named_sources(config.data.choice_eval_sources)}


def run_of(config: ml_collections.ConfigDict, tokenizer, graphdef: nnx.GraphDef,
           params: nnx.State, step: int):
    """An llmjax.api.Run of parameters in training (one copy, on one device)."""
    from llmjax.api import Run

    return Run(config=config, tokenizer=tokenizer, model=nnx.merge(graphdef, params), step=step)


def choice_metrics(evals: dict[str, ChoiceEval], run) -> dict[str, float]:
    """eval_NAME/choice_accuracy(_norm) of every set."""
    return {f"eval_{name}/{k}": v for name, ev in evals.items() for k, v in ev(run).items()}

