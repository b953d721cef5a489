"""Answer-based evaluation of extractive question answering: every eval question is answered
as `Run.answer` answers it (objectives/question_answering.py) and scored against its
reference answers with SQuAD's exact match and F1 (evaluation/answers.py)."""

from __future__ import annotations

import ml_collections
from flax import nnx

from llmjax.data import sources
from llmjax.evaluation.answers import squad_metrics
from llmjax.objectives.question_answering import passage_windows, read_passages


class SpanEval:
    """Holds the windows of an eval split's questions; `__call__(params)` scores a model."""

    @staticmethod
    def metric_names(config: ml_collections.ConfigDict) -> tuple[str, ...]:
        """What __call__ reports."""
        return ("exact_match", "f1")

    def __init__(self, config: ml_collections.ConfigDict, tokenizer, graphdef: nnx.GraphDef,
                 source: str, split: str):
        self.config, self.tokenizer, self.graphdef = config, tokenizer, graphdef
        records = sources.first_records(source, split, config, config.eval_decode_examples)
        # the references are the answers' texts: their offsets are not needed (nor checked)
        self.windows = passage_windows(read_passages(records, config), tokenizer, config,
                                       labelled=False)
        self.references = [[text for text, _ in p.answers] for p in self.windows.passages]

    def __call__(self, params: nnx.State) -> tuple[dict[str, float], list[tuple[str, str, str]]]:
        """({exact_match, f1}, [(question, first reference, answer)] for the first
        eval_samples)."""
        from llmjax.evaluation.choices import run_of

        run = run_of(self.config, self.tokenizer, self.graphdef, params, step=0)
        answers = run.answer_windows(self.windows)
        samples = [(p.question, refs[0] if refs else "", answer)
                   for p, refs, answer in zip(self.windows.passages, self.references, answers,
                                              strict=True)]
        return squad_metrics(answers, self.references), samples[: self.config.eval_samples]
