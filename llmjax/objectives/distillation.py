"""Knowledge distillation (Hinton et al. 2015): a student language model trained towards a
frozen teacher's next-token distributions as well as, or instead of, the data's next tokens.

Per token, with weight alpha and temperature T (config keys distill.alpha, .temperature):

    loss = (1 - alpha) * CE(student, target) + alpha * T^2 * KL(p_teacher^T || p_student^T)

where p^T = softmax(logits / T). T^2 keeps the soft term's gradients on the scale of the hard
term's as T grows (Hinton et al., section 2). The KL runs over the ids both models score (a
Hugging Face teacher's embedding table may be padded past the tokenizer's ids, which never
occur). The teacher runs inside the train step on each micro-batch, without dropout and
without gradients; its parameters are an argument of the step, not part of the train state,
so checkpoints hold the student alone.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from llmjax.objectives.base import Regularizers, cross_entropy

Array = jax.Array


def teacher_logits(teacher: nnx.Module, batch: dict[str, Array]) -> Array:
    """The teacher's next-token logits [B, L, V_teacher] (float32) for a causal-LM batch,
    outside differentiation."""
    hidden = teacher.hidden_states(batch["inputs"], segment_ids=batch["segment_ids"])
    return jax.lax.stop_gradient(teacher.output_logits(hidden))


def soft_kl(logits_BxLxV: Array, teacher_BxLxW: Array, temperature: float) -> Array:
    """KL(softmax(teacher / T) || softmax(student / T)) per token [B, L], over the first
    min(V, W) ids."""
    v = min(logits_BxLxV.shape[-1], teacher_BxLxW.shape[-1])
    log_p = jax.nn.log_softmax(teacher_BxLxW[..., :v].astype(jnp.float32) / temperature, -1)
    log_q = jax.nn.log_softmax(logits_BxLxV[..., :v].astype(jnp.float32) / temperature, -1)
    return (jnp.exp(log_p) * (log_p - log_q)).sum(-1)


def distillation_sums(logits_BxLxV: Array, teacher_BxLxW: Array, targets_BxL: Array,
                      weights_BxL: Array, regularizers: Regularizers
                      ) -> tuple[Array, Array, Array]:
    """(weighted sum of the per-token distillation losses, weighted count of argmax hits,
    weighted sum of the per-token KLs at the temperature). The cross-entropy part takes the
    regularizers (label smoothing, z-loss) as plain training does."""
    alpha, temperature = regularizers.distill_alpha, regularizers.distill_temperature
    kl = soft_kl(logits_BxLxV, teacher_BxLxW, temperature)
    loss = alpha * temperature**2 * kl
    if alpha < 1:
        loss = loss + (1 - alpha) * cross_entropy(logits_BxLxV, targets_BxL, regularizers)
    hits = (logits_BxLxV.argmax(-1) == targets_BxL) * weights_BxL
    return (loss * weights_BxL).sum(), hits.sum(), (kl * weights_BxL).sum()
