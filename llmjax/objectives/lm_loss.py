"""A language model's token loss from its final hidden states: the output projection, the
cross-entropy and token accuracy, whole or a chunk of the sequence at a time.

With model.logits_chunks = N > 1 the [B, L, V] logits never exist at once: one jax.lax.scan
walks N chunks of the sequence, and under differentiation each chunk computes its gradients
(with respect to its hidden states and to the output head's parameters) as it goes, the way
Liger's fused linear cross-entropy does, so only [B, L / N, V] logits are live at a time and no
logits are recomputed in the backward pass. The sums are the plain path's up to the order of
float32 additions (tests/test_logits_chunks.py).
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
from flax import nnx

from llmjax.objectives.base import NO_REGULARIZERS, Regularizers, cross_entropy

Array = jax.Array
Sums = tuple[Array, Array]  # (weighted cross-entropy sum, weighted count of argmax hits)


def token_sums(model: nnx.Module, hidden_BxLxD: Array, targets_BxL: Array, weights_BxL: Array,
               regularizers: Regularizers = NO_REGULARIZERS) -> Sums:
    """(weighted sum of per-token cross-entropies, weighted count of argmax hits) of
    `model.output_logits(hidden)`, in model.cfg.logits_chunks chunks of the sequence."""
    chunks = min(model.cfg.logits_chunks, hidden_BxLxD.shape[1])
    if chunks == 1:
        return _sums(model.output_logits, hidden_BxLxD, targets_BxL, weights_BxL, regularizers)
    head_graph, head_state = nnx.split(model.output_head)

    def logits_of(state, hidden):
        return model.output_logits(hidden, head=nnx.merge(head_graph, state))

    chunked = _by_chunk(chunks)
    return _chunked_sums(logits_of, regularizers, head_state, chunked(hidden_BxLxD),
                         chunked(targets_BxL), chunked(weights_BxL))


def _sums(logits_of: Callable[[Array], Array], hidden_BxLxD: Array, targets_BxL: Array,
          weights_BxL: Array, regularizers: Regularizers) -> Sums:
    logits = logits_of(hidden_BxLxD)
    loss = (cross_entropy(logits, targets_BxL, regularizers) * weights_BxL).sum()
    return loss, ((logits.argmax(-1) == targets_BxL) * weights_BxL).sum()


def _by_chunk(chunks: int) -> Callable[[Array], Array]:
    """[B, L, ...] -> [chunks, B, ceil(L / chunks), ...], the sequence padded with zeros (a
    padded position has weight 0)."""
    def split(x):
        size = -(-x.shape[1] // chunks)
        x = jnp.pad(x, [(0, 0), (0, size * chunks - x.shape[1])] + [(0, 0)] * (x.ndim - 2))
        return jnp.moveaxis(x.reshape(x.shape[0], chunks, size, *x.shape[2:]), 1, 0)
    return split


def _zero_sums() -> Sums:
    return jnp.zeros((), jnp.float32), jnp.zeros((), jnp.float32)


def _chunked_sums(logits_of: Callable, regularizers: Regularizers, state: nnx.State,
                  hidden_CxBxLxD: Array, targets_CxBxL: Array, weights_CxBxL: Array) -> Sums:
    """The sums over the chunks (leading axis) of the sequence, without the gradient
    machinery's [B, L, V] residuals: see the module docstring."""
    def chunk_sums(state, hidden, targets, weights):
        return _sums(lambda h: logits_of(state, h), hidden, targets, weights, regularizers)

    @jax.custom_vjp
    def sums(state, hidden, targets, weights):
        def add(totals, chunk):
            return jax.tree.map(jnp.add, totals, chunk_sums(state, *chunk)), None
        return jax.lax.scan(add, _zero_sums(), (hidden, targets, weights))[0]

    def sums_and_gradients(state, hidden, targets, weights):
        """Forward pass under differentiation: the sums, and the gradients of the loss sum
        with respect to the head's parameters (accumulated over chunks in float32) and to
        each chunk's hidden states."""
        loss_and_grads = jax.value_and_grad(chunk_sums, argnums=(0, 1), has_aux=True)

        def add(carry, chunk):
            totals, state_grads = carry
            (loss, hits), (chunk_state_grads, hidden_grads) = loss_and_grads(state, *chunk)
            state_grads = jax.tree.map(lambda g, c: g + c.astype(jnp.float32), state_grads,
                                       chunk_state_grads)
            return ((totals[0] + loss, totals[1] + hits), state_grads), hidden_grads

        zero_grads = jax.tree.map(lambda x: jnp.zeros(x.shape, jnp.float32), state)
        (totals, state_grads), hidden_grads = jax.lax.scan(
            add, (_zero_sums(), zero_grads), (hidden, targets, weights))
        state_grads = jax.tree.map(lambda g, x: g.astype(x.dtype), state_grads, state)
        return totals, (state_grads, hidden_grads)

    def scale_gradients(residuals, cotangents):
        state_grads, hidden_grads = residuals
        loss_cotangent = cotangents[0]  # the hit count is not differentiable
        scale = lambda g: (g * loss_cotangent).astype(g.dtype)  # noqa: E731
        return jax.tree.map(scale, state_grads), scale(hidden_grads), None, None

    sums.defvjp(sums_and_gradients, scale_gradients)
    return sums(state, hidden_CxBxLxD, targets_CxBxL, weights_CxBxL)
