"""The Objective protocol, and how metric sums become metrics.

An objective turns tokenized documents into examples and computes a loss. Losses and metrics are
returned as (weighted sum, weight count) pairs so that devices and accumulation steps reduce them
exactly: psum(sum) / psum(count), never a mean of means.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from typing import Protocol

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

MetricSums = dict[str, tuple[jax.Array, jax.Array]]  # name -> (weighted sum, weight count)


@dataclasses.dataclass(frozen=True)
class Regularizers:
    """Terms the training loss adds to every cross-entropy (config keys `label_smoothing`,
    `z_loss`) and, for a mixture of experts, to the loss as a whole; evaluation and the API
    always use the plain cross-entropy, so eval loss and perplexity stay comparable across
    runs."""

    label_smoothing: float = 0.0  # target = (1 - e) one-hot + e / V, as torch and optax
    z_loss: float = 0.0  # + z * log(Z)^2 per token (PaLM, t5x): keeps the softmax normaliser near 1
    # mixture-of-experts models (models/moe.py): + these times the router losses, each the
    # mean over the mixture layers (model.moe_balance_loss_weight, model.moe_z_loss_weight)
    moe_balance_loss: float = 0.0
    moe_z_loss: float = 0.0
    # router biases (model.moe_router_bias) trained by DeepSeek-V3's balancing: the loss adds
    # the routers' bias_pull (0, whose gradient is each expert's excess load)
    moe_bias_update: bool = False
    # multi-token prediction (model.mtp_depth): + this times the objective's mtp_loss
    mtp_loss: float = 0.0
    # knowledge distillation (distill.*; objectives/distillation.py), where the step passes
    # the teacher's logits: the token loss becomes (1 - alpha) CE + alpha T^2 KL at T
    distill_alpha: float = 0.5
    distill_temperature: float = 1.0


NO_REGULARIZERS = Regularizers()


class Examples(Protocol):
    """An objective's examples for one split on one host, gathered a batch at a time."""

    def __len__(self) -> int: ...

    def __getitem__(self, indices: np.ndarray) -> dict[str, np.ndarray]:
        """A batch: arrays with leading axis len(indices)."""

    def shard(self, index: int, count: int) -> Examples:
        """The index-th of `count` disjoint, contiguous blocks."""

    # Optional: `corrupt(batch, rng: np.random.Generator) -> batch`, the random part of a
    # batch (MLM masking, NSP's next-or-random segment), drawn afresh for every training batch
    # of every epoch and with a fixed seed per eval batch. It belongs to the examples because
    # it may need their split's data (NSP draws negatives from its documents).


class Objective(Protocol):
    name: str

    def model_kwargs(self, config: ml_collections.ConfigDict) -> dict:
        """Extra constructor arguments of the model class (e.g. which heads it needs)."""

    def make_examples(self, records: Sequence[dict], tokenizer,
                      config: ml_collections.ConfigDict, *, train: bool) -> Examples:
        """Examples from this host's records (training or evaluation layout)."""

    def padding_example(self, seq_len: int) -> dict[str, np.ndarray]:
        """One example that contributes nothing (weights 0), to fill the last eval batch.
        Examples that define `padding_example()` themselves take precedence."""

    # Optional: `loss_weights = {term: batch key}` when the loss has several terms (MLM + NSP):
    # the step differentiates the sum of the terms' means, each term's sum divided by the global
    # sum of its weights. Default {'loss': 'weights'}.

    def loss(self, model, batch: dict[str, jax.Array], rng: jax.Array | None,
             regularizers: Regularizers = NO_REGULARIZERS) -> MetricSums:
        """Metric sums; the loss terms ('loss' by default) are the ones differentiated.
        Training passes `regularizers` on to every cross_entropy of the loss terms."""


def finalize(sums: dict[str, tuple], loss_terms: Sequence[str] = ("loss",)
             ) -> dict[str, float]:
    """Metric values from reduced (sum, count) pairs: 'loss' is the sum of the terms' means;
    adds perplexity for a single-term cross-entropy loss, precision / recall / F1 / MCC where
    there is a summed confusion matrix, Pearson's r where there are summed moments, and entity
    precision / recall / F1 where there are summed entity counts."""
    from llmjax.evaluation.metrics import classification_metrics, pearson_from_moments

    out = {name: float(s) / max(float(c), 1e-9) for name, (s, c) in sums.items()
           if np.ndim(s) == 0}
    if "loss" not in out:
        out["loss"] = sum(out[t] for t in loss_terms)
    elif tuple(loss_terms) == ("loss",) and not {"moments", "reward_accuracy"} & set(sums):
        # a cross-entropy (not regression's squared error, nor DPO's loss on ratios)
        out["perplexity"] = float(np.exp(min(out["loss"], 50.0)))
    if "confusion" in sums:
        out.update(classification_metrics(np.asarray(sums["confusion"][0], np.float64)))
    if "moments" in sums:
        out["pearson"] = pearson_from_moments(sums["moments"][0])
    if "entities" in sums:
        from llmjax.evaluation.entities import entity_metrics

        out.update(entity_metrics(np.asarray(sums["entities"][0])))
    return out


def texts_up_to(groups: Iterable[list[str]], limit_chars: int) -> list[str]:
    """The texts of the first groups (one per record) until `limit_chars` characters are
    taken: a new tokenizer's training sample."""
    texts, chars = [], 0
    for group in groups:
        texts += group
        chars += sum(map(len, group))
        if chars >= limit_chars:
            break
    return texts


def add_sums(a: MetricSums, b: MetricSums) -> MetricSums:
    return jax.tree.map(jnp.add, a, b)


def cross_entropy(logits_BxLxV: jax.Array, targets_BxL: jax.Array,
                  regularizers: Regularizers = NO_REGULARIZERS) -> jax.Array:
    """Per-token -log p(target) [B, L], computed in float32; with `regularizers`, the label-
    smoothed cross-entropy (-sum_v q_v log p_v) plus z_loss * log(Z)^2."""
    logits = logits_BxLxV.astype(jnp.float32)
    log_z = jax.nn.logsumexp(logits, axis=-1)
    target_logit = jnp.take_along_axis(logits, targets_BxL[..., None], axis=-1)[..., 0]
    loss = log_z - target_logit
    if regularizers.label_smoothing:
        e = regularizers.label_smoothing
        loss = (1 - e) * loss + e * (log_z - logits.mean(-1))  # the uniform part: -mean log p
    if regularizers.z_loss:
        loss = loss + regularizers.z_loss * jnp.square(log_z)
    return loss
