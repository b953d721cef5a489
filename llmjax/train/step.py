"""The pure train and eval steps. They never look at devices: `axis_name` (set by parallel.py
under pmap) is the only hint that a batch is one shard of a larger one."""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from llmjax.objectives import Objective
from llmjax.train.state import TrainState


def _psum(tree, axis_name: str | None):
    return tree if axis_name is None else jax.lax.psum(tree, axis_name)


def make_train_step(graphdef: nnx.GraphDef, objective: Objective,
                    optimizer: optax.GradientTransformation, schedule: optax.Schedule,
                    accumulation_steps: int = 1, axis_name: str | None = None
                    ) -> Callable[[TrainState, dict], tuple[TrainState, dict]]:
    """train_step(state, batch) -> (state, metrics). The batch's leading axis is split into
    `accumulation_steps` micro-batches; gradients and metrics are summed over micro-batches
    and devices, then divided by the total weight, so any split gives the same update."""

    def loss_fn(params, batch, rng):
        return objective.loss(nnx.merge(graphdef, params), batch, rng)

    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

    def train_step(state: TrainState, batch: dict) -> tuple[TrainState, dict]:
        rng = jax.random.fold_in(state["rng"], state["step"])
        if axis_name is not None:
            rng = jax.random.fold_in(rng, jax.lax.axis_index(axis_name))
        micro = jax.tree.map(
            lambda x: x.reshape(accumulation_steps, -1, *x.shape[1:]), batch)

        def accumulate(carry, inputs):
            mb, i = inputs
            (_, sums), grads = grad_fn(state["params"], mb, jax.random.fold_in(rng, i))
            return jax.tree.map(jnp.add, carry, (grads, sums)), None

        first = jax.tree.map(lambda x: x[0], micro)
        (_, sums), grads = grad_fn(state["params"], first, jax.random.fold_in(rng, 0))
        if accumulation_steps > 1:
            rest = jax.tree.map(lambda x: x[1:], micro)
            (grads, sums), _ = jax.lax.scan(
                accumulate, (grads, sums), (rest, jnp.arange(1, accumulation_steps)))
        grads, sums = _psum((grads, sums), axis_name)
        count = jnp.maximum(sums["loss"][1], 1.0)
        grads = jax.tree.map(lambda g: g / count, grads)
        updates, opt_state = optimizer.update(grads, state["opt_state"], state["params"])
        params = optax.apply_updates(state["params"], updates)
        metrics = {name: s / jnp.maximum(c, 1e-9) for name, (s, c) in sums.items()
                   if jnp.ndim(s) == 0}  # scalars only (a confusion matrix is eval's)
        metrics.update(grad_norm=optax.global_norm(grads),
                       learning_rate=schedule(state["step"]), weight=sums["loss"][1])
        new_state = {"step": state["step"] + 1, "params": params, "opt_state": opt_state,
                     "rng": state["rng"]}
        return new_state, metrics

    return train_step


def make_eval_step(graphdef: nnx.GraphDef, objective: Objective, axis_name: str | None = None
                   ) -> Callable[[nnx.State, dict], dict]:
    """eval_step(params, batch) -> metric sums {name: (sum, count)}, reduced over devices."""

    def eval_step(params: nnx.State, batch: dict) -> dict:
        _, sums = objective.loss(nnx.merge(graphdef, params), batch, None)
        return _psum(sums, axis_name)

    return eval_step

