"""The optimizer from config: warmup + cosine/linear/constant/rsqrt schedule, global-norm
clipping and AdamW (or Adafactor, or Muon on the blocks' matrices) without weight decay on 1-D
parameters (biases, norm scales)."""

from __future__ import annotations

import math
import re
from collections.abc import Callable

import jax
import jax.numpy as jnp
import ml_collections
import optax
from optax.contrib import MuonDimensionNumbers, scale_by_muon

from llmjax.models.moe import is_router_bias
from llmjax.train.checkpoint import param_path_name


def learning_rate_schedule(o: ml_collections.ConfigDict, num_train_steps: int) -> optax.Schedule:
    """Linear warmup 0 -> learning_rate over warmup_steps, then decay to end_learning_rate at
    decay_steps (default num_train_steps), constant afterwards; or, for `rsqrt` (fairseq's
    inverse_sqrt, T5's rsqrt decay), learning_rate * sqrt(warmup_steps / step) after warmup,
    with no end; or, for `wsd` / `wsd_sqrt` (warmup-stable-decay), learning_rate until the
    last cooldown_steps before decay_steps, then a linear / 1 - sqrt cooldown to
    end_learning_rate."""
    decay_steps = o.decay_steps or num_train_steps
    peak, end = o.learning_rate, o.end_learning_rate
    if o.schedule == "constant":
        end = peak
    remaining = max(decay_steps - o.warmup_steps, 1)
    if o.schedule in ("wsd", "wsd_sqrt"):
        cooldown = min(cooldown_length(o, num_train_steps), remaining)
        stable = remaining - cooldown

        def decay(s):  # s counts from the end of warmup
            t = jnp.clip((s - stable) / max(cooldown, 1), 0.0, 1.0)
            fraction = t if o.schedule == "wsd" else jnp.sqrt(t)
            return peak + (end - peak) * fraction
    elif o.schedule == "rsqrt":
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


def cooldown_length(o: ml_collections.ConfigDict, num_train_steps: int) -> int:
    """`wsd`'s cooldown: optimizer.cooldown_steps, else the last fifth of the steps after
    warmup (Hägele et al. 2024 found 20% enough to match a cosine schedule)."""
    if o.cooldown_steps is not None:
        return o.cooldown_steps
    decay_steps = o.decay_steps or num_train_steps
    return math.ceil(0.2 * max(decay_steps - o.warmup_steps, 1))


def weight_decay_mask(params):
    """True for parameters that decay: matrices and embeddings, not biases or norm scales."""
    return jax.tree.map(lambda p: p.ndim > 1, params)


def sign_descent(rate: float) -> optax.GradientTransformation:
    """Updates of -rate x sign(gradient), no state: DeepSeek-V3's router-bias rule, whose
    'gradient' is each expert's excess share of the choices (models/moe.py, bias_pull)."""
    return optax.stateless(lambda updates, _: jax.tree.map(lambda g: -rate * jnp.sign(g),
                                                           updates))


def make_optimizer(o: ml_collections.ConfigDict, num_train_steps: int,
                   trainable: Callable[[str], bool] | None = None,
                   router_bias_rate: float = 0.0
                   ) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """(the optimizer of `o`, its learning-rate schedule). With `trainable` (a parameter path
    -> bool, e.g. lora.is_adapter), only those parameters are updated, clipped and given
    optimizer state; the others stay as they are. With `router_bias_rate`, mixture routers'
    choice biases step by that rate against the sign of their gradient, outside the
    optimizer, its clipping and its learning-rate schedule."""
    schedule = learning_rate_schedule(o, num_train_steps)
    optimizer = _optimizer(o, schedule)
    if router_bias_rate:
        optimizer = _with_router_bias(optimizer, router_bias_rate, trainable)
        return optimizer, schedule
    if trainable is None:
        return optimizer, schedule

    def labels(params):
        return jax.tree_util.tree_map_with_path(
            lambda path, _: "train" if trainable(param_path_name(path)) else "frozen", params)

    return optax.multi_transform({"train": optimizer, "frozen": optax.set_to_zero()},
                                 labels), schedule


