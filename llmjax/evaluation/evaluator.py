"""Evaluation over a fixed list of batches: metric sums reduced exactly, then finalised."""

from __future__ import annotations

from typing import Any

import jax
import numpy as np

from llmjax.objectives import finalize


def evaluate(parallel, params: Any, batches: list[dict[str, np.ndarray]]) -> dict[str, float]:
    """Metric values over all `batches` ({'loss', 'perplexity', ...}); sums added in float64."""
    device_sums = [parallel.eval_step(params, b) for b in batches]
    host_sums = [jax.device_get(parallel.unreplicate_metrics(s)) for s in device_sums]
    total = jax.tree.map(lambda *xs: np.sum(np.asarray(xs, np.float64), axis=0), *host_sums)
    return finalize(total, parallel.loss_terms)


def loss_floor(objective, config, tokenizer, batches: list[dict[str, np.ndarray]]
               ) -> float | None:
    """The best achievable eval loss over `batches`, where the objective knows it for the
    data (the generated language), else None: `eval/best_achievable_loss` in training and in
    `llmjax eval` alike."""
    if not hasattr(objective, "loss_floor"):
        return None
    return objective.loss_floor(config, tokenizer, batches)

