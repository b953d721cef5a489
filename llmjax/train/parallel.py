"""The only module that knows about devices. It wraps the pure steps for a parallel mode:

- `single`: jax.jit on one device;
- `pmap`:   jax.pmap data parallelism over all local devices (state replicated, batch split);
- `mesh`:   jax.jit over a (data, fsdp, sequence, tensor) Mesh of all devices of all
            processes, with the state and activations sharded by llmjax/sharding.py's rules
            and each process feeding its own part of the global batch. A mesh with data axes
            only (fsdp = sequence = tensor = 1) whose gradients
            are summed in one flat all-reduce runs the step per batch shard under
            jax.shard_map, which places that all-reduce itself (GSPMD would reduce each
            gradient array).

`gradient_allreduce` ('auto' | 'flat' | 'per_array') picks how pmap and data-only meshes sum
gradients over devices: one all-reduce of all of them concatenated (step.flat_psum), or one per
array. 'auto' is flat on CPU, whose runtime exchanges the arrays of an all-reduce one at a
time, and per array on GPU and TPU, which reduce many arrays at once and overlap the
reductions with the backward pass.

Checkpoints hold plain (unreplicated, unsharded) arrays, so one restores under any mode and mesh.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from llmjax import sharding
from llmjax.objectives import Objective
from llmjax.objectives.base import NO_REGULARIZERS, Regularizers
from llmjax.train.step import loss_terms, make_eval_step, make_train_step

AXIS = "batch"
GRADIENT_ALLREDUCES = ("auto", "flat", "per_array")


def flat_allreduce(choice: str) -> bool:
    """Whether `gradient_allreduce` (one of GRADIENT_ALLREDUCES) sums gradients in one flat
    all-reduce on this run's default backend."""
    if choice not in GRADIENT_ALLREDUCES:
        raise ValueError(f"gradient_allreduce={choice!r}: use one of {GRADIENT_ALLREDUCES}")
    return choice == "flat" or (choice == "auto" and jax.default_backend() == "cpu")


def _with_options(pmapped, compiler_options: dict | None):
    """jax.pmap takes no compiler options but its lowered form does: compile on first use, once
    per argument shapes, with the options."""
    if not compiler_options:
        return pmapped
    compiled = {}

    def call(*args):
        leaves, treedef = jax.tree.flatten(args)
        key = (treedef, tuple((np.shape(x), getattr(x, "dtype", type(x))) for x in leaves))
        if key not in compiled:
            compiled[key] = pmapped.lower(*args).compile(compiler_options=compiler_options)
        return compiled[key](*args)

    return call


