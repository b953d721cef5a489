"""Mixture-of-experts feed-forward layer (GShard, Switch Transformer, Mixtral, OLMoE, DeepSeek).

A router scores each token against `num_experts` expert MLPs (each one FeedForward of
moe_mlp_dim hidden units, mlp_dim unless set); the token goes to its `num_experts_per_token`
best (top-k) and the layer returns their outputs weighted by the router's probabilities.

Tokens reach their experts through fixed-size buffers, one per (row, expert), so every expert
runs as one dense batched matmul on any backend (XLA:CPU runs jax.lax.ragged_dot ~10x slower
than the dense matmul of the same work, measured at [4096, 256] x [8, 256, 1024]). In training
each buffer holds `ceil(moe_capacity_factor * L * k / E)` of a row's L tokens (GShard's
capacity): a token over it skips that expert (every token's first choice is placed before any
second choice, then in token order) and its other choices and the residual carry it. Padding
tokens route nowhere (no slot, no share of the statistics). Every other forward pass
(evaluation, decoding, the API) is dropless, so what a sequence gets never depends on the
sequences batched with it; dropless buffers hold a whole row (L slots), which costs E / k times
the experts' work, as does moe_capacity_factor=0 (dropless training).

On a mesh each row fills its buffers on its own device. Where the fsdp axis divides E, each
device holds E / fsdp whole experts and the buffers travel to them and back by all-to-all
(expert parallelism, GShard); otherwise the experts shard as dense layers do (sharding.py).

A training forward (one given a dropout key) records its router statistics on the layer, as
`RouterStats`; the train step takes them (`take_router_stats`) and adds the load-balancing loss
(Switch's E * sum_e f_e P_e, 1 when balanced) and the router z-loss (ST-MoE's mean squared
log-normaliser) to the loss it differentiates.

DeepSeek's routers (model.moe_router, moe_router_bias, moe_groups, moe_routed_scale): scores
may be sigmoids instead of a softmax (V3), chosen through a bias that only steers the choice
(V3's aux-loss-free balancing, trained by `moe_bias_update_rate`: the train step's gradient
of `bias_pull` is each expert's excess share of the choices, and the optimizer moves the bias
against its sign), among each token's best groups of experts only (V2: a group's best score;
V3: the sum of its best two), with the chosen weights scaled by moe_routed_scale.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
from flax import nnx

from llmjax.models.config import ModelConfig
from llmjax.models.layers import (
    _INIT_STD,
    ACTIVATIONS,
    MATMUL_NAME,
    Dense,
    FeedForward,
    batched_matmul,
    dropout,
    fold,
)
from llmjax.sharding import constrain

Array = jax.Array
# RouterStats' entries, summed over layers and calls; "calls" counts them (the divisor)
# ("bias_pull" is 0 by value: its gradient drives the router bias, see `MoEFeedForward._record`)
STAT_NAMES = ("balance_loss", "z_loss", "max_load", "dropped", "bias_pull", "calls")
REPORTED = ("balance_loss", "z_loss", "max_load", "dropped")


class RouterStats(nnx.Intermediate):
    """A mixture layer's router statistics from training forward passes: float32
    [len(STAT_NAMES)], summed over the calls."""


class ExpertDense(nnx.Module):
    """E independent dense layers: x [E, N, I] -> [E, N, O] (kernel [E, I, O], bias [E, O]),
    one batched matmul over the experts."""

    def __init__(self, experts: int, n_in: int, n_out: int, cfg: ModelConfig, *,
                 rngs: nnx.Rngs, std: float = _INIT_STD):
        self.dtype, self.result_dtype = cfg.compute_dtype, cfg.matmul_result_dtype
        init = jax.random.normal(rngs.params(), (experts, n_in, n_out), jnp.float32) * std
        self.kernel = nnx.Param(init.astype(cfg.weight_dtype))
        self.bias = (nnx.Param(jnp.zeros((experts, n_out), cfg.weight_dtype)) if cfg.use_bias
                     else None)

    def __call__(self, x_ExNxI: Array, activation=None) -> Array:
        y = jax.ad_checkpoint.checkpoint_name(
            batched_matmul(x_ExNxI, self.kernel[...], self.dtype, self.result_dtype),
            MATMUL_NAME)
        if self.bias is not None or activation is not None:
            y = y.astype(jnp.float32)
        if self.bias is not None:
            y = y + self.bias[...].astype(jnp.float32)[:, None, :]
        if activation is not None:
            y = activation(y)
        return y.astype(self.dtype)


class Experts(nnx.Module):
    """E feed-forward networks (gated when cfg.gated_mlp), as FeedForward's wi / wg / wo."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        e, d, f = cfg.num_experts, cfg.emb_dim, cfg.moe_mlp_dim or cfg.mlp_dim
        self.activation = ACTIVATIONS[cfg.activation]
        self.wi = ExpertDense(e, d, f, cfg, rngs=rngs)
        self.wg = ExpertDense(e, d, f, cfg, rngs=rngs) if cfg.gated_mlp else None
        out_std = _INIT_STD / math.sqrt(2 * cfg.num_layers)  # as FeedForward's wo
        self.wo = ExpertDense(e, f, d, cfg, rngs=rngs, std=out_std)
        self.dropout_rate = cfg.dropout_rate

    def __call__(self, x_ExNxD: Array, rng: Array | None) -> Array:
        h = self.wi(x_ExNxD, self.activation)
        if self.wg is not None:
            h = h * self.wg(x_ExNxD)
        h = constrain(h, ("expert", "batch", "mlp"))
        return self.wo(dropout(h, self.dropout_rate, rng))