def _with_router_bias(optimizer: optax.GradientTransformation, rate: float,
                      trainable: Callable[[str], bool] | None) -> optax.GradientTransformation:
    def labels(params):
        def label(path, _):
            name = param_path_name(path)
            if is_router_bias(name):
                return "router_bias"
            return "train" if trainable is None or trainable(name) else "frozen"

        return jax.tree_util.tree_map_with_path(label, params)

    return optax.multi_transform({"train": optimizer, "frozen": optax.set_to_zero(),
                                  "router_bias": sign_descent(rate)}, labels)


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
    elif o.name == "muon":
        parts.append(_muon(o, schedule))
    else:
        parts.append(_adamw(o, schedule))
    return optax.chain(*parts)


def _adamw(o: ml_collections.ConfigDict, schedule: optax.Schedule
           ) -> optax.GradientTransformation:
    return optax.adamw(schedule, b1=o.b1, b2=o.b2, eps=o.eps, weight_decay=o.weight_decay,
                       mask=weight_decay_mask)


# The blocks' weight matrices (attention projections, MLP), in any stack: Muon's parameters.
_MUON_KERNEL = re.compile(
    r"(^|/)layers/\d+/(attention|cross_attention|mlp)/(experts/|shared/)?(\w+)/kernel$")
# Moonlight's scaling (Liu et al. 2025, "Muon is scalable"): updates of RMS 0.2, as AdamW's
# typically are, so AdamW's learning rate and weight decay carry over.
MUON_UPDATE_RMS = 0.2


def muon_dimensions(path: str, ndim: int) -> MuonDimensionNumbers | None:
    """How Muon sees the parameter at `path` as an [inputs, outputs] matrix (None: AdamW's):
    query/key/value kernels [D, H, K] are [D, H*K], the output kernel [H, K, D] is [H*K, D],
    MLP kernels are matrices already (a mixture's shared expert's too), a mixture's expert
    kernels [E, I, O] E matrices. Embeddings, output and task heads, a mixture's router and
    shared-expert gate, norms and biases stay with AdamW, as in Muon's recipe."""
    match = _MUON_KERNEL.search(path)
    if not match or match.group(4) == "shared_gate":
        return None
    if match.group(3) == "experts/":  # one matrix each, orthogonalised on its own
        return MuonDimensionNumbers(reduction_axis=1, output_axis=2) if ndim == 3 else None
    if ndim == 3:
        return (MuonDimensionNumbers(reduction_axis=(0, 1), output_axis=2)
                if match.group(4) == "out"
                else MuonDimensionNumbers(reduction_axis=0, output_axis=(1, 2)))
    return MuonDimensionNumbers() if ndim == 2 else None


def _muon_tree(updates):
    """muon_dimensions for every leaf of `updates` (subtrees another optimizer owns, optax's
    MaskedNode, are empty and stay as they are)."""
    return jax.tree_util.tree_map_with_path(
        lambda path, u: muon_dimensions(param_path_name(path), u.ndim), updates)


def _scale_to_update_rms(rms: float) -> optax.GradientTransformation:
    """An orthogonalised [m, n] update has RMS 1/sqrt(max(m, n)): scale it to `rms`."""

    def update_fn(updates, state, params=None):
        del params

        def scale(update, dims: MuonDimensionNumbers):
            def size(axes):
                axes = (axes,) if isinstance(axes, int) else axes
                return math.prod(update.shape[a] for a in axes)

            return update * (rms * math.sqrt(max(size(dims.reduction_axis),
                                                 size(dims.output_axis))))

        return jax.tree.map(scale, updates, _muon_tree(updates)), state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update_fn)


def _muon(o: ml_collections.ConfigDict, schedule: optax.Schedule
          ) -> optax.GradientTransformation:
    """Muon (Nesterov momentum 0.95 orthogonalised by 5 Newton-Schulz steps, updates scaled to
    RMS 0.2, decoupled weight decay) on the blocks' matrices; AdamW on everything else."""
    muon = optax.chain(
        scale_by_muon(beta=0.95, nesterov=True, weight_dimension_numbers=_muon_tree),
        _scale_to_update_rms(MUON_UPDATE_RMS),
        optax.add_decayed_weights(o.weight_decay),
        optax.scale_by_learning_rate(schedule))

    def labels(params):
        return jax.tree_util.tree_map_with_path(
            lambda path, p: "muon" if muon_dimensions(param_path_name(path), p.ndim)
            else "adamw", params)

    return optax.partition({"muon": muon, "adamw": _adamw(o, schedule)}, labels)
