"""The pure train and eval steps. They never look at devices: `axis_name` (set by parallel.py
under pmap) is the only hint that a batch is one shard of a larger one."""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from llmjax.models import moe
from llmjax.objectives import Objective
from llmjax.objectives.base import NO_REGULARIZERS, Regularizers
from llmjax.train.checkpoint import param_path_name
from llmjax.train.state import TrainState

AxisName = str | tuple[str, ...] | None


def _psum(tree, axis_name: AxisName):
    return tree if axis_name is None else jax.lax.psum(tree, axis_name)


def flat_psum(tree, axis_name: AxisName):
    """psum of every leaf, as one all-reduce per dtype: the leaves are raveled into one vector,
    reduced, and split back into their shapes. XLA combines a step's all-reduces into one
    instruction, but XLA:CPU's runtime still exchanges its arrays one at a time: for the 68
    gradient arrays of a 4-layer model, 68 rendezvous between the devices of a process (or 68
    gloo round trips between processes) where this makes one."""
    if axis_name is None:
        return tree
    leaves, treedef = jax.tree.flatten(tree)
    groups: dict = {}
    for i, leaf in enumerate(leaves):
        groups.setdefault(jnp.result_type(leaf), []).append(i)
    reduced = list(leaves)
    for indices in groups.values():
        flat = jax.lax.psum(jnp.concatenate([jnp.ravel(leaves[i]) for i in indices]), axis_name)
        start = 0
        for i in indices:
            end = start + jnp.size(leaves[i])
            reduced[i] = flat[start:end].reshape(jnp.shape(leaves[i]))
            start = end
    return jax.tree.unflatten(treedef, reduced)


def device_sum(flat_allreduce: bool) -> Callable:
    """How a step sums a tree over devices: flat_psum (one all-reduce) or one psum per array."""
    return flat_psum if flat_allreduce else _psum


def loss_terms(objective: Objective) -> dict[str, str]:
    """The objective's loss terms: {metric name: batch key of its weights}. The loss is the sum
    of the terms' weighted means (one term, 'loss', unless the objective declares more)."""
    return getattr(objective, "loss_weights", {"loss": "weights"})


def mean_metrics(sums: dict, terms: dict[str, str]) -> dict:
    """{name: sum / count} for the scalar sums, plus 'loss' = the sum of the terms' means when
    the loss has several terms."""
    metrics = {name: s / jnp.maximum(c, 1e-9) for name, (s, c) in sums.items()
               if jnp.ndim(s) == 0}  # scalars only (a confusion matrix is eval's)
    if "loss" not in terms:
        metrics["loss"] = sum(metrics[t] for t in terms)
    return metrics


