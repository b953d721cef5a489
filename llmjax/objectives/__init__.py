"""Objectives. OBJECTIVES maps `config.objective` to its class."""

from llmjax.objectives.base import Objective, finalize
from llmjax.objectives.causal_lm import CausalLM
from llmjax.objectives.classification import Classification
from llmjax.objectives.dpo import DirectPreference
from llmjax.objectives.mlm import MaskedLM
from llmjax.objectives.mlm_nsp import MaskedLMAndNextSentence
from llmjax.objectives.nsp import NextSentencePrediction
from llmjax.objectives.question_answering import QuestionAnswering
from llmjax.objectives.regression import Regression
from llmjax.objectives.seq2seq import Seq2Seq
from llmjax.objectives.span_corruption import SpanCorruption
from llmjax.objectives.token_classification import TokenClassification

OBJECTIVES = {
    "causal_lm": CausalLM,
    "mlm": MaskedLM,
    "classification": Classification,
    "nsp": NextSentencePrediction,
    "mlm_nsp": MaskedLMAndNextSentence,
    "regression": Regression,
    "span_corruption": SpanCorruption,
    "seq2seq": Seq2Seq,
    "dpo": DirectPreference,
    "token_classification": TokenClassification,
    "question_answering": QuestionAnswering,
}


def get_objective(name: str) -> Objective:
    if name not in OBJECTIVES:
        from llmjax.configs import ConfigError

        raise ConfigError(f"objective={name!r} is not available in this version; use one of "
                          f"{sorted(OBJECTIVES)}")
    return OBJECTIVES[name]()


__all__ = ["OBJECTIVES", "Objective", "finalize", "get_objective"]
