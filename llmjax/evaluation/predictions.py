"""Predictions for every record of a data source (`llmjax predict --input=SOURCE --out=FILE`):
what `predict --text` prints for one input, one JSON object per record, in the source's order
(e.g. GLUE's unlabelled test split, ready to turn into a submission). The inputs are read from
the run's data.* columns and predicted a batch (`batch_size` records) at a time."""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator, Sequence

from etils import epath

from llmjax.configs import ConfigError
from llmjax.data import sources
from llmjax.data.text_builder import DataError


def _inputs(record: dict, run) -> tuple:
    """The positional inputs of the run's prediction for one record."""
    d, kind = run.config.data, run.prediction
    if kind == "tags":
        words = sources.column_list(record, d.tokens_column)
        if words is None:
            raise DataError(f"column {d.tokens_column!r} does not hold a list of words (set "
                            "data.tokens_column)")
        return (" ".join(str(w) for w in words),)
    if kind == "answer":
        return (sources.column_text(record, d.question_column),
                sources.column_text(record, d.context_column))
    pair = sources.column_text(record, d.text_pair_column) if d.text_pair_column else None
    return sources.column_text(record, d.text_column), pair


def _predict_batch(run, inputs: list[tuple]) -> list[dict]:
    """One JSON object per input: {"label", "probabilities"}, {"score"}, {"tags"} or
    {"answer"}."""
    kind = run.prediction
    if kind == "tags":
        return [{"tags": tags} for tags in run.tag([i[0] for i in inputs])]
    if kind == "answer":
        return [{"answer": a} for a in run.answer([i[0] for i in inputs],
                                                  [i[1] for i in inputs])]
    texts = [i[0] for i in inputs]
    pairs = [i[1] for i in inputs] if run.config.data.text_pair_column else None
    if run.predicts_scores:
        return [{"score": s} for s in run.score(texts, pairs)]
    return [{"label": label, "probabilities": probabilities}
            for label, probabilities in run.predict(texts, pairs)]


def predictions(run, records: Sequence[dict]) -> Iterator[dict]:
    """{"index": i, ...the prediction} of every record, in order."""
    if run.prediction not in ("label", "score", "tags", "answer"):
        raise ConfigError(f"predict needs a classification, regression, token classification "
                          f"or question answering run; this run's objective is "
                          f"{run.config.objective!r}")
    inputs = (_inputs(record, run) for record in sources.iter_records(records))
    index = 0
    while batch := list(itertools.islice(inputs, run.config.batch_size)):
        for prediction in _predict_batch(run, batch):
            yield {"index": index, **prediction}
            index += 1


def write_predictions(run, source: str, split: str, out: str | epath.Path) -> int:
    """Writes the predictions of `source`'s `split` to the JSON Lines file `out` (complete, or
    not at all: written beside it, then renamed). Returns how many."""
    records = sources.open_split(source, split, run.config)
    out = epath.Path(out)
    partial = out.parent / f".{out.name}.partial"
    count = 0
    with partial.open("w") as f:
        for row in predictions(run, records):
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
            count += 1
    partial.replace(out)
    return count
