"""Everything a training run evaluates at each eval step, loaded once before the run starts:
the eval split (`eval/*`, with the generated data's loss floor), the sets of
`data.extra_eval_sources` (`eval_NAME/*`), decoding metrics for seq2seq objectives
(`eval_decode_metrics`: BLEU, chrF, ROUGE, exact match) or question answering's answers (exact
match, F1) on each of those, the multiple-choice sets of `data.choice_eval_sources`, and the
continuations of `eval_prompts`."""

from __future__ import annotations

from typing import Any

import ml_collections
from absl import logging
from flax import nnx

from llmjax.data import pipeline
from llmjax.evaluation import choices
from llmjax.evaluation.evaluator import evaluate, loss_floor


class EvalSuite:
    def __init__(self, config: ml_collections.ConfigDict, tokenizer, objective,
                 eval_data: list[dict], *, split: str | None = None, prefix: str = "eval",
                 named_sets: bool = True):
        """Reads and lays out every eval set (data errors surface here, before any write).
        `eval_data` are the batches of the eval source's `split` (default: its eval split),
        reported as `prefix/<metric>`; `named_sets`: the extra and multiple-choice sets too."""
        self.config, self.tokenizer, self.objective = config, tokenizer, objective
        self.eval_data, self.prefix = eval_data, prefix
        source, default_split = pipeline.eval_source_and_split(config)
        self.main = (source, split or default_split)
        self.floor = loss_floor(objective, config, tokenizer, eval_data)
        sets = pipeline.extra_eval_sets(config) if named_sets else []
        self.extra = {name: pipeline.eval_batches(config, tokenizer, objective, source, split)
                      for name, source, split in sets}
        self._extra_sources = [(f"eval_{name}/", source, split) for name, source, split in sets]
        self.choice_sets = choices.choice_evals(config) if named_sets else {}
        self.decoding: dict[str, Any] = {}  # prefix -> DecodingEval / SpanEval, with the model
        self.graphdef: nnx.GraphDef | None = None
        prompts = config.eval_prompts if named_sets else None
        self.prompts = [] if prompts is None else prompts.split("|")
        self.samples: list[tuple[str, str]] = []  # (prompt, continuation) of the last call

    def attach_model(self, graphdef: nnx.GraphDef) -> None:
        """Prepares what decodes or answers with the model: seq2seq's DecodingEvals, question
        answering's SpanEvals."""
        self.graphdef = graphdef
        host_eval = host_eval_class(self.objective)
        if host_eval is not None:
            sets = [(f"{self.prefix}/", *self.main), *self._extra_sources]
            self.decoding = {prefix: host_eval(self.config, self.tokenizer, graphdef, source,
                                               split) for prefix, source, split in sets}

    def __call__(self, parallel, params: Any, step: int) -> dict[str, float]:
        """Every eval metric of `params` (as the parallel step holds them) at `step`."""
        metrics = {f"{self.prefix}/{k}": v
                   for k, v in evaluate(parallel, params, self.eval_data).items()}
        if self.floor is not None:
            metrics[f"{self.prefix}/best_achievable_loss"] = self.floor
        for name, batches in self.extra.items():
            metrics.update({f"eval_{name}/{k}": v
                            for k, v in evaluate(parallel, params, batches).items()})
        if self.decoding or self.choice_sets or self.prompts:
            one_copy = parallel.single_copy(params)  # decoding runs on one device
            for prefix, decoding_eval in self.decoding.items():
                metrics.update(decoding_metrics(decoding_eval, one_copy, step, prefix))
            run = (choices.run_of(self.config, self.tokenizer, self.graphdef, one_copy, step)
                   if self.choice_sets or self.prompts else None)
            if self.choice_sets:
                metrics.update(choices.choice_metrics(self.choice_sets, run))
            if self.prompts:  # generate.* settings and seed: the same samples on every rerun
                self.samples = list(zip(self.prompts, run.generate(self.prompts), strict=True))
                for prompt, text in self.samples:
                    logging.info("step %d sample: %r -> %r", step, prompt, text)
        return metrics


def host_eval_class(objective) -> type | None:
    """The objective's host evaluation beyond the eval step's metric sums (its `host_eval()`:
    seq2seq's DecodingEval, question answering's SpanEval), or None. Each is built as
    cls(config, tokenizer, graphdef, source, split) and lists its metric_names."""
    return objective.host_eval() if hasattr(objective, "host_eval") else None


def decoding_metrics(decoding_eval, params, step: int, prefix: str = "eval/"
                     ) -> dict[str, float]:
    """The host eval's metrics under `prefix`; logs a few decoded samples."""
    metrics, samples = decoding_eval(params)
    for source, reference, hypothesis in samples:
        logging.info("step %d %ssample: %r -> %r (reference %r)", step, prefix, source,
                     hypothesis, reference)
    return {prefix + k: v for k, v in metrics.items()}