def capacity(cfg: ModelConfig, length: int, train: bool) -> int:
    """Buffer slots per (row, expert) for rows of `length` tokens: the whole row when
    dropless (not training, or moe_capacity_factor 0), else GShard's capacity."""
    if not train or not cfg.moe_capacity_factor:
        return length
    slots = math.ceil(cfg.moe_capacity_factor * length * cfg.num_experts_per_token
                      / cfg.num_experts)
    return max(1, min(length, slots))


def best_groups_only(choice_BxLxE: Array, cfg: ModelConfig) -> Array:
    """The choice scores with every expert outside the token's moe_group_top_k best groups (of
    moe_groups contiguous ones) at -inf. A group's score: its best expert's (DeepSeek-V2,
    softmax routers) or its best two's sum (DeepSeek-V3, sigmoid routers)."""
    groups = cfg.moe_groups
    grouped = choice_BxLxE.reshape(*choice_BxLxE.shape[:-1], groups, -1)
    if cfg.moe_router == "sigmoid":
        group_score = jax.lax.top_k(grouped, 2)[0].sum(-1)
    else:
        group_score = grouped.max(-1)
    _, best = jax.lax.top_k(group_score, cfg.moe_group_top_k)
    keep = jax.nn.one_hot(best, groups, dtype=jnp.int32).sum(-2) > 0  # [B, L, groups]
    return jnp.where(keep[..., None], grouped, -jnp.inf).reshape(choice_BxLxE.shape)