class Parallel:
    """Runs train/eval steps in `mode`; moves state and batches to and from the devices.
    `abstract_state` (shapes of the train state) is needed in mesh mode, for its shardings;
    `regularizers` are the training loss's (label smoothing, z-loss); `gradient_allreduce` as
    in the module's docstring. `teacher` (graphdef, params: host arrays) is a distillation
    teacher, placed on the devices once (replicated, or sharded by the parameter rules on a
    mesh) and passed to every train step beside the state."""

    def __init__(self, mode: str, graphdef: nnx.GraphDef, objective: Objective, optimizer,
                 schedule, accumulation_steps: int = 1, skip_nonfinite: bool = False, *,
                 mesh_sizes: Any = None, abstract_state: Any = None,
                 compiler_options: dict | None = None,
                 regularizers: Regularizers = NO_REGULARIZERS,
                 trainable: Callable[[str], bool] | None = None,
                 gradient_allreduce: str = "auto", teacher: tuple | None = None):
        self.mode = mode
        self.num_replicas = jax.local_device_count() if mode == "pmap" else 1
        self.loss_terms = tuple(loss_terms(objective))
        flat = self._flat = flat_allreduce(gradient_allreduce)
        # XLA:CPU can deadlock when many independent programs with in-process all-reduces are
        # queued at once: evaluation's steps (146 of them for tiny Shakespeare's val split)
        # hung in an all-reduce on 2 CPU devices of a 2-core machine, in pmap and mesh mode
        # alike. Training's steps depend on each other, so only evaluation waits for each.
        self._one_eval_at_a_time = (mode != "single" and jax.default_backend() == "cpu"
                                    and jax.local_device_count() > 1)
        axis = AXIS if mode == "pmap" else None
        self.per_shard = False  # mesh mode: the step runs on each batch shard (shard_map)
        # several processes feed one mesh: each batch becomes a global array of their rows
        self._global_batches = mode == "mesh" and jax.process_count() > 1
        if mode == "mesh":
            self.mesh = sharding.make_mesh(mesh_sizes)
            self.batch_sharding = sharding.batch_sharding(self.mesh)
            # a data axis only: every device holds the whole state and steps on its batch shard
            self.per_shard = flat and not sharding.model_axes(dict(self.mesh.shape))
            axis = self.batch_sharding.spec[0] if self.per_shard else None
        train = make_train_step(graphdef, objective, optimizer, schedule, accumulation_steps,
                                axis_name=axis, skip_nonfinite=skip_nonfinite,
                                regularizers=regularizers, trainable=trainable,
                                flat_allreduce=flat,
                                teacher_graphdef=teacher[0] if teacher else None)
        evaluate = make_eval_step(graphdef, objective, axis_name=axis, flat_allreduce=flat)
        self._teacher, teacher_shardings = None, ()
        if mode == "pmap":
            self._train = _with_options(jax.pmap(train, axis_name=AXIS, donate_argnums=(0,)),
                                        compiler_options)
            self._eval = _with_options(jax.pmap(evaluate, axis_name=AXIS), compiler_options)
        elif mode == "mesh":
            self.state_shardings = sharding.state_shardings(abstract_state, self.mesh)
            replicated = NamedSharding(self.mesh, PartitionSpec())
            params_shardings = self.state_shardings["params"]
            if teacher:
                teacher_shardings = (sharding.state_shardings(teacher[1], self.mesh),)
            if self.per_shard:
                train = self._on_batch_shards(train, extra_args=len(teacher_shardings))
                evaluate = self._on_batch_shards(evaluate)
            else:
                train, evaluate = self._traced_on_mesh(train), self._traced_on_mesh(evaluate)
            self._train = jax.jit(
                train, donate_argnums=(0,),
                in_shardings=(self.state_shardings, self.batch_sharding, *teacher_shardings),
                out_shardings=(self.state_shardings, replicated),
                compiler_options=compiler_options)
            self._eval = jax.jit(evaluate, in_shardings=(params_shardings, self.batch_sharding),
                                 out_shardings=replicated, compiler_options=compiler_options)
        else:
            self._train = jax.jit(train, donate_argnums=(0,), compiler_options=compiler_options)
            self._eval = jax.jit(evaluate, compiler_options=compiler_options)
        if teacher:
            self._teacher = self._place(teacher[1], *teacher_shardings)

    def describe(self) -> str:
        """One line for the log: mode, devices and how gradients are summed."""
        if self.mode == "single":
            return f"one {jax.default_backend()} device"
        devices = f"{jax.device_count()} {jax.default_backend()} device(s)"
        if self.mode == "mesh":
            layout = " x ".join(f"{name} {size}" for name, size in self.mesh.shape.items())
            how = ("the step on each batch shard, gradients summed in one flat all-reduce"
                   if self.per_shard else "GSPMD places the reductions")
            return f"mesh {layout} over {devices}: {how}"
        how = "one flat all-reduce" if self._flat else "one all-reduce per array"
        return f"pmap over {devices}: gradients summed in {how}"

    def _on_batch_shards(self, fn, extra_args: int = 0):
        """fn(state_or_params, batch, *extra) run on each device's shard of the batch, with the
        state (and the `extra_args` extra arguments: a distillation teacher's parameters)
        replicated and the outputs (summed over devices inside fn) replicated. Unchecked
        (check_vma=False), as under pmap: gradients of the replicated parameters are each
        device's own until fn sums them, which the matmuls' custom gradients do not declare."""
        whole, shards = PartitionSpec(), self.batch_sharding.spec
        return jax.shard_map(fn, mesh=self.mesh, in_specs=(whole, shards) + (whole,) * extra_args,
                             out_specs=whole, check_vma=False)

    def _traced_on_mesh(self, fn):
        def on_mesh(*args):
            with sharding.activation_sharding(self.mesh):  # active while jit traces
                return fn(*args)

        return on_mesh

    @staticmethod
    def num_data_shards(mode: str, mesh_sizes: Any = None) -> int:
        """How many ways the global batch is split (for the divisibility check)."""
        if mode == "pmap":
            return jax.device_count()
        if mode == "mesh":
            sizes = sharding.mesh_shape(mesh_sizes, jax.device_count())
            return sizes["data"] * sizes["fsdp"]
        return jax.process_count()

    def init_sharded(self, make_state) -> Any:
        """Mesh mode: `make_state()` (a fresh train state) computed by the devices, each
        creating only its shards, so no device or host ever holds the whole state."""
        return jax.jit(make_state, out_shardings=self.state_shardings)()

    def _place(self, host_tree: Any, shardings: Any = None) -> Any:
        """Host arrays on the devices as this mode wants them: replicated per device (pmap),
        each process its shards (mesh, by `shardings`), or on the one device."""
        if self.mode == "pmap":
            n = self.num_replicas
            return jax.tree.map(lambda x: np.broadcast_to(x, (n, *np.shape(x))).copy(),
                                host_tree)
        if self.mode == "mesh":  # every process holds the whole tree; each keeps its shards
            return jax.tree.map(
                lambda x, s: jax.make_array_from_callback(np.shape(x), s,
                                                          lambda index: np.asarray(x)[index]),
                host_tree, shardings)
        return jax.device_put(host_tree)

    def to_device(self, host_state: Any) -> Any:
        # device_get copies first: device_put may alias its input, and donation would then
        # delete the caller's arrays.
        host_state = jax.device_get(host_state)
        return self._place(host_state, getattr(self, "state_shardings", None))

    def to_host(self, device_state: Any) -> Any:
        """What a checkpoint saves: unreplicated numpy (pmap, single), or the global sharded
        arrays themselves in mesh mode (orbax writes each shard from the process holding it)."""
        if self.mode == "mesh":
            return device_state
        if self.mode == "pmap":
            device_state = jax.tree.map(lambda x: x[0], device_state)
        return jax.device_get(device_state)

    def abstract_for_restore(self, abstract_state: Any) -> Any:
        """Restore targets: in mesh mode with their shardings, so orbax reads each process's
        shards straight onto its devices."""
        if self.mode != "mesh":
            return abstract_state
        return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                            abstract_state, self.state_shardings)

    def shard_batch(self, batch: dict[str, np.ndarray]) -> dict[str, Any]:
        """This process's part of the global batch -> what the step takes."""
        if self.mode == "pmap":
            n = self.num_replicas
            return {k: v.reshape(n, -1, *v.shape[1:]) for k, v in batch.items()}
        if self._global_batches:
            return {k: jax.make_array_from_process_local_data(self.batch_sharding, v)
                    for k, v in batch.items()}
        # one process: the jitted step splits host arrays by its in_shardings itself, for
        # 0.8 ms less of the main thread's time per step than building global arrays first
        return batch

    def train_step(self, state: Any, batch: dict[str, np.ndarray]) -> tuple[Any, dict]:
        if self._teacher is not None:
            return self._train(state, self.shard_batch(batch), self._teacher)
        return self._train(state, self.shard_batch(batch))

    def eval_step(self, params: Any, batch: dict[str, np.ndarray]) -> dict:
        sums = self._eval(params, self.shard_batch(batch))
        if self._one_eval_at_a_time:
            jax.block_until_ready(sums)
        return sums

    def params(self, device_state: Any) -> Any:
        return device_state["params"]

    def single_copy(self, params: Any) -> Any:
        """One device's copy of (replicated) params, for code that runs on one device."""
        if self.mode == "pmap":
            return jax.tree.map(lambda x: x[0], params)
        if self.mode == "mesh" and jax.process_count() > 1:
            from jax.experimental import multihost_utils

            return multihost_utils.process_allgather(params, tiled=True)
        return params

    def unreplicate_metrics(self, metrics: Any) -> Any:
        if self.mode == "pmap":
            return jax.tree.map(lambda x: x[0], metrics)
        if self.mode == "mesh":  # replicated: this process's copy (readable on every host)
            return jax.tree.map(lambda x: x.addressable_data(0), metrics)
        return metrics
