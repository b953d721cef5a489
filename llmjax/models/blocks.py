"""A Transformer block: self-attention, optional cross-attention (encoder-decoder), and
feed-forward, each wrapped in residual + norm, pre-norm (GPT-2, T5), post-norm (original
Transformer, BERT) or output-norm (the sublayer's output normalised before the residual add,
nothing on its input: OLMo 2); pre-norm blocks may also normalise each sublayer's output before the
residual add (cfg.post_norms: Gemma 2 and 3's "sandwich"), or add attention and feed-forward
of the same input side by side (cfg.parallel_residual: GPT-NeoX, GPT-J, PaLM)."""

from __future__ import annotations

import functools

import jax
from flax import nnx

from llmjax.models.attention import MultiHeadAttention
from llmjax.models.config import ModelConfig
from llmjax.models.latent_attention import LatentAttention
from llmjax.models.layers import MATMUL_NAME, FeedForward, Norm, dropout, fold
from llmjax.models.moe import MoEFeedForward, no_stats, put_router_stats, take_router_stats
from llmjax.sharding import constrain

Array = jax.Array


class TransformerBlock(nnx.Module):
    """`moe`: its feed-forward is a mixture of experts (models/moe.py)."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs, cross_attention: bool = False,
                 moe: bool = False):
        self.norm_position = cfg.norm_position  # pre | post | output
        self.parallel = cfg.parallel_residual
        self.dropout_rate = cfg.dropout_rate
        self.attention_norm = Norm(cfg.emb_dim, cfg)
        self.attention = (LatentAttention(cfg, rngs=rngs) if cfg.kv_lora_rank
                          else MultiHeadAttention(cfg, rngs=rngs))
        if cross_attention:
            self.cross_attention_norm = Norm(cfg.emb_dim, cfg)
            self.cross_attention = MultiHeadAttention(cfg, rngs=rngs)
        else:
            self.cross_attention = None
        # one norm for both sublayers: parallel blocks whose MLP reads the attention's input
        self.mlp_norm = None if cfg.parallel_shared_norm else Norm(cfg.emb_dim, cfg)
        self.mlp = MoEFeedForward(cfg, rngs=rngs) if moe else FeedForward(cfg, rngs=rngs)
        post = cfg.post_norms
        self.attention_post_norm = Norm(cfg.emb_dim, cfg) if post else None
        self.cross_attention_post_norm = (Norm(cfg.emb_dim, cfg) if post and cross_attention
                                          else None)
        self.mlp_post_norm = Norm(cfg.emb_dim, cfg) if post else None

    def _residual(self, x: Array, norm: Norm, sublayer, rng: Array | None,
                  post_norm: Norm | None) -> tuple[Array, object]:
        y, extra = sublayer(norm(x) if self.norm_position == "pre" else x)
        if self.norm_position == "output":
            y = norm(y)
        if post_norm is not None:
            y = post_norm(y)
        x = x + dropout(y, self.dropout_rate, rng)
        return (norm(x) if self.norm_position == "post" else x), extra

    def __call__(self, x_BxLxD: Array, mask: Array, positions_BxL: Array | None, *,
                 cache: dict | None = None, cache_index: Array | None = None,
                 bias: Array | None = None, memory_BxSxD: Array | None = None,
                 memory_kv: dict | None = None, memory_mask: Array | None = None,
                 windowed: bool | Array = False, rng: Array | None = None
                 ) -> tuple[Array, dict | None]:
        """(x [B, L, D], updated self-attention cache). Cross-attention reads the encoder's
        output `memory` (or its precomputed `memory_kv`) under `memory_mask` [B, 1, L, S].
        `windowed`: this layer's attention is windowed (its rotary base; the mask is given)."""

        # the residual stream: batch split over data x fsdp, tokens over sequence, model
        # dimension whole
        x_BxLxD = constrain(x_BxLxD, ("batch", "length", None))

        def attend(h):
            return self.attention(h, mask, positions_BxQ=positions_BxL, cache=cache,
                                  cache_index=cache_index, bias_BxHxQxK=bias, windowed=windowed,
                                  rng=fold(rng, 0))

        if self.parallel:  # x + attention(norm(x)) + mlp(norm'(x)): one residual add
            h = self.attention_norm(x_BxLxD)
            y, cache = attend(h)
            if self.attention_post_norm is not None:
                y = self.attention_post_norm(y)
            z = self._feed_forward(h if self.mlp_norm is None else self.mlp_norm(x_BxLxD),
                                   fold(rng, 2), mask)
            if self.mlp_post_norm is not None:
                z = self.mlp_post_norm(z)
            return (x_BxLxD + dropout(y, self.dropout_rate, fold(rng, 1))
                    + dropout(z, self.dropout_rate, fold(rng, 3))), cache
        x, cache = self._residual(x_BxLxD, self.attention_norm, attend, fold(rng, 1),
                                  self.attention_post_norm)
        if self.cross_attention is not None:
            def cross(h):
                return self.cross_attention(h, memory_mask, kv_BxKxD=memory_BxSxD,
                                            static_kv=memory_kv, rng=fold(rng, 4))

            x, _ = self._residual(x, self.cross_attention_norm, cross, fold(rng, 5),
                                  self.cross_attention_post_norm)
        x, _ = self._residual(x, self.mlp_norm,
                              lambda h: (self._feed_forward(h, fold(rng, 2), mask), None),
                              fold(rng, 3), self.mlp_post_norm)
        return x, cache

    def _feed_forward(self, h_BxLxD: Array, rng: Array | None, mask: Array) -> Array:
        if not isinstance(self.mlp, MoEFeedForward):
            return self.mlp(h_BxLxD, rng)
        # a token is real when it attends to anything (padding queries' mask rows are empty)
        return self.mlp(h_BxLxD, rng, valid_BxL=mask[:, 0].any(-1))


