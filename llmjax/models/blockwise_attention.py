"""Blockwise attention: softmax(q . k + bias) v computed one tile of queries x keys at a time,
so that no [Q, S] array of scores or probabilities is ever held whole, forward or backward.

The algorithm is FlashAttention's (Dao et al. 2022), written in JAX rather than as a kernel, as
in Rabe & Staats 2021 ("Self-attention does not need O(n^2) memory"): the forward pass scans the
tiles keeping a running maximum, normaliser and weighted sum of values per query row (the online
softmax), and saves only its output and each row's log-sum-exp; the backward pass scans the
tiles again, recomputing each one's probabilities from them. Temporaries are O(rows x
block_size) per head instead of the einsum path's O(Q x S), on any backend (XLA:CPU, TPU, GPU),
with any mask, grouped-query heads, logit soft-capping and an additive bias (ALiBi, T5's
relative positions). The boolean mask [B, 1, Q, S] and a bias are still whole arrays, as the
einsum path takes them (the mask is a byte per pair, 4 x heads times smaller than the scores).

Tiles: where the caller promises a causal mask over the same positions (`causal`: decoder
self-attention without a cache), queries come in blocks too and only the tiles on or below the
diagonal run, about half the work. Otherwise every query is one tile row, scanned against each
block of keys: a query axis split over devices (context parallelism) stays split.

Attention dropout draws its bits per tile from the key folded with the tile's position
(`tile_keep`), so the backward pass draws the same ones: the einsum path's distribution, other
bits.

Masked scores count for nothing: a query row with every key masked (a padding query) gets a
zero output, where the einsum path's softmax averages the values; no loss reads those rows.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array
_MIN = float(jnp.finfo(jnp.float32).min)


def blockwise_attention(q_BxQxHxK: Array, k_BxSxNxK: Array, v_BxSxNxV: Array,
                        mask_Bx1xQxS: Array, bias_BxHxQxS: Array | None, *,
                        softcap: float | None, block_size: int, causal: bool = False,
                        window: int | None = None, dropout_rate: float = 0.0,
                        rng: Array | None = None) -> Array:
    """softmax(q . k [soft-capped] + bias, where `mask`) v: [B, Q, H, V] in q's dtype, with
    N <= H key/value heads (query head h reads key head h // (H / N)), over blocks of
    `block_size` keys (the last one padded with masked keys). `causal`: the mask never holds
    above the diagonal and query i is key i (Q = S), so the tiles above it are skipped; with
    `window`, it never holds for keys `window` or more before the query either, so the tiles
    wholly that far below the diagonal are skipped too. With `rng` and a `dropout_rate`, each
    probability is dropped (the rest scaled by 1 / (1 - rate)) by bits drawn per tile
    (`tile_keep`), the same in the backward pass."""
    queries, s = q_BxQxHxK.shape[1], k_BxSxNxK.shape[1]
    if causal and queries != s:
        raise ValueError(f"causal blockwise attention needs as many queries as keys, not "
                         f"{queries} and {s}")
    blocks = math.ceil(s / block_size)
    pad = blocks * block_size - s
    q, k, v = q_BxQxHxK, k_BxSxNxK.astype(q_BxQxHxK.dtype), v_BxSxNxV.astype(q_BxQxHxK.dtype)
    mask = jnp.broadcast_to(mask_Bx1xQxS, (*mask_Bx1xQxS.shape[:3], s))
    bias = bias_BxHxQxS
    query_pad = pad if causal else 0  # causal tiles are square: queries padded as keys are
    if pad:  # padded keys are masked out (padded queries too); their bias is never read
        k = jnp.pad(k, ((0, 0), (0, pad), (0, 0), (0, 0)))
        v = jnp.pad(v, ((0, 0), (0, pad), (0, 0), (0, 0)))
        q = jnp.pad(q, ((0, 0), (0, query_pad), (0, 0), (0, 0)))
        mask = jnp.pad(mask, ((0, 0), (0, 0), (0, query_pad), (0, pad)))
        if bias is not None:
            bias = jnp.pad(bias, ((0, 0), (0, 0), (0, query_pad), (0, pad)))
    tiles = _tiles(blocks, block_size, causal, window)
    query_block = block_size if causal else queries
    if rng is None or dropout_rate == 0.0:
        rng, dropout_rate = None, 0.0
    out = _attention(q, k, v, mask, bias, rng, softcap, block_size, query_block, tiles,
                     dropout_rate)
    return out[:, :queries]


def tile_keep(rng: Array, i: Array, j: Array, shape: tuple[int, ...], rate: float) -> Array:
    """Which probabilities of tile (query block i, key block j) dropout keeps, [B, N, r, T]
    in the scores' layout: bits of the key folded with i and j, whatever tiles run."""
    key = jax.random.fold_in(jax.random.fold_in(rng, i), j)
    return jax.random.bernoulli(key, 1.0 - rate, shape)


def _tiles(blocks: int, size: int, causal: bool, window: int | None
           ) -> tuple[tuple[int, int], ...]:
    """(query block, key block) pairs to compute, in scan order: the lower triangle of square
    tiles where causal (less those whose last key is `window` or more before their first
    query), else every key block for the one block of all queries."""
    if not causal:
        return tuple((0, j) for j in range(blocks))
    return tuple((i, j) for i in range(blocks) for j in range(i + 1)
                 if window is None or (j + 1) * size - 1 > i * size - window)


def grouped_rows(x_BxQxHxK: Array, heads: int) -> Array:
    """[B, Q, H, K] -> [B, N, Q * G, K]: a key head's G query heads as rows, query-major (the
    scores' layout in both attention paths, so a query axis split over devices stays split)."""
    b, q, h, d = x_BxQxHxK.shape
    return (x_BxQxHxK.reshape(b, q, heads, h // heads, d).transpose(0, 2, 1, 3, 4)
            .reshape(b, heads, q * (h // heads), d))


def ungrouped_rows(x_BxNxRxV: Array, queries: int) -> Array:
    """`grouped_rows`' inverse: [B, N, Q * G, V] -> [B, Q, N * G, V]."""
    b, n, r, d = x_BxNxRxV.shape
    return (x_BxNxRxV.reshape(b, n, queries, r // queries, d).transpose(0, 2, 1, 3, 4)
            .reshape(b, queries, r // queries * n, d))


def _block(x: Array, index: Array, size: int, axis: int) -> Array:
    return jax.lax.dynamic_slice_in_dim(x, index * size, size, axis=axis)


def bias_rows(bias_BxHxQxT: Array, heads: int) -> Array:
    """A bias [1 or B, H, Q, T] in the scores' layout [1 or B, N, Q * G, T]."""
    b, h, q, t = bias_BxHxQxT.shape
    return (bias_BxHxQxT.reshape(b, heads, h // heads, q, t).transpose(0, 1, 3, 2, 4)
            .reshape(b, heads, q * (h // heads), t))


def _bias_heads(d_BxNxRxT: Array, queries: int) -> Array:
    """`bias_rows`' inverse: [B, N, Q * G, T] -> [B, H, Q, T]."""
    b, n, r, t = d_BxNxRxT.shape
    g = r // queries
    return d_BxNxRxT.reshape(b, n, queries, g, t).transpose(0, 1, 3, 2, 4).reshape(
        b, n * g, queries, t)


def _block_scores(q_BxNxRxK: Array, k_BxTxNxK: Array, mask_Bx1xQxT: Array,
                  bias_BxHxQxT: Array | None, softcap: float | None
                  ) -> tuple[Array, Array, Array | None]:
    """One key block's float32 scores [B, N, R, T] (R = Q * G), where they are valid
    ([B, 1, Q, 1, T] to broadcast over a 5-D view; [B, 1, Q, T] where G = 1), and
    tanh(logits / cap) for the soft-cap's gradient."""
    n, grouped = q_BxNxRxK.shape[1], q_BxNxRxK.shape[2] != mask_Bx1xQxT.shape[2]
    logits = jnp.matmul(q_BxNxRxK, k_BxTxNxK.transpose(0, 2, 3, 1),
                        preferred_element_type=jnp.float32)
    capped = None
    if softcap is not None:
        capped = jnp.tanh(logits / softcap)
        logits = softcap * capped
    if bias_BxHxQxT is not None:
        logits = logits + bias_rows(bias_BxHxQxT, n).astype(jnp.float32)
    return logits, mask_Bx1xQxT[:, :, :, None, :] if grouped else mask_Bx1xQxT, capped


def _tile_scores(q_BxNxRxK: Array, k_BxSxNxK: Array, mask_Bx1xQxS: Array, bias: Array | None,
                 i: Array, j: Array, softcap: float | None, block_size: int, query_block: int,
                 queries: int) -> tuple[Array, Array, Array, Array, Array | None]:
    """Tile (query block i, key block j): its query rows [B, N, r, K], keys [B, T, N, K], and
    `_block_scores`' scores, validity and soft-cap tanh."""
    rows = query_block * (q_BxNxRxK.shape[2] // queries)
    q_i = _rows_of(q_BxNxRxK, i, rows, q_BxNxRxK.shape[2], 2)
    k_j = _block(k_BxSxNxK, j, block_size, 1)
    mask_ij = _block(_rows_of(mask_Bx1xQxS, i, query_block, queries, 2), j, block_size, 3)
    bias_ij = None if bias is None else _block(
        _rows_of(bias, i, query_block, queries, 2), j, block_size, 3)
    return (q_i, k_j, *_block_scores(q_i, k_j, mask_ij, bias_ij, softcap))


def _where_valid(valid: Array, x_BxNxRxT: Array, other: float) -> Array:
    """x where the mask holds, else `other`, in x's 4-D layout (without grouping, 4-D
    throughout: XLA:CPU runs arrays with a unit axis slower, see attention.grouped_attention)."""
    if valid.ndim == 4:
        return jnp.where(valid, x_BxNxRxT, other)
    b, n, r, t = x_BxNxRxT.shape
    queries = valid.shape[2]
    x5 = x_BxNxRxT.reshape(b, n, queries, r // queries, t)
    return jnp.where(valid, x5, other).reshape(b, n, r, t)


def _rows_of(x: Array, i: Array, size: int, total: int, axis: int) -> Array:
    """Block i of `size` along `axis`, or x itself when one block is all of it (a query axis
    split over devices is then never sliced)."""
    return x if size == total else _block(x, i, size, axis)


def _set_rows(x: Array, update: Array, i: Array, size: int, axis: int) -> Array:
    if update.shape[axis] == x.shape[axis]:
        return update
    return jax.lax.dynamic_update_slice_in_dim(x, update, i * size, axis=axis)


@functools.partial(jax.custom_vjp, nondiff_argnums=(6, 7, 8, 9, 10))
def _attention(q, k, v, mask, bias, rng, softcap, block_size, query_block, tiles, rate):
    return _forward(q, k, v, mask, bias, rng, softcap, block_size, query_block, tiles, rate)[0]


def _dropped(p: Array, rng: Array | None, i: Array, j: Array, rate: float) -> Array:
    """A tile's probabilities after dropout (inverted: kept ones / (1 - rate))."""
    if rng is None:
        return p
    return jnp.where(tile_keep(rng, i, j, p.shape, rate), p / (1.0 - rate), 0.0)


def _forward(q_BxQxHxK, k_BxSxNxK, v_BxSxNxV, mask_Bx1xQxS, bias, rng, softcap, block_size,
             query_block, tiles, rate):
    """Output [B, Q, H, V] and each row's log-sum-exp of scores [B, N, R] (float32)."""
    n, queries = k_BxSxNxK.shape[2], q_BxQxHxK.shape[1]
    q = grouped_rows(q_BxQxHxK, n)
    rows_total, rows = q.shape[2], query_block * (q.shape[2] // queries)  # R, a tile's rows

    def step(carry, tile):
        i, j = tile[0], tile[1]
        # per row: running max and sum of exp(score - max) [B, N, R]; sum of values [.., V]
        row_max, row_sum, acc = carry
        _, _, scores, valid, _ = _tile_scores(q, k_BxSxNxK, mask_Bx1xQxS, bias, i, j, softcap,
                                              block_size, query_block, queries)
        old_max, old_sum, old_acc = (_rows_of(x, i, rows, rows_total, 2)
                                     for x in (row_max, row_sum, acc))
        new_max = jnp.maximum(old_max, _where_valid(valid, scores, _MIN).max(-1))
        p = _where_valid(valid, jnp.exp(scores - new_max[..., None]), 0.0)
        correction = jnp.exp(old_max - new_max)  # rescales what earlier tiles summed
        v_j = _block(v_BxSxNxV, j, block_size, 1).transpose(0, 2, 1, 3)
        new_acc = old_acc * correction[..., None] + jnp.matmul(
            _dropped(p, rng, i, j, rate).astype(q.dtype), v_j, preferred_element_type=jnp.float32)
        new_sum = old_sum * correction + p.sum(-1)
        return tuple(_set_rows(x, new, i, rows, 2) for x, new in
                     ((row_max, new_max), (row_sum, new_sum), (acc, new_acc))), None

    init = (jnp.full(q.shape[:3], _MIN, jnp.float32), jnp.zeros(q.shape[:3], jnp.float32),
            jnp.zeros((*q.shape[:3], v_BxSxNxV.shape[3]), jnp.float32))
    (row_max, row_sum, acc), _ = jax.lax.scan(step, init, jnp.asarray(np.array(tiles)))
    seen = row_sum > 0  # rows with at least one valid key
    row_sum = jnp.where(seen, row_sum, 1.0)
    out = acc / row_sum[..., None]
    lse = jnp.where(seen, row_max + jnp.log(row_sum), 0.0)
    return ungrouped_rows(out.astype(q.dtype), queries), lse


def _attention_fwd(q, k, v, mask, bias, rng, softcap, block_size, query_block, tiles, rate):
    out, lse = _forward(q, k, v, mask, bias, rng, softcap, block_size, query_block, tiles, rate)
    return out, (q, k, v, mask, bias, rng, out, lse)


def _attention_bwd(softcap, block_size, query_block, tiles, rate, residuals, d_out_BxQxHxV):
    q_BxQxHxK, k_BxSxNxK, v_BxSxNxV, mask, bias, rng, out, lse = residuals
    n, queries = k_BxSxNxK.shape[2], q_BxQxHxK.shape[1]
    dtype = q_BxQxHxK.dtype
    q = grouped_rows(q_BxQxHxK, n)
    rows_total, rows = q.shape[2], query_block * (q.shape[2] // queries)
    d_out = grouped_rows(d_out_BxQxHxV.astype(dtype), n)
    # sum over values of d_out * out: the softmax gradient's row term [B, N, R]
    delta = (d_out.astype(jnp.float32) * grouped_rows(out, n).astype(jnp.float32)).sum(-1)

    def step(carry, tile):
        i, j = tile[0], tile[1]
        dq, dk, dv, dbias = carry
        q_i, k_j, scores, valid, capped = _tile_scores(q, k_BxSxNxK, mask, bias, i, j, softcap,
                                                       block_size, query_block, queries)
        d_out_i, lse_i, delta_i = (_rows_of(x, i, rows, rows_total, 2)
                                   for x in (d_out, lse, delta))
        p = _where_valid(valid, jnp.exp(scores - lse_i[..., None]), 0.0)  # [B, N, r, T]
        v_j = _block(v_BxSxNxV, j, block_size, 1).transpose(0, 2, 1, 3)  # [B, N, T, V]
        dv_j = jnp.matmul(_dropped(p, rng, i, j, rate).astype(dtype).transpose(0, 1, 3, 2),
                          d_out_i, preferred_element_type=jnp.float32)
        # d loss / d (probabilities): through the dropout's scaled mask
        dp = _dropped(jnp.matmul(d_out_i, v_j.transpose(0, 1, 3, 2),
                                 preferred_element_type=jnp.float32), rng, i, j, rate)
        ds = p * (dp - delta_i[..., None])  # d loss / d (scores), bias included
        if dbias is not None:  # each tile is visited once: its gradient is written, not added
            db = _bias_heads(ds, query_block)
            if dbias.shape[0] == 1:
                db = db.sum(0, keepdims=True)
            tile_rows = _rows_of(dbias, i, query_block, queries, 2)
            tile_rows = jax.lax.dynamic_update_slice_in_dim(
                tile_rows, db.astype(dbias.dtype), j * block_size, axis=3)
            dbias = _set_rows(dbias, tile_rows, i, query_block, 2)
        if capped is not None:
            ds = ds * (1.0 - capped * capped)
        ds = ds.astype(dtype)
        dq_i = _rows_of(dq, i, rows, rows_total, 2) + jnp.matmul(
            ds, k_j.transpose(0, 2, 1, 3), preferred_element_type=jnp.float32)
        dk_j = jnp.matmul(ds.transpose(0, 1, 3, 2), q_i, preferred_element_type=jnp.float32)
        dk = _add_block(dk, dk_j.transpose(0, 2, 1, 3), j, block_size)
        dv = _add_block(dv, dv_j.transpose(0, 2, 1, 3), j, block_size)
        return (_set_rows(dq, dq_i, i, rows, 2), dk, dv, dbias), None

    init = (jnp.zeros(q.shape, jnp.float32),
            jnp.zeros(k_BxSxNxK.shape, jnp.float32), jnp.zeros(v_BxSxNxV.shape, jnp.float32),
            None if bias is None else jnp.zeros_like(bias))
    (dq, dk, dv, dbias), _ = jax.lax.scan(step, init, jnp.asarray(np.array(tiles)))
    return (ungrouped_rows(dq, queries).astype(dtype), dk.astype(k_BxSxNxK.dtype),
            dv.astype(v_BxSxNxV.dtype), None, dbias, None)


def _add_block(total_BxSx: Array, block_BxTx: Array, j: Array, size: int) -> Array:
    """total with `block` added to its j-th block of `size` along axis 1."""
    return jax.lax.dynamic_update_slice_in_dim(
        total_BxSx, _block(total_BxSx, j, size, 1) + block_BxTx, j * size, axis=1)


_attention.defvjp(_attention_fwd, _attention_bwd)
