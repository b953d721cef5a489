"""Model construction and the train state: a plain pytree (dict) of step, params, opt_state, rng.

The NNX module is split once into (graphdef, params); everything jitted is a pure function of
the params pytree, merged back into a module inside the trace.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import nnx

from llmjax.models import MODELS, ModelConfig, moe

TrainState = dict  # {"step": int32[], "params": nnx.State, "opt_state": ..., "rng": uint32[2]}


def model_config(config: ml_collections.ConfigDict) -> ModelConfig:
    return ModelConfig.from_config(config.model)


def build_model(config: ml_collections.ConfigDict, seed: int | None = None) -> nnx.Module:
    """A freshly initialised model of `config.model` (vocab_size must be resolved), with the
    heads `config.objective` needs."""
    from llmjax.objectives import get_objective

    cls = MODELS[config.model.arch]
    seed = config.seed if seed is None else seed
    kwargs = get_objective(config.objective).model_kwargs(config)
    model = cls(model_config(config), rngs=nnx.Rngs(params=seed), **kwargs)
    if config.lora.rank:  # adapters from their own stream: the base parameters are unchanged
        from llmjax.models import lora

        lora.attach(model, config.lora, seed + 2)
    return model


def abstract_model(config: ml_collections.ConfigDict) -> tuple[nnx.GraphDef, nnx.State]:
    """(graphdef, params as ShapeDtypeStructs) without allocating anything."""
    model = nnx.eval_shape(lambda: build_model(config))
    return nnx.split(model)


def init_state(params: nnx.State, optimizer: optax.GradientTransformation, seed: int
               ) -> TrainState:
    return {"step": jnp.zeros((), jnp.int32), "params": params,
            "opt_state": optimizer.init(params),
            "rng": jax.random.PRNGKey(seed + 1)}  # dropout stream, distinct from init


def count_params(params: nnx.State) -> int:
    return sum(x.size for x in jax.tree.leaves(params))


def count_active_params(params: nnx.State, cfg: ModelConfig) -> int:
    """The parameters one token runs through: all but the unchosen experts of a mixture (k of
    each mixture layer's E experts count: moe.active_share)."""
    from llmjax.train.checkpoint import param_path_name

    return round(sum(x.size * moe.active_share(cfg, param_path_name(path))
                     for path, x in jax.tree_util.tree_flatten_with_path(params)[0]))
