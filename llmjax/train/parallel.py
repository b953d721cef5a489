"""The only module that knows about devices. It wraps the pure steps for a parallel mode:

- `single`: jax.jit on one device;
- `pmap`:   jax.pmap data parallelism over all local devices (state replicated, batch split).

Host-side state is always unreplicated, so a checkpoint restores under any mode.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from flax import nnx

from llmjax.objectives import Objective
from llmjax.train.step import loss_terms, make_eval_step, make_train_step

AXIS = "batch"


class Parallel:
    """Runs train/eval steps in `mode`; moves state and batches to and from the devices."""

    def __init__(self, mode: str, graphdef: nnx.GraphDef, objective: Objective, optimizer,
                 schedule, accumulation_steps: int = 1, skip_nonfinite: bool = False):
        self.mode = mode
        self.num_replicas = jax.local_device_count() if mode == "pmap" else 1
        self.loss_terms = tuple(loss_terms(objective))
        axis = AXIS if mode == "pmap" else None
        train = make_train_step(graphdef, objective, optimizer, schedule, accumulation_steps,
                                axis_name=axis, skip_nonfinite=skip_nonfinite)
        evaluate = make_eval_step(graphdef, objective, axis_name=axis)
        if mode == "pmap":
            self._train = jax.pmap(train, axis_name=AXIS, donate_argnums=(0,))
            self._eval = jax.pmap(evaluate, axis_name=AXIS)
        else:
            self._train = jax.jit(train, donate_argnums=(0,))
            self._eval = jax.jit(evaluate)

    @staticmethod
    def num_data_shards(mode: str) -> int:
        """How many ways each host's batch is split across its devices."""
        return jax.local_device_count() if mode == "pmap" else 1

    def to_device(self, host_state: Any) -> Any:
        # device_get copies first: device_put may alias its input, and donation would then
        # delete the caller's arrays.
        host_state = jax.device_get(host_state)
        if self.mode == "pmap":
            n = self.num_replicas
            return jax.tree.map(lambda x: np.broadcast_to(x, (n, *np.shape(x))).copy(),
                                host_state)
        return jax.device_put(host_state)

    def to_host(self, device_state: Any) -> Any:
        """Unreplicated numpy copy (for checkpoints and metrics)."""
        if self.mode == "pmap":
            device_state = jax.tree.map(lambda x: x[0], device_state)
        return jax.device_get(device_state)

    def shard_batch(self, batch: dict[str, np.ndarray]) -> dict[str, Any]:
        if self.mode == "pmap":
            n = self.num_replicas
            return {k: v.reshape(n, -1, *v.shape[1:]) for k, v in batch.items()}
        return batch

    def train_step(self, state: Any, batch: dict[str, np.ndarray]) -> tuple[Any, dict]:
        return self._train(state, self.shard_batch(batch))

    def eval_step(self, params: Any, batch: dict[str, np.ndarray]) -> dict:
        return self._eval(params, self.shard_batch(batch))

    def params(self, device_state: Any) -> Any:
        return device_state["params"]

    def single_copy(self, params: Any) -> Any:
        """One device's copy of (replicated) params, for code that runs on one device."""
        return jax.tree.map(lambda x: x[0], params) if self.mode == "pmap" else params

    def unreplicate_metrics(self, metrics: Any) -> Any:
        return jax.tree.map(lambda x: x[0], metrics) if self.mode == "pmap" else metrics