def apply_blocks(layers: nnx.List, x_BxLxD: Array, mask: Array, positions_BxL: Array | None,
                 *, cfg: ModelConfig, rng: Array | None = None,
                 window_mask: Array | None = None, **kwargs) -> Array:
    """x through every block of a stack without a cache (training and full-sequence forward);
    block i draws dropout from fold(rng, i + 1) and attends under `window_mask` when
    cfg.layer_windowed(i), else under `mask`. Memory and compile levers, same function:

    - cfg.remat: 'full' recomputes each block in the backward pass (keeps only its input);
      'dots' keeps the outputs of the weight matmuls and recomputes the rest.
      (Either way each block runs on a copy of its parameters inside a transform: the router
      statistics a mixture block records there come out as values and are put back on it.)
    - cfg.scan_layers: one jax.lax.scan over the blocks' parameters stacked along a new
      leading axis, so XLA compiles one block instead of L. The parameters themselves stay one
      entry per layer (checkpoints and conversions do not depend on the switch); stacking
      copies them once per step.
    """
    windowed = [window_mask is not None and cfg.layer_windowed(i) for i in range(len(layers))]
    if cfg.remat == "none" and not cfg.scan_layers:
        for i, layer in enumerate(layers):
            x_BxLxD, _ = layer(x_BxLxD, window_mask if windowed[i] else mask, positions_BxL,
                               rng=fold(rng, i + 1), windowed=windowed[i], **kwargs)
        return x_BxLxD
    graphdef = nnx.graphdef(layers[0])
    states = [nnx.state(layer) for layer in layers]

    def block(state, x, layer_rng, is_windowed):
        # a traced flag (a scan over differing layers) picks the layer's mask and rotary base
        # as data; a Python bool lets blockwise attention skip the tiles outside the window
        if window_mask is None or isinstance(is_windowed, bool):
            layer_mask = window_mask if is_windowed else mask
        else:
            layer_mask = jax.numpy.where(is_windowed, window_mask, mask)
        layer = nnx.merge(graphdef, state)
        y, _ = layer(x, layer_mask, positions_BxL, rng=layer_rng, windowed=is_windowed,
                     **kwargs)
        stats = take_router_stats(layer) if layer_rng is not None else None
        return y, no_stats() if stats is None else stats

    policy = (jax.checkpoint_policies.save_only_these_names(MATMUL_NAME)
              if cfg.remat == "dots" else None)

    def rematerialised(is_windowed):  # the flag stays static, outside the checkpoint
        f = functools.partial(block, is_windowed=is_windowed)
        return f if cfg.remat == "none" else jax.checkpoint(f, policy=policy)

    if not cfg.scan_layers:
        for i, state in enumerate(states):
            x_BxLxD, stats = rematerialised(windowed[i])(state, x_BxLxD, fold(rng, i + 1))
            if rng is not None and isinstance(layers[i].mlp, MoEFeedForward):
                put_router_stats(layers[i].mlp, stats)
        return x_BxLxD
    flags = jax.numpy.array(windowed)
    uniform = len(set(windowed)) == 1  # every layer alike: the flag need not be data

    def body(x, inputs):
        state, i, is_windowed = inputs
        layer_rng = None if rng is None else jax.random.fold_in(rng, i + 1)
        return rematerialised(windowed[0] if uniform else is_windowed)(state, x, layer_rng)

    stacked = jax.tree.map(lambda *leaves: jax.numpy.stack(leaves), *states)
    x_BxLxD, stats = jax.lax.scan(body, x_BxLxD,
                                  (stacked, jax.numpy.arange(len(states)), flags))
    if rng is not None and cfg.num_experts:  # scan needs every block alike: all mixtures
        put_router_stats(layers[0].mlp, stats.sum(0))
    return x_BxLxD
