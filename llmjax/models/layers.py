"""Shared Transformer layers: dense, norms, feed-forward, embeddings, positions, dropout.

Weights are stored in `param_dtype` and cast to the compute dtype at use; matmuls accumulate in
float32 (`preferred_element_type`) and return float32 (or, with model.float32_matmul_outputs off,
the compute dtype); norms and softmax run in float32.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.ad_checkpoint import checkpoint_name
from jax.experimental.layout import Layout, with_layout_constraint

from llmjax.models.config import ModelConfig
from llmjax.sharding import constrain

Array = jax.Array
_INIT_STD = 0.02  # GPT-2 / BERT initialisation


def dropout(x: Array, rate: float, rng: Array | None) -> Array:
    """Inverted dropout; the identity when `rng` is None (evaluation) or rate is 0."""
    if rng is None or rate == 0.0:
        return x
    keep = jax.random.bernoulli(rng, 1.0 - rate, x.shape)
    return jnp.where(keep, x / (1.0 - rate), 0).astype(x.dtype)


MATMUL_NAME = "weight_matmul"  # what model.remat=dots keeps (jax.ad_checkpoint names)


def matmul(x_NxI: Array, w_IxO: Array, dtype: jnp.dtype | None = None,
           result_dtype: jnp.dtype = jnp.float32) -> Array:
    """x @ w with both cast to `dtype` (the compute dtype; None: as they are), float32
    accumulation and a `result_dtype` result [N, O]; named for model.remat=dots. See
    `batched_matmul`."""
    return checkpoint_name(batched_matmul(x_NxI, w_IxO, dtype, result_dtype), MATMUL_NAME)


def _bfloat16_on_cpu(dtype: jnp.dtype | None) -> bool:
    """Whether XLA:CPU's bfloat16 path (YNNPACK's kernels, with their layout rules) applies."""
    return dtype == jnp.bfloat16 and jax.default_backend() == "cpu"


def row_major(x: Array) -> Array:
    """x pinned to a row-major layout when it is a bfloat16 operand of a CPU matmul.

    XLA:CPU runs a bfloat16 dot on YNNPACK's bfloat16 kernels (AMX / AVX-512 BF16) only when
    both operands are row-major and the left one contracts its last dimension; any other dot
    it upcasts to float32 first. A transpose (`w.T` in a gradient) otherwise reaches the dot
    as a column-major view, and the backward pass ran in float32: 17.7 vs 3.6 ms for the
    [4096, 1536] x [1536, 384] input gradient of a feed-forward layer on an AMX CPU
    (tests/test_bfloat16_cpu.py). GPUs read transposed operands directly: no constraint."""
    if not _bfloat16_on_cpu(x.dtype):
        return x
    return with_layout_constraint(x, Layout(major_to_minor=tuple(range(x.ndim))))


def _transposed(x_BxMxN: Array) -> Array:
    # x pinned before the transpose (_dot pins the result): otherwise XLA:CPU fuses x's
    # producer (a bias add and cast) into the transpose, which then reads float32 column by
    # column: 25 ms instead of 3 at [4096, 1536]
    return jnp.swapaxes(row_major(x_BxMxN), -1, -2)


def written_dtype(operand_dtype: jnp.dtype, result_dtype: jnp.dtype) -> jnp.dtype:
    """What a matmul of `operand_dtype` operands writes for a `result_dtype` result: float32
    where XLA:CPU runs bfloat16 (YNNPACK's bfloat16 kernels write float32; a bfloat16-result
    dot took another path, gpt:small's bfloat16 step 1022-1040 ms against 700), rounded after;
    elsewhere the result dtype itself, straight from the GEMM."""
    return jnp.dtype(jnp.float32) if _bfloat16_on_cpu(operand_dtype) else jnp.dtype(result_dtype)


def _dot(a_BxMxK: Array, b_BxKxN: Array, result_dtype: jnp.dtype = jnp.float32) -> Array:
    return jnp.matmul(row_major(a_BxMxK), row_major(b_BxKxN),
                      preferred_element_type=written_dtype(a_BxMxK.dtype, result_dtype)
                      ).astype(result_dtype)


def _cast(x: Array, dtype: jnp.dtype | None) -> Array:
    return x if dtype is None else x.astype(dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def batched_matmul(a_BxMxK: Array, b_BxKxN: Array, dtype: jnp.dtype | None = None,
                   result_dtype: jnp.dtype = jnp.float32) -> Array:
    """a @ b over shared leading batch dimensions, with both cast to `dtype` (None: as they
    are), float32 accumulation and a `result_dtype` result [..., M, N] (float32, or the
    compute dtype: the accumulator rounded once, as PyTorch autocast's and MaxText's matmuls
    write it; half the bytes for whatever reads it next).

    The backward matmuls also run in the compute dtype: autodiff alone would carry the float32
    result's cotangent into them and run the whole backward pass in float32 (measured on an
    H100 with bfloat16 compute: the largest kernels of the step were TF32 GEMMs; this took the
    GPT-2-sized step from 73 to 47 ms). Each operand's gradient comes back in its own dtype
    straight from the float32 accumulator: a float32 weight's gradient is never rounded to
    bfloat16 on the way (and the cast back is one op fewer: gpt:tiny's bfloat16 step 4% faster
    on an AMX CPU)."""
    return _dot(_cast(a_BxMxK, dtype), _cast(b_BxKxN, dtype), result_dtype)


def _batched_matmul_fwd(a: Array, b: Array, dtype: jnp.dtype | None, result_dtype: jnp.dtype
                        ) -> tuple[Array, tuple[Array, Array, Array, Array]]:
    a_c, b_c = _cast(a, dtype), _cast(b, dtype)
    # the operands' own dtypes travel as empty arrays (residuals must be arrays)
    return (_dot(a_c, b_c, result_dtype),
            (a_c, b_c, jnp.zeros((0,), a.dtype), jnp.zeros((0,), b.dtype)))


def _batched_matmul_bwd(dtype: jnp.dtype | None, result_dtype: jnp.dtype,
                        residuals: tuple[Array, Array, Array, Array], g_BxMxN: Array
                        ) -> tuple[Array, Array]:
    a, b, a_dtype, b_dtype = residuals
    g = g_BxMxN.astype(a.dtype)
    return (_dot(g, _transposed(b)).astype(a_dtype.dtype),
            _dot(_transposed(a), g).astype(b_dtype.dtype))


batched_matmul.defvjp(_batched_matmul_fwd, _batched_matmul_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def add_bias(y_NxO: Array, bias_O: Array, dtype: jnp.dtype | None = None) -> Array:
    """y + bias, both float32 [N, O] and [O]. On a CPU computing in bfloat16 the bias gradient,
    the incoming gradient summed over rows, is a ones-vector product with that gradient rounded
    to bfloat16 (as the weight's gradient reads it; the sum accumulates in float32): XLA:CPU
    otherwise fuses the float32 row sum with the activation's gradient into a slow column
    reduction (benchmarks/time_to_loss.py's step, gpt:tiny's shape with biases in bfloat16,
    went from 23.2 to 21.5 ms on an AMX CPU). Elsewhere it is the float32 sum."""
    return y_NxO + bias_O


def _add_bias_fwd(y: Array, bias: Array, dtype: jnp.dtype | None) -> tuple[Array, None]:
    return y + bias, None


def _add_bias_bwd(dtype: jnp.dtype | None, _, g_NxO: Array) -> tuple[Array, Array]:
    if _bfloat16_on_cpu(dtype):
        ones = jnp.ones((1, g_NxO.shape[0]), jnp.bfloat16)
        # no row-major pins (_dot): XLA:CPU runs this as a float32 matrix-vector product
        return g_NxO, jnp.matmul(ones, g_NxO.astype(jnp.bfloat16),
                                 preferred_element_type=jnp.float32)[0]
    return g_NxO, g_NxO.sum(0)


add_bias.defvjp(_add_bias_fwd, _add_bias_bwd)


def fold(rng: Array | None, *data: int) -> Array | None:
    """Derives an independent dropout key per call site; None stays None."""
    for d in data:
        rng = None if rng is None else jax.random.fold_in(rng, d)
    return rng


class Dense(nnx.Module):
    """y[..., *out] = x[..., *in] . kernel[*in, *out] + bias[*out], e.g. in (D,), out (H, K) for
    a head projection. Computed as one 2-D matmul: XLA's CPU backend runs the weight gradient
    of a batched einsum (contracting batch and length) several times slower."""

    def __init__(self, in_shape: tuple[int, ...], out_shape: tuple[int, ...], cfg: ModelConfig,
                 *, rngs: nnx.Rngs, std: float = _INIT_STD, use_bias: bool | None = None):
        self.in_shape, self.out_shape = tuple(in_shape), tuple(out_shape)
        self.dtype, self.result_dtype = cfg.compute_dtype, cfg.matmul_result_dtype
        init = jax.random.normal(rngs.params(), self.in_shape + self.out_shape, jnp.float32)
        self.kernel = nnx.Param((init * std).astype(cfg.weight_dtype))
        use_bias = cfg.use_bias if use_bias is None else use_bias
        self.bias = nnx.Param(jnp.zeros(self.out_shape, cfg.weight_dtype)) if use_bias else None
        self.lora_a = self.lora_b = None  # LoRA adapters (models/lora.py), when added
        self.lora_scale = 0.0

    def add_adapter(self, rank: int, alpha: float, key: Array) -> None:
        """LoRA: A [in, rank] ~ N(0, 1 / in), B [rank, out] = 0 (the output is unchanged)."""
        n_in, n_out = math.prod(self.in_shape), math.prod(self.out_shape)
        dtype = self.kernel[...].dtype
        # nnx.data: the attributes were None (static) until now
        self.lora_a = nnx.data(nnx.Param(
            (jax.random.normal(key, (n_in, rank)) / math.sqrt(n_in)).astype(dtype)))
        self.lora_b = nnx.data(nnx.Param(jnp.zeros((rank, n_out), dtype)))
        self.lora_scale = alpha / rank

    def weight_matrix(self) -> Array:
        """The kernel as the layer applies it, LoRA adapters folded in: float32 [in, out]
        flattened (for code that uses the weights other than through __call__)."""
        n_in, n_out = math.prod(self.in_shape), math.prod(self.out_shape)
        w = self.kernel[...].reshape(n_in, n_out).astype(jnp.float32)
        if self.lora_a is not None:
            w = w + (self.lora_a[...].astype(jnp.float32) @ self.lora_b[...].astype(jnp.float32)
                     * self.lora_scale)
        return w

    def __call__(self, x: Array, activation: Callable[[Array], Array] | None = None) -> Array:
        """The bias and `activation` apply in float32 before the cast to the compute dtype."""
        batch = x.shape[: x.ndim - len(self.in_shape)]
        n_in, n_out = math.prod(self.in_shape), math.prod(self.out_shape)
        x2 = x.reshape(-1, n_in).astype(self.dtype)
        y = matmul(x2, self.kernel[...].reshape(n_in, n_out), self.dtype, self.result_dtype)
        if self.lora_a is not None:
            down = matmul(x2, self.lora_a[...], self.dtype).astype(self.dtype)
            y = y + matmul(down, self.lora_b[...], self.dtype, self.result_dtype) * self.lora_scale
        if self.bias is not None or activation is not None:
            # a no-op for float32 results; else one elementwise pass that XLA fuses with the
            # bias, the activation and the cast back
            y = y.astype(jnp.float32)
        if self.bias is not None:
            y = add_bias(y, self.bias[...].reshape(n_out).astype(jnp.float32), self.dtype)
        if activation is not None:
            y = activation(y)
        return y.reshape(*batch, *self.out_shape).astype(self.dtype)


class Norm(nnx.Module):
    """LayerNorm (scale, optional bias) or RMSNorm (scale only), computed in float32."""

    def __init__(self, dim: int, cfg: ModelConfig, *, rngs: nnx.Rngs | None = None):
        del rngs
        self.kind, self.eps, self.dtype = cfg.norm, cfg.norm_epsilon, cfg.compute_dtype
        self.scale = nnx.Param(jnp.ones((dim,), cfg.weight_dtype))
        has_bias = cfg.norm == "layernorm" and cfg.use_bias
        self.bias = nnx.Param(jnp.zeros((dim,), cfg.weight_dtype)) if has_bias else None

    def __call__(self, x: Array) -> Array:
        bias = None if self.bias is None else self.bias[...].astype(jnp.float32)
        y = normalize(x, self.scale[...].astype(jnp.float32), bias, self.kind == "layernorm",
                      self.eps)
        return y.astype(self.dtype)


def _standardize(x: Array, centered: bool, eps: float) -> tuple[Array, Array]:
    """(x̂ = (x - mean) / rms, 1 / rms [..., 1]) over the last axis, in float32."""
    x = x.astype(jnp.float32)
    if centered:
        x = x - x.mean(-1, keepdims=True)
    inv_rms = jax.lax.rsqrt((x * x).mean(-1, keepdims=True) + eps)
    return x * inv_rms, inv_rms


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def normalize(x: Array, scale: Array, bias: Array | None, centered: bool, eps: float) -> Array:
    """LayerNorm (centered) or RMSNorm of x over its last axis: float32 [..., D].

    The gradient is written out (x̂ recomputed from x, one pass over x and the incoming
    gradient) where autodiff keeps and re-reads several float32 intermediates of x's size:
    a gpt:small bfloat16 step 5-8% faster, gpt:tiny's 7% (two variants timed alternately)."""
    y = _standardize(x, centered, eps)[0] * scale
    return y if bias is None else y + bias


def _normalize_fwd(x, scale, bias, centered, eps):
    return normalize(x, scale, bias, centered, eps), (x, scale, bias)


def _normalize_bwd(centered, eps, residuals, g):
    x, scale, bias = residuals
    x_hat, inv_rms = _standardize(x, centered, eps)
    g = g.astype(jnp.float32)
    g_hat = g * scale
    dx = g_hat - x_hat * (g_hat * x_hat).mean(-1, keepdims=True)
    if centered:
        dx = dx - g_hat.mean(-1, keepdims=True)
    rows = tuple(range(x.ndim - 1))
    return ((dx * inv_rms).astype(x.dtype), (g * x_hat).sum(rows),
            None if bias is None else g.sum(rows))


normalize.defvjp(_normalize_fwd, _normalize_bwd)


ACTIVATIONS = {
    "gelu": lambda x: jax.nn.gelu(x, approximate=True),
    # 0.5 x (1 + erf(x / sqrt 2)): the same function as jax.nn.gelu(approximate=False), which
    # XLA:CPU lowers through erfc at ~2.5x the forward cost (measured at [768, 512])
    "gelu_exact": lambda x: 0.5 * x * (1.0 + jax.lax.erf(x * (1.0 / math.sqrt(2.0)))),
    "relu": jax.nn.relu,
    "silu": jax.nn.silu,
}


class FeedForward(nnx.Module):
    """D -> F -> D with an activation; gated (GEGLU/SwiGLU) when cfg.gated_mlp."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        d, f = cfg.emb_dim, cfg.mlp_dim
        self.activation = ACTIVATIONS[cfg.activation]
        self.wi = Dense((d,), (f,), cfg, rngs=rngs)
        self.wg = Dense((d,), (f,), cfg, rngs=rngs) if cfg.gated_mlp else None
        out_std = _INIT_STD / math.sqrt(2 * cfg.num_layers)  # GPT-2: scale residual writes
        self.wo = Dense((f,), (d,), cfg, rngs=rngs, std=out_std)
        self.dropout_rate = cfg.dropout_rate

    def __call__(self, x_BxLxD: Array, rng: Array | None = None) -> Array:
        h = self.wi(x_BxLxD, self.activation)
        if self.wg is not None:
            h = h * self.wg(x_BxLxD)
        h = constrain(h, ("batch", "length", "mlp"))
        return self.wo(dropout(h, self.dropout_rate, rng))


class Embed(nnx.Module):
    """Embedding table [V, D] (tokens, positions, token types); `attend` reuses a token table
    as the tied output projection. `rows`: the rows' logical axis ('vocab' for a token table,
    split over tensor; None: whole), as sharding.PARAM_AXES gives it."""

    def __init__(self, num: int, dim: int, cfg: ModelConfig, *, rngs: nnx.Rngs,
                 rows: str | None = None):
        init = jax.random.normal(rngs.params(), (num, dim), jnp.float32) * _INIT_STD
        self.embedding = nnx.Param(init.astype(cfg.weight_dtype))
        self.dtype, self.result_dtype = cfg.compute_dtype, cfg.matmul_result_dtype
        self.rows = rows

    def __call__(self, ids: Array) -> Array:
        # the table's model dimension gathered first, as FSDP gathers every weight for its
        # matmul: gathering rows of a table split along D makes D-split rows of the whole
        # batch, which GSPMD could only replicate to reach the batch-split activations
        table = constrain(self.embedding[...], (self.rows, None))
        return jnp.take(table, ids, axis=0).astype(self.dtype)

    def attend(self, x_BxLxD: Array) -> Array:
        """Logits [B, L, V] in float32 (a 2-D matmul, as in Dense)."""
        # cast before the transpose: the gradient of a float32 table.T would be a float32 dot
        # whose transpose XLA folds into it, a layout XLA:CPU runs in neither YNNPACK nor for
        # bfloat16 at all
        table = self.embedding[...].astype(self.dtype)
        logits = matmul(x_BxLxD.reshape(-1, table.shape[1]), table.T,
                        result_dtype=self.result_dtype)
        logits = logits.reshape(*x_BxLxD.shape[:-1], table.shape[0]).astype(jnp.float32)
        return constrain(logits, ("batch", "length")[:logits.ndim - 1]
                         + (None,) * (logits.ndim - 3) + ("vocab",))


def sinusoidal(positions_BxL: Array, dim: int) -> Array:
    """Transformer sinusoidal position encodings [B, L, dim] (sin on even, cos on odd channels)."""
    half = dim // 2
    freqs = jnp.exp(-math.log(10000.0) * jnp.arange(half, dtype=jnp.float32) / max(half - 1, 1))
    angles = positions_BxL[..., None].astype(jnp.float32) * freqs
    enc = jnp.stack([jnp.sin(angles), jnp.cos(angles)], axis=-1).reshape(*angles.shape[:-1], -1)
    return jnp.pad(enc, [(0, 0)] * (enc.ndim - 1) + [(0, dim - 2 * half)])


def rotary_frequencies(cfg: ModelConfig, local: bool = False) -> np.ndarray:
    """RoPE's inverse frequencies [cfg.rotary_dim / 2] (head_dim / 2 unless model.rotary_fraction
    rotates fewer dims): base^(-i / half), then cfg.rope_scaling's
    change for contexts beyond the training one: 'linear' divides every frequency by the factor
    (positions / factor); 'llama3' (Llama 3.1) divides only the low frequencies (wavelengths
    beyond original_max_len / low_freq_factor), keeps the high ones (below original_max_len /
    high_freq_factor) and interpolates smoothly between them. `local`: a windowed layer's,
    with cfg.local_rotary_base and no scaling when that is set (Gemma 3)."""
    half = cfg.rotary_dim // 2
    if local and cfg.local_rotary_base is not None:
        return (cfg.local_rotary_base ** (-np.arange(half, dtype=np.float64) / half)
                ).astype(np.float32)
    inv_freq = cfg.rotary_base ** (-np.arange(half, dtype=np.float64) / half)
    factor = cfg.rope_scaling_factor
    if cfg.rope_scaling == "linear":
        inv_freq = inv_freq / factor
    elif cfg.rope_scaling == "yarn":
        inv_freq = _yarn_frequencies(cfg, inv_freq)
    elif cfg.rope_scaling == "llama3":
        wavelength = 2 * math.pi / inv_freq
        context = cfg.rope_original_max_len
        low, high = cfg.rope_low_freq_factor, cfg.rope_high_freq_factor
        smooth = np.clip((context / wavelength - low) / (high - low), 0.0, 1.0)
        # smooth = 0 beyond the low-frequency wavelength (all scaled), 1 below the high one
        inv_freq = (1 - smooth) * inv_freq / factor + smooth * inv_freq
    return inv_freq.astype(np.float32)


def _yarn_frequencies(cfg: ModelConfig, inv_freq: np.ndarray) -> np.ndarray:
    """YaRN (Peng et al. 2023), as Hugging Face's `yarn` rope type: frequencies that turn more
    than rope_beta_fast times over the original context are kept, those turning fewer than
    rope_beta_slow times are divided by the factor, with a linear ramp over the dimensions
    between (their bounds rounded outwards)."""
    dim, base, context = cfg.rotary_dim, cfg.rotary_base, cfg.rope_original_max_len

    def dimension(rotations: float) -> float:  # the dimension that turns `rotations` times
        return dim * math.log(context / (rotations * 2 * math.pi)) / (2 * math.log(base))

    low = max(math.floor(dimension(cfg.rope_beta_fast)), 0)
    high = min(math.ceil(dimension(cfg.rope_beta_slow)), dim - 1)
    high = high + 0.001 if low == high else high
    ramp = np.clip((np.arange(dim // 2) - low) / (high - low), 0.0, 1.0)  # 1: fully scaled
    return inv_freq / cfg.rope_scaling_factor * ramp + inv_freq * (1 - ramp)


def rotary_attention_factor(cfg: ModelConfig, local: bool = False) -> float:
    """YaRN's factor on the rotated queries and keys (so attention logits get its square):
    rope_attention_factor, else 0.1 ln(factor) + 1; 1 for other scalings and, with
    local_rotary_base, for the windowed layers."""
    if cfg.rope_scaling != "yarn" or (local and cfg.local_rotary_base is not None):
        return 1.0
    if cfg.rope_attention_factor is not None:
        return cfg.rope_attention_factor
    factor = cfg.rope_scaling_factor
    return 0.1 * math.log(factor) + 1.0 if factor > 1 else 1.0


def apply_rotary(x_BxLxHxK: Array, positions_BxL: Array, inv_freq: np.ndarray,
                 factor: float | Array = 1.0) -> Array:
    """Rotary position embedding (RoPE, rotate-half convention) on the leading
    2 * len(inv_freq) dims of the last axis (all of them, or GPT-NeoX's partial rotary), with
    the inverse frequencies of `rotary_frequencies`, scaled by `factor` (YaRN's attention
    factor, applied to cos and sin as Hugging Face does). The other dims pass unchanged."""
    half = len(inv_freq)
    angles = positions_BxL[..., None, None].astype(jnp.float32) * inv_freq  # [B, L, 1, half]
    sin, cos = jnp.sin(angles) * factor, jnp.cos(angles) * factor
    x = x_BxLxHxK.astype(jnp.float32)
    x1, x2, rest = x[..., :half], x[..., half:2 * half], x[..., 2 * half:]
    out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin, rest], axis=-1)
    return out.astype(x_BxLxHxK.dtype)