class MoEFeedForward(nnx.Module):
    """x [B, L, D] -> [B, L, D]: each token through its top-k experts, weighted; plus, with
    cfg.moe_shared_mlp_dim, through a shared expert (scaled by sigmoid(shared_gate(x)) when
    cfg.moe_shared_gated)."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        init = jax.random.normal(rngs.params(), (cfg.emb_dim, cfg.num_experts), jnp.float32)
        self.router = nnx.Param((init * _INIT_STD).astype(cfg.weight_dtype))  # [D, E]
        # float32 whatever param_dtype: it moves in steps of moe_bias_update_rate
        self.router_bias = (nnx.Param(jnp.zeros((cfg.num_experts,), jnp.float32))
                            if cfg.moe_router_bias else None)
        self.experts = Experts(cfg, rngs=rngs)
        if cfg.moe_shared_mlp_dim:
            shared = dataclasses.replace(cfg, mlp_dim=cfg.moe_shared_mlp_dim)
            self.shared = FeedForward(shared, rngs=rngs)
        else:
            self.shared = None
        self.shared_gate = (Dense((cfg.emb_dim,), (1,), cfg, rngs=rngs, use_bias=False)
                            if cfg.moe_shared_mlp_dim and cfg.moe_shared_gated else None)

    def route(self, x_BxLxD: Array) -> tuple[Array, Array, Array, Array]:
        """(router logits [B, L, E], the scores as probabilities [B, L, E], top-k weights
        [B, L, k], top-k experts [B, L, k]). The router runs in float32 (Switch Transformer:
        bfloat16 routing was unstable). Sigmoid scores count as probabilities once
        normalised to sum 1 (the load-balancing loss reads them so); the weights are the
        chosen scores themselves."""
        cfg = self.cfg
        logits = jnp.einsum("bld,de->ble", x_BxLxD.astype(jnp.float32),
                            self.router[...].astype(jnp.float32))
        if cfg.moe_router == "sigmoid":
            scores = jax.nn.sigmoid(logits)
            probs = scores / scores.sum(-1, keepdims=True)
        else:
            scores = probs = jax.nn.softmax(logits, axis=-1)
        choice = scores if self.router_bias is None else scores + self.router_bias[...]
        if cfg.moe_groups > 1:
            choice = best_groups_only(choice, cfg)
        _, experts = jax.lax.top_k(jax.lax.stop_gradient(choice), cfg.num_experts_per_token)
        weights = jnp.take_along_axis(scores, experts, axis=-1)
        if cfg.moe_normalize_top_k:
            weights = weights / (weights.sum(-1, keepdims=True) + 1e-20)
        return logits, probs, weights * cfg.moe_routed_scale, experts

    def __call__(self, x_BxLxD: Array, rng: Array | None = None,
                 valid_BxL: Array | None = None) -> Array:
        """`valid` marks real tokens (False: padding, which takes no expert's capacity and
        no part in the router statistics; its output is the shared expert's alone)."""
        cfg = self.cfg
        b, length, d = x_BxLxD.shape
        e, k = cfg.num_experts, cfg.num_experts_per_token
        train = rng is not None
        c = capacity(cfg, length, train)
        logits, probs, weights, experts = self.route(x_BxLxD)
        # assignments [B, k*L], choice-major: every token's first choice, then the second ...
        chosen = experts.transpose(0, 2, 1).reshape(b, k * length)
        token = jnp.tile(jnp.arange(length), k)  # the token of each assignment
        # padding tokens route nowhere: no buffer slot, no share of the statistics
        real = (jnp.ones((b, length), bool) if valid_BxL is None
                else valid_BxL.astype(bool))
        real_choices = jnp.tile(real, (1, k))  # [B, k*L]
        one_hot = jax.nn.one_hot(chosen, e, dtype=jnp.int32) * real_choices[..., None]
        slot = ((jnp.cumsum(one_hot, axis=1) - 1) * one_hot).sum(-1)  # place in its buffer
        kept = (slot < c) & real_choices
        # buffer index (expert * C + slot) of each kept assignment; dropped ones -> E * C,
        # which reads a zero row on the way in and is never read on the way out
        where = jnp.where(kept, chosen * c + slot, e * c)
        rows = jnp.arange(b)[:, None]
        source = jnp.full((b, e * c + 1), length, jnp.int32).at[rows, where].set(
            jnp.broadcast_to(token, (b, k * length)))[:, : e * c]  # token per slot; L: empty
        x_padded = jnp.concatenate([x_BxLxD, jnp.zeros((b, 1, d), x_BxLxD.dtype)], axis=1)
        # each row fills its buffers on its own device (batch over data x fsdp); with the
        # experts spread over fsdp (sharding.RULES) the buffers then travel to them
        buffers = constrain(jnp.take_along_axis(x_padded, source[..., None], axis=1),
                            ("batch", None, None))  # [B, E*C, D]
        buffers = buffers.reshape(b, e, c, d).transpose(1, 0, 2, 3).reshape(e, b * c, d)
        out = self.experts(constrain(buffers, ("expert", "batch", None)), rng)  # [E, B*C, D]
        out = out.reshape(e, b, c, d).transpose(1, 0, 2, 3).reshape(b, e * c, d)
        out = jnp.concatenate([constrain(out, ("batch", None, None)),
                               jnp.zeros((b, 1, d), out.dtype)], axis=1)
        per_choice = constrain(jnp.take_along_axis(out, where[..., None], axis=1),
                               ("batch", None, None))  # [B, k*L, D]
        per_choice = per_choice.reshape(b, k, length, d).astype(jnp.float32)
        y = jnp.einsum("bkld,blk->bld", per_choice, weights)
        if self.shared is not None:
            shared = self.shared(x_BxLxD, fold(rng, 1)).astype(jnp.float32)
            if self.shared_gate is not None:
                shared = jax.nn.sigmoid(self.shared_gate(x_BxLxD).astype(jnp.float32)) * shared
            y = y + shared
        if train:
            self._record(logits, probs, one_hot, kept, real)
        return y.astype(x_BxLxD.dtype)

    def _record(self, logits_BxLxE: Array, probs_BxLxE: Array, one_hot: Array, kept: Array,
                real_BxL: Array) -> None:
        """Adds this call's router statistics, over its real tokens, to the layer's
        RouterStats. `bias_pull` is 0, with the gradient f_e - 1 / E (expert e's excess share
        of the choices) with respect to the router bias: the train step adds it to the loss
        when the bias trains, and the optimizer steps the bias against that gradient's sign
        (DeepSeek-V3)."""
        e, k = self.cfg.num_experts, self.cfg.num_experts_per_token
        real = real_BxL.astype(jnp.float32)
        tokens = jnp.maximum(real.sum(), 1.0)
        load = jax.lax.stop_gradient(one_hot.astype(jnp.float32).sum((0, 1)) / (k * tokens))
        prob = (probs_BxLxE * real[..., None]).sum((0, 1)) / tokens  # P_e [E]
        z = (jnp.square(jax.nn.logsumexp(logits_BxLxE, axis=-1)) * real).sum() / tokens
        dropped = (one_hot.sum(-1) * ~kept).sum() / (k * tokens)  # real choices not kept
        pull = jnp.float32(0.0)
        if self.router_bias is not None:
            pull = jnp.sum((load - 1.0 / e) * self.router_bias[...])
            pull = pull - jax.lax.stop_gradient(pull)
        stats = jnp.stack([e * jnp.sum(load * prob), z, e * load.max(), dropped, pull,
                           jnp.float32(1.0)])
        put_router_stats(self, stats)


def is_moe_layer(cfg: ModelConfig, layer: int) -> bool:
    """Whether block `layer` (from 0) has a mixture feed-forward: with num_experts, every
    moe_every-th block (layers k-1, 2k-1, ...; Qwen-MoE's decoder_sparse_step) from block
    moe_first_dense on (DeepSeek's first_k_dense_replace)."""
    return (cfg.num_experts > 0 and layer >= cfg.moe_first_dense
            and (layer + 1) % cfg.moe_every == 0)


def active_share(cfg: ModelConfig, name: str) -> float:
    """The share of the parameter named `name` (checkpoint path) that one token runs through:
    k / E of a mixture's expert kernels and biases, all of anything else."""
    if cfg.num_experts and "/experts/" in f"/{name}":
        return cfg.num_experts_per_token / cfg.num_experts
    return 1.0


def is_router_bias(name: str) -> bool:
    """Is the parameter at this path (checkpoint name) a router's choice bias?"""
    return name.endswith("mlp/router_bias")


def no_stats() -> Array:
    """What a dense block contributes to the router statistics: zeros, no calls."""
    return jnp.zeros((len(STAT_NAMES),), jnp.float32)


def take_router_stats(module: nnx.Module) -> Array | None:
    """The RouterStats recorded anywhere in `module`, summed and removed from it ([6]
    float32); None when there are none (a dense model, or no training forward)."""
    leaves = jax.tree.leaves(nnx.pop(module, RouterStats))
    return sum(leaves[1:], leaves[0]) if leaves else None


def put_router_stats(module: nnx.Module, stats: Array) -> None:
    """Adds `stats` to `module`'s RouterStats (created on first use): a call's own, or those a
    copy of `module` recorded inside a transform (apply_blocks' remat and scan)."""
    if isinstance(getattr(module, "router_stats", None), RouterStats):
        stats = stats + module.router_stats[...]
    module.router_stats = RouterStats(stats)


def router_metrics(stats: Array) -> dict[str, Array]:
    """{moe_balance_loss, moe_z_loss, moe_max_load, moe_dropped}: the means over the mixture
    layers' calls of summed RouterStats."""
    calls = jnp.maximum(stats[STAT_NAMES.index("calls")], 1.0)
    return {f"moe_{name}": stats[STAT_NAMES.index(name)] / calls for name in REPORTED}


def bias_pull(stats: Array) -> Array:
    """The summed RouterStats' `bias_pull` (0; its gradient drives the router biases)."""
    return stats[STAT_NAMES.index("bias_pull")]
