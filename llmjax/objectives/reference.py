"""A frozen reference model (DPO's π_ref) that scores rows of examples before training: on
one device, or — with `parallel.mode=mesh` — sharded over the run's mesh by the same rules as
the policy, so a model that only fits sharded can be its own reference.

Every process calls `logps` with the same number of chunks (its own rows, padded); on a mesh
spanning hosts the chunks of all processes form one global batch, as training's do.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import ml_collections
import numpy as np
from flax import nnx
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding

from llmjax import sharding

Rows = dict[str, np.ndarray]


class ReferenceModel:
    """`scores(model, rows) -> [R]` of the model the run starts from (init.hf_path /
    init.workdir; with LoRA, the base model), jitted once; `params` as placed on the devices."""

    def __init__(self, config: ml_collections.ConfigDict,
                 scores: Callable[[nnx.Module, dict], jax.Array]):
        from llmjax.train import state as state_lib
        from llmjax.train.start import initial_params

        graphdef, params = nnx.split(state_lib.build_model(config))
        params = initial_params(config, params)

        def score(p, rows):
            return scores(nnx.merge(graphdef, p), rows)

        self.mesh = (sharding.make_mesh(config.parallel.mesh)
                     if config.parallel.mode == "mesh" else None)
        if self.mesh is None:
            self.params, self._fn = params, jax.jit(score)
            return
        shardings = sharding.state_shardings(params, self.mesh)
        self.params = jax.tree.map(  # each process places its shards from its host copy
            lambda x, s: jax.make_array_from_callback(np.shape(x), s,
                                                      lambda index: np.asarray(x)[index]),
            params, shardings)
        self._rows = sharding.batch_sharding(self.mesh)

        def on_mesh(p, rows):
            with sharding.activation_sharding(self.mesh):
                return score(p, rows)

        self._fn = jax.jit(on_mesh, out_shardings=self._rows)

    def __call__(self, rows: Rows) -> np.ndarray:
        """Scores [R] of this process's rows (R of them, the same R on every process)."""
        if self.mesh is None:
            return np.asarray(self._fn(self.params, rows))
        spec = self._rows.spec
        global_rows = multihost_utils.host_local_array_to_global_array(rows, self.mesh, spec)
        out = self._fn(self.params, global_rows)
        return np.asarray(multihost_utils.global_array_to_host_local_array(out, self.mesh, spec))

    def chunked(self, rows: Rows, chunk: int) -> np.ndarray:
        """Scores of all of this process's `rows`, `chunk` rows a call (the last one padded
        with zero rows: one compiled program); on a mesh every process makes as many calls as
        the process with the most rows."""
        count = len(next(iter(rows.values())))
        calls = -(-count // chunk)
        if self.mesh is not None and jax.process_count() > 1:
            calls = int(np.max(multihost_utils.process_allgather(np.int32(calls))))
        out = []
        for k in range(calls):
            piece = {name: v[k * chunk: (k + 1) * chunk] for name, v in rows.items()}
            n = len(next(iter(piece.values())))
            piece = {name: np.concatenate([v, np.zeros((chunk - n, *v.shape[1:]), v.dtype)])
                     for name, v in piece.items()}
            out.append(self(piece)[:n])
        return np.concatenate(out or [np.zeros((0,), np.float32)]).astype(np.float32)

    @staticmethod
    def is_sharded(params) -> bool:
        """Does any parameter live split over several devices?"""
        return any(isinstance(getattr(x, "sharding", None), NamedSharding)
                   and not x.sharding.is_fully_replicated for x in jax.tree.leaves(params))
