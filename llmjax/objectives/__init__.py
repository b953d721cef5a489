"""Objectives. OBJECTIVES maps `config.objective` to its class."""

from llmjax.objectives.base import Objective, finalize
from llmjax.objectives.causal_lm import CausalLM

OBJECTIVES = {
    "causal_lm": CausalLM,
}


def get_objective(name: str) -> Objective:
    return OBJECTIVES[name]()


__all__ = ["OBJECTIVES", "Objective", "finalize", "get_objective"]
