"""The optimizer from config: warmup + cosine/linear/constant/rsqrt schedule, global-norm
clipping and AdamW (or Adafactor) without weight decay on 1-D parameters (biases, norm scales)."""

from __future__ import annotations

from collections.abc import Callable

import jax
import ml_collections
import optax

from llmjax.train.checkpoint import param_path_name


def learning_rate_schedule(o: ml_collections.ConfigDict, num_train_steps: int) -> optax.Schedule:
    """Linear warmup 0 -> learning_rate over warmup_steps, then decay to end_learning_rate at
    decay_steps (default num_train_steps), constant afterwards; or, for `rsqrt` (fairseq's
    inverse_sqrt, T5's rsqrt decay), learning_rate * sqrt(warmup_steps / step) after warmup,
    with no end."""
    decay_steps = o.decay_steps or num_train_steps
    peak, end = o.learning_rate, o.end_learning_rate
    if o.schedule == "constant":
        end = peak
    remaining = max(decay_steps - o.warmup_steps, 1)
    if o.schedule == "rsqrt":
        width = max(o.warmup_steps, 1)
        decay = lambda s: peak * jax.lax.rsqrt((s + width) / width)  # noqa: E731 (s after warmup)
    elif o.schedule == "cosine":
        decay = optax.cosine_decay_schedule(peak, remaining, alpha=end / peak if peak else 0.0)
    else:
        decay = optax.linear_schedule(peak, end, remaining)
    if o.warmup_steps == 0:
        return decay
    warmup = optax.linear_schedule(0.0, peak, o.warmup_steps)
    return optax.join_schedules([warmup, decay], [o.warmup_steps])


def weight_decay_mask(params):
    """True for parameters that decay: matrices and embeddings, not biases or norm scales."""
    return jax.tree.map(lambda p: p.ndim > 1, params)


def make_optimizer(o: ml_collections.ConfigDict, num_train_steps: int,
                   trainable: Callable[[str], bool] | None = None
                   ) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """(the optimizer of `o`, its learning-rate schedule). With `trainable` (a parameter path
    -> bool, e.g. lora.is_adapter), only those parameters are updated, clipped and given
    optimizer state; the others stay as they are."""
    schedule = learning_rate_schedule(o, num_train_steps)
    optimizer = _optimizer(o, schedule)
    if trainable is None:
        return optimizer, schedule

    def labels(params):
        return jax.tree_util.tree_map_with_path(
            lambda path, _: "train" if trainable(param_path_name(path)) else "frozen", params)

    return optax.multi_transform({"train": optimizer, "frozen": optax.set_to_zero()},
                                 labels), schedule


def _optimizer(o: ml_collections.ConfigDict, schedule: optax.Schedule
               ) -> optax.GradientTransformation:
    parts = []
    if o.grad_clip_norm and o.grad_clip_norm > 0:
        parts.append(optax.clip_by_global_norm(o.grad_clip_norm))
    if o.name == "adafactor":
        # T5's defaults (factored second moments, update clipping 1.0, steps scaled by each
        # parameter's RMS, no momentum). optax adds Adafactor's weight decay after the learning
        # rate, so it is scaled by the schedule here: weight_decay means lr x decay x p per
        # step, as for AdamW.
        # Factoring needs the two largest dims >= min_dim_size_to_factor: optax's 128 would
        # leave every [emb, heads, head_dim] attention kernel with head_dim 64 unfactored.
        parts.append(optax.adafactor(
            schedule, min_dim_size_to_factor=32,
            weight_decay_rate=lambda step: o.weight_decay * schedule(step),
            weight_decay_mask=weight_decay_mask))
    else:
        parts.append(optax.adamw(schedule, b1=o.b1, b2=o.b2, eps=o.eps,
                                 weight_decay=o.weight_decay, mask=weight_decay_mask))
    return optax.chain(*parts)