def make_train_step(graphdef: nnx.GraphDef, objective: Objective,
                    optimizer: optax.GradientTransformation, schedule: optax.Schedule,
                    accumulation_steps: int = 1, axis_name: AxisName = None,
                    skip_nonfinite: bool = False,
                    regularizers: Regularizers = NO_REGULARIZERS,
                    trainable: Callable[[str], bool] | None = None,
                    flat_allreduce: bool = False,
                    teacher_graphdef: nnx.GraphDef | None = None
                    ) -> Callable[..., tuple[TrainState, dict]]:
    """train_step(state, batch) -> (state, metrics); with a `teacher_graphdef`,
    train_step(state, batch, teacher_params), whose teacher (frozen, dropout off) scores each
    micro-batch for the objective's distillation loss (objectives/distillation.py). The
    batch's leading axis is split into `accumulation_steps` micro-batches; gradients and
    metrics are summed over micro-batches and devices, then divided by the total weight, so
    any split gives the same update.

    With `skip_nonfinite`, a step whose loss or gradient norm is NaN/Inf leaves parameters and
    optimizer state as they were and reports skipped_updates=1 with weight 0 (its metrics are
    zeros, so they drop out of the log interval's means). `regularizers` (label smoothing,
    z-loss) enter the differentiated loss and the reported train loss, not the eval step; a
    mixture of experts' router losses (regularizers.moe_*) enter the differentiated loss
    only, and are reported as moe_* metrics, each piece's (device's micro-batch's) own,
    averaged over the pieces (Switch Transformer's per-device balance).
    With `trainable` (parameter path -> bool: LoRA), the other parameters enter the loss under
    stop_gradient, so the backward pass never computes their gradients (zeros), and only the
    trained ones are summed over devices. With `flat_allreduce`, the gradients and metric sums
    are summed over devices in one all-reduce (flat_psum) instead of one per array."""

    terms = loss_terms(objective)
    reduce = device_sum(flat_allreduce)

    def loss_gradients(grads):
        """The gradients of the loss: without the router biases' balancing signal."""
        if not regularizers.moe_bias_update:
            return grads
        return jax.tree_util.tree_map_with_path(
            lambda path, g: jnp.zeros_like(g) if moe.is_router_bias(param_path_name(path))
            else g, grads)

    def sum_over_devices(grads, sums):
        if trainable is None:
            return reduce((grads, sums), axis_name)
        # frozen parameters' gradients are zeros on every device: only the trained are summed
        with_paths, treedef = jax.tree_util.tree_flatten_with_path(grads)
        leaves = [leaf for _, leaf in with_paths]
        trained = [i for i, (path, _) in enumerate(with_paths)
                   if trainable(param_path_name(path))]
        summed, sums = reduce(([leaves[i] for i in trained], sums), axis_name)
        for i, leaf in zip(trained, summed, strict=True):
            leaves[i] = leaf
        return jax.tree.unflatten(treedef, leaves), sums

    def loss_fn(params, batch, rng, scale, teacher_params):
        if teacher_graphdef is not None:
            teacher = nnx.merge(teacher_graphdef, teacher_params)
            batch = {**batch, "teacher_logits": objective.teacher_logits(teacher, batch)}
        if trainable is not None:
            params = jax.tree_util.tree_map_with_path(
                lambda path, x: x if trainable(param_path_name(path)) else jax.lax.stop_gradient(x),
                params)
        model = nnx.merge(graphdef, params)
        sums = objective.loss(model, batch, rng, regularizers)
        # Each term's sum over this micro-batch / that term's weight over the global batch:
        # summing over micro-batches and devices gives exactly sum_t mean_t.
        loss = sum(sums[t][0] * scale[t] for t in terms)
        if "mtp_loss" in sums:  # per the main loss's weight, like it (objectives/causal_lm.py)
            loss = loss + regularizers.mtp_loss * sums["mtp_loss"][0] * scale[next(iter(terms))]
        stats = moe.take_router_stats(model)
        if stats is None:
            return loss, sums
        # router losses: this micro-batch's on this device, averaged over all the pieces
        router = moe.router_metrics(stats)
        loss = loss + scale["pieces"] * (regularizers.moe_balance_loss * router["moe_balance_loss"]
                                         + regularizers.moe_z_loss * router["moe_z_loss"])
        if regularizers.moe_bias_update:  # 0 by value: only the router biases' gradients
            loss = loss + moe.bias_pull(stats)
        return loss, {**sums, **{name: (value, jnp.float32(1.0))
                                 for name, value in router.items()}}

    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

    def train_step(state: TrainState, batch: dict, teacher_params=None
                   ) -> tuple[TrainState, dict]:
        rng = jax.random.fold_in(state["rng"], state["step"])
        if axis_name is not None:
            rng = jax.random.fold_in(rng, jax.lax.axis_index(axis_name))
        # The weights are known before the forward pass, so the global counts are too.
        counts = reduce({t: batch[key].astype(jnp.float32).sum() for t, key in terms.items()},
                        axis_name)
        scale = {t: 1.0 / jnp.maximum(c, 1.0) for t, c in counts.items()}
        # devices x micro-batches: what a per-piece mean (the router losses) is averaged over
        devices = 1 if axis_name is None else jax.lax.psum(1, axis_name)  # static: no exchange
        scale["pieces"] = 1.0 / (devices * accumulation_steps)
        micro = jax.tree.map(
            lambda x: x.reshape(accumulation_steps, -1, *x.shape[1:]), batch)

        def accumulate(carry, inputs):
            mb, i = inputs
            (_, sums), grads = grad_fn(state["params"], mb, jax.random.fold_in(rng, i), scale,
                                       teacher_params)
            return jax.tree.map(jnp.add, carry, (grads, sums)), None

        first = jax.tree.map(lambda x: x[0], micro)
        (_, sums), grads = grad_fn(state["params"], first, jax.random.fold_in(rng, 0), scale,
                                   teacher_params)
        if accumulation_steps > 1:
            rest = jax.tree.map(lambda x: x[1:], micro)
            (grads, sums), _ = jax.lax.scan(
                accumulate, (grads, sums), (rest, jnp.arange(1, accumulation_steps)))
        grads, sums = sum_over_devices(grads, sums)
        updates, opt_state = optimizer.update(grads, state["opt_state"], state["params"])
        params = optax.apply_updates(state["params"], updates)
        metrics = mean_metrics(sums, terms)
        metrics.update(grad_norm=optax.global_norm(loss_gradients(grads)),
                       weight=counts[next(iter(terms))])
        if skip_nonfinite:
            finite = jnp.isfinite(metrics["loss"]) & jnp.isfinite(metrics["grad_norm"])
            keep = lambda new, old: jnp.where(finite, new, old)  # noqa: E731
            params = jax.tree.map(keep, params, state["params"])
            opt_state = jax.tree.map(keep, opt_state, state["opt_state"])
            metrics = {k: jnp.where(finite, v, jnp.zeros_like(v)) for k, v in metrics.items()}
            metrics["skipped_updates"] = 1.0 - finite.astype(jnp.float32)
        metrics["learning_rate"] = schedule(state["step"])
        new_state = {"step": state["step"] + 1, "params": params, "opt_state": opt_state,
                     "rng": state["rng"]}
        return new_state, metrics

    return train_step


def make_eval_step(graphdef: nnx.GraphDef, objective: Objective, axis_name: AxisName = None,
                   flat_allreduce: bool = False) -> Callable[[nnx.State, dict], dict]:
    """eval_step(params, batch) -> metric sums {name: (sum, count)}, reduced over devices (in
    one all-reduce with `flat_allreduce`)."""
    reduce = device_sum(flat_allreduce)

    def eval_step(params: nnx.State, batch: dict) -> dict:
        sums = objective.loss(nnx.merge(graphdef, params), batch, None)
        return reduce(sums, axis_name)

    return eval_step

