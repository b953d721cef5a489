"""Blockwise attention: softmax(q . k + bias) v computed one block of keys at a time, so that
no [Q, S] array of scores or probabilities is ever held whole, forward or backward.

The algorithm is FlashAttention's (Dao et al. 2022), written in JAX rather than as a kernel, as
in Rabe & Staats 2021 ("Self-attention does not need O(n^2) memory"): the forward pass scans the
key blocks keeping a running maximum m, normaliser l and weighted sum of values per query row
(the online softmax), and saves only its output and log(l) + m; the backward pass scans the
blocks again, recomputing each block's probabilities from them. Temporaries are
O(Q x block_size) per head instead of the einsum path's O(Q x S), on any backend (XLA:CPU, TPU,
GPU), with any mask, grouped-query heads, logit soft-capping and an additive bias (ALiBi, T5's
relative positions). The boolean mask [B, 1, Q, S] and a bias are still whole arrays, as the
einsum path takes them (the mask is a byte per pair, 4 x heads times smaller than the scores).

Masked scores count for nothing: a query row with every key masked (a padding query) gets a
zero output, where the einsum path's softmax averages the values; no loss reads those rows.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp

Array = jax.Array
_MIN = float(jnp.finfo(jnp.float32).min)


def blockwise_attention(q_BxQxHxK: Array, k_BxSxNxK: Array, v_BxSxNxV: Array,
                        mask_Bx1xQxS: Array, bias_BxHxQxS: Array | None, *,
                        softcap: float | None, block_size: int) -> Array:
    """softmax(q . k [soft-capped] + bias, where `mask`) v: [B, Q, H, V] in q's dtype, with
    N <= H key/value heads (query head h reads key head h // (H / N)), over blocks of
    `block_size` keys (the last one padded with masked keys)."""
    s = k_BxSxNxK.shape[1]
    blocks = math.ceil(s / block_size)
    pad = blocks * block_size - s
    k, v = k_BxSxNxK.astype(q_BxQxHxK.dtype), v_BxSxNxV.astype(q_BxQxHxK.dtype)
    mask = jnp.broadcast_to(mask_Bx1xQxS, (*mask_Bx1xQxS.shape[:3], s))
    bias = bias_BxHxQxS
    if pad:  # padded keys are masked out; their bias and values are never read
        k = jnp.pad(k, ((0, 0), (0, pad), (0, 0), (0, 0)))
        v = jnp.pad(v, ((0, 0), (0, pad), (0, 0), (0, 0)))
        mask = jnp.pad(mask, ((0, 0), (0, 0), (0, 0), (0, pad)))
        if bias is not None:
            bias = jnp.pad(bias, ((0, 0), (0, 0), (0, 0), (0, pad)))
    return _attention(q_BxQxHxK, k, v, mask, bias, softcap, block_size)


def _grouped_rows(x_BxQxHxK: Array, heads: int) -> Array:
    """[B, Q, H, K] -> [B, N, Q * G, K]: a key head's G query heads as rows, query-major (the
    einsum path's layout, so a query axis split over devices stays split)."""
    b, q, h, d = x_BxQxHxK.shape
    return (x_BxQxHxK.reshape(b, q, heads, h // heads, d).transpose(0, 2, 1, 3, 4)
            .reshape(b, heads, q * (h // heads), d))


def _ungrouped(x_BxNxRxV: Array, queries: int) -> Array:
    """`_grouped_rows`' inverse: [B, N, Q * G, V] -> [B, Q, N * G, V]."""
    b, n, r, d = x_BxNxRxV.shape
    return (x_BxNxRxV.reshape(b, n, queries, r // queries, d).transpose(0, 2, 1, 3, 4)
            .reshape(b, queries, r // queries * n, d))


def _block(x: Array, index: Array, size: int, axis: int) -> Array:
    return jax.lax.dynamic_slice_in_dim(x, index * size, size, axis=axis)


def _bias_rows(bias_BxHxQxT: Array, heads: int) -> Array:
    """A bias block [1 or B, H, Q, T] in the scores' layout [1 or B, N, Q * G, T]."""
    b, h, q, t = bias_BxHxQxT.shape
    return (bias_BxHxQxT.reshape(b, heads, h // heads, q, t).transpose(0, 1, 3, 2, 4)
            .reshape(b, heads, q * (h // heads), t))


def _bias_heads(d_BxNxRxT: Array, queries: int) -> Array:
    """`_bias_rows`' inverse: [B, N, Q * G, T] -> [B, H, Q, T]."""
    b, n, r, t = d_BxNxRxT.shape
    g = r // queries
    return d_BxNxRxT.reshape(b, n, queries, g, t).transpose(0, 1, 3, 2, 4).reshape(
        b, n * g, queries, t)


def _block_scores(q_BxNxRxK: Array, k_BxTxNxK: Array, mask_Bx1xQxT: Array,
                  bias_BxHxQxT: Array | None, softcap: float | None
                  ) -> tuple[Array, Array, Array | None]:
    """One key block's float32 scores [B, N, R, T] (R = Q * G), where they are valid
    [B, 1 or N, Q, 1, T] (to broadcast over a 5-D view), and tanh(logits / cap) for the
    soft-cap's gradient."""
    n = q_BxNxRxK.shape[1]
    logits = jnp.matmul(q_BxNxRxK, k_BxTxNxK.transpose(0, 2, 3, 1),
                        preferred_element_type=jnp.float32)
    capped = None
    if softcap is not None:
        capped = jnp.tanh(logits / softcap)
        logits = softcap * capped
    if bias_BxHxQxT is not None:
        logits = logits + _bias_rows(bias_BxHxQxT, n).astype(jnp.float32)
    return logits, mask_Bx1xQxT[:, :, :, None, :], capped


def _where_valid(valid: Array, x_BxNxRxT: Array, other: float) -> Array:
    """x where the (5-D broadcast) mask holds, else `other`, in x's 4-D layout."""
    b, n, r, t = x_BxNxRxT.shape
    queries = valid.shape[2]
    x5 = x_BxNxRxT.reshape(b, n, queries, r // queries, t)
    return jnp.where(valid, x5, other).reshape(b, n, r, t)


@functools.partial(jax.custom_vjp, nondiff_argnums=(5, 6))
def _attention(q, k, v, mask, bias, softcap, block_size):
    return _forward(q, k, v, mask, bias, softcap, block_size)[0]


def _forward(q_BxQxHxK, k_BxSxNxK, v_BxSxNxV, mask_Bx1xQxS, bias, softcap, block_size):
    """Output [B, Q, H, V] and each row's log-sum-exp of scores [B, N, R] (float32)."""
    n, queries = k_BxSxNxK.shape[2], q_BxQxHxK.shape[1]
    q = _grouped_rows(q_BxQxHxK, n)
    rows = q.shape[:3]

    def step(carry, j):
        row_max, row_sum, acc = carry  # [B, N, R] each; the sum of values [B, N, R, V]
        bias_j = None if bias is None else _block(bias, j, block_size, 3)
        scores, valid, _ = _block_scores(q, _block(k_BxSxNxK, j, block_size, 1),
                                         _block(mask_Bx1xQxS, j, block_size, 3), bias_j, softcap)
        new_max = jnp.maximum(row_max, _where_valid(valid, scores, _MIN).max(-1))
        p = _where_valid(valid, jnp.exp(scores - new_max[..., None]), 0.0)
        correction = jnp.exp(row_max - new_max)  # rescales what earlier blocks summed
        v_j = _block(v_BxSxNxV, j, block_size, 1).transpose(0, 2, 1, 3)
        acc = acc * correction[..., None] + jnp.matmul(
            p.astype(q.dtype), v_j, preferred_element_type=jnp.float32)
        return (new_max, row_sum * correction + p.sum(-1), acc), None

    init = (jnp.full(rows, _MIN, jnp.float32), jnp.zeros(rows, jnp.float32),
            jnp.zeros((*rows, v_BxSxNxV.shape[3]), jnp.float32))
    blocks = k_BxSxNxK.shape[1] // block_size
    (row_max, row_sum, acc), _ = jax.lax.scan(step, init, jnp.arange(blocks))
    seen = row_sum > 0  # rows with at least one valid key
    row_sum = jnp.where(seen, row_sum, 1.0)
    out = acc / row_sum[..., None]
    lse = jnp.where(seen, row_max + jnp.log(row_sum), 0.0)
    return _ungrouped(out.astype(q.dtype), queries), lse


def _attention_fwd(q, k, v, mask, bias, softcap, block_size):
    out, lse = _forward(q, k, v, mask, bias, softcap, block_size)
    return out, (q, k, v, mask, bias, out, lse)


def _attention_bwd(softcap, block_size, residuals, d_out_BxQxHxV):
    q_BxQxHxK, k_BxSxNxK, v_BxSxNxV, mask, bias, out, lse = residuals
    n, queries = k_BxSxNxK.shape[2], q_BxQxHxK.shape[1]
    dtype = q_BxQxHxK.dtype
    q = _grouped_rows(q_BxQxHxK, n)
    d_out = _grouped_rows(d_out_BxQxHxV.astype(dtype), n)
    # sum over values of d_out * out: the softmax gradient's row term
    delta = (d_out.astype(jnp.float32) * _grouped_rows(out, n).astype(jnp.float32)).sum(-1)

    def step(carry, j):
        dq, dk, dv, dbias = carry
        k_j = _block(k_BxSxNxK, j, block_size, 1)
        bias_j = None if bias is None else _block(bias, j, block_size, 3)
        scores, valid, capped = _block_scores(q, k_j, _block(mask, j, block_size, 3), bias_j,
                                              softcap)
        p = _where_valid(valid, jnp.exp(scores - lse[..., None]), 0.0)  # [B, N, R, T]
        v_j = _block(v_BxSxNxV, j, block_size, 1).transpose(0, 2, 1, 3)  # [B, N, T, V]
        dv_j = jnp.matmul(p.astype(dtype).transpose(0, 1, 3, 2), d_out,
                          preferred_element_type=jnp.float32)
        dp = jnp.matmul(d_out, v_j.transpose(0, 1, 3, 2), preferred_element_type=jnp.float32)
        ds = p * (dp - delta[..., None])  # d loss / d (scores), bias included
        if dbias is not None:
            db = _bias_heads(ds, queries)
            if dbias.shape[0] == 1:
                db = db.sum(0, keepdims=True)
            dbias = jax.lax.dynamic_update_slice_in_dim(dbias, db.astype(dbias.dtype),
                                                        j * block_size, axis=3)
        if capped is not None:
            ds = ds * (1.0 - capped * capped)
        ds = ds.astype(dtype)
        dq = dq + jnp.matmul(ds, k_j.transpose(0, 2, 1, 3), preferred_element_type=jnp.float32)
        dk_j = jnp.matmul(ds.transpose(0, 1, 3, 2), q, preferred_element_type=jnp.float32)
        dk = jax.lax.dynamic_update_slice_in_dim(
            dk, dk_j.transpose(0, 2, 1, 3).astype(dk.dtype), j * block_size, axis=1)
        dv = jax.lax.dynamic_update_slice_in_dim(
            dv, dv_j.transpose(0, 2, 1, 3).astype(dv.dtype), j * block_size, axis=1)
        return (dq, dk, dv, dbias), None

    init = (jnp.zeros(q.shape, jnp.float32), jnp.zeros_like(k_BxSxNxK),
            jnp.zeros_like(v_BxSxNxV), None if bias is None else jnp.zeros_like(bias))
    blocks = k_BxSxNxK.shape[1] // block_size
    (dq, dk, dv, dbias), _ = jax.lax.scan(step, init, jnp.arange(blocks))
    return _ungrouped(dq, queries).astype(dtype), dk, dv, None, dbias


_attention.defvjp(_attention_fwd, _attention_bwd)
