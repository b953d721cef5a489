"""Model FLOPs per step and the peak they are compared with (MFU).

Training FLOPs = 6 x (parameters that multiply activations) x (positions they run on) plus the
attention score and value matmuls, 6 x layers x heads x (query/key dims + value dims) x
seq_len^2 per example (12 x layers x heads x head_dim x seq_len^2 when both are head_dim: PaLM
appendix B, as in nanoGPT and MaxText; latent attention's differ). The body runs on every
position; the vocabulary projection on the positions an objective predicts (all for causal LM,
the ~15% chosen ones for MLM, none for classification); pooled heads (NSP, classifier) once
per example. Embedding tables are lookups, not matmuls, except the token table where it is
also the (tied) output projection. A mixture of experts counts the experts each token runs
through (k of E: active parameters), not the padding its capacity buffers add.
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import ml_collections

from llmjax.models import layers, moe
from llmjax.models.config import ModelConfig
from llmjax.train.checkpoint import param_path_name

# Dense bfloat16 datasheet peaks (FLOP/s per device), by jax device_kind.
DATASHEET_PEAKS = {
    "TPU v4": 275e12, "TPU v5 lite": 197e12, "TPU v5e": 197e12, "TPU v5p": 459e12,
    "TPU v6 lite": 918e12, "TPU v6e": 918e12,
    "NVIDIA H100 80GB HBM3": 989e12, "NVIDIA H200": 989e12, "NVIDIA A100-SXM4-80GB": 312e12,
    "NVIDIA A100-SXM4-40GB": 312e12,
}


# Top-level modules that run once per example, on the pooled first position.
POOLED_MODULES = ("pooler", "nsp_head", "classifier")


def matmul_params(tree, cfg: ModelConfig | None = None) -> float:
    """Parameters of `tree` that multiply activations: all but embedding tables (lookups). A
    mixture of experts counts the active ones: of each expert layer's E experts, the k a
    token runs through (its router's E x D all count)."""
    total = 0.0
    for path, x in jax.tree_util.tree_flatten_with_path(tree)[0]:
        name = param_path_name(path)
        if name.split("/")[-1] != "embedding":
            total += x.size * (1.0 if cfg is None else moe.active_share(cfg, name))
    return total


def flops_per_example(cfg: ModelConfig, params, seq_len: int,
                      vocab_positions: int | None = None) -> float:
    """Training FLOPs of one example of a decoder or an encoder with heads: the body on seq_len
    positions, the output head (lm_head, or the MLM head with the tied token table) on
    `vocab_positions` (default seq_len), pooled heads once, attention over the context."""
    vocab_positions = seq_len if vocab_positions is None else vocab_positions
    sizes = {name: matmul_params(tree, cfg) for name, tree in params.items()}
    pooled = sum(sizes.pop(name, 0) for name in POOLED_MODULES)
    output = sizes.pop("lm_head", 0) + sizes.pop("mlm_head", 0)
    if vocab_positions and "lm_head" not in params:  # tied: the token table projects
        output += cfg.vocab_size * cfg.emb_dim
    output *= 1 + cfg.mtp_depth  # each multi-token-prediction depth projects once more
    body = sum(sizes.values())
    head_dims = cfg.query_key_dim + cfg.value_dim
    blocks = cfg.num_layers + cfg.mtp_depth
    attention = 6 * blocks * cfg.num_heads * head_dims * seq_len**2
    return 6.0 * (body * seq_len + output * vocab_positions + pooled) + attention


def encoder_decoder_flops_per_example(cfg: ModelConfig, params, source_len: int,
                                      target_len: int) -> float:
    """Training FLOPs of one (source, target) example: 6 x parameters x the positions they run
    on (encoder and the decoder's cross-attention keys and values: the source; the rest of the
    decoder and the output projection: the target) plus self-attention on each side and
    cross-attention."""
    def on_source(path) -> bool:
        name = param_path_name(path)
        return "/cross_attention/key/" in name or "/cross_attention/value/" in name

    decoder = jax.tree_util.tree_flatten_with_path(params["decoder"])[0]
    cross_kv = sum(x.size for path, x in decoder if on_source(path))
    source_params = matmul_params(params["encoder"], cfg) + cross_kv
    target_params = matmul_params(params["decoder"], cfg) - cross_kv + (
        matmul_params(params["lm_head"]) if "lm_head" in params else cfg.vocab_size * cfg.emb_dim)
    per_layer = 12 * cfg.num_heads * cfg.head_dim
    attention = per_layer * (cfg.encoder_layers * source_len**2
                             + cfg.decoder_layers * (target_len**2 + target_len * source_len))
    return 6.0 * (source_params * source_len + target_params * target_len) + attention


def step_cost(config: ml_collections.ConfigDict, cfg: ModelConfig, params,
              vocab_positions: int | None = None, length: int | None = None
              ) -> tuple[int, float]:
    """(tokens, training FLOPs) of one step of `config`: an encoder-decoder counts source and
    target tokens, other models `length` tokens per example (default seq_len; the objective's
    example_length), of which `vocab_positions` (default all) are projected to the
    vocabulary."""
    if config.model.arch == "encoder_decoder":
        return (config.batch_size * (config.seq_len + config.target_seq_len),
                config.batch_size * encoder_decoder_flops_per_example(
                    cfg, params, config.seq_len, config.target_seq_len))
    length = config.seq_len if length is None else length
    return (config.batch_size * length,
            config.batch_size * flops_per_example(cfg, params, length, vocab_positions))


def measure_matmul_peak(dtype: str = "float32", size: int = 1024, seconds: float = 0.3,
                        fastest: bool = False, result_dtype: str = "float32") -> float:
    """FLOP/s of a large jitted matmul of `dtype` operands writing what the model's matmuls
    write for a `result_dtype` result (layers.written_dtype: float32 by default; the compute
    dtype with model.float32_matmul_outputs off, except on XLA:CPU), on the default device: the
    mean rate over `seconds`, or with `fastest` the rate of the fastest call (what the device
    can do, robust to other work in the process, such as the input pipeline filling its
    buffers)."""
    x = jnp.ones((size, size), dtype)
    written = layers.written_dtype(x.dtype, jnp.dtype(result_dtype))
    matmul = jax.jit(lambda a: jnp.matmul(a, a, preferred_element_type=written))
    matmul(x).block_until_ready()
    times, start = [], time.perf_counter()
    while time.perf_counter() - start < seconds:
        call = time.perf_counter()
        matmul(x).block_until_ready()
        times.append(time.perf_counter() - call)
    elapsed = min(times) if fastest else time.perf_counter() - start
    return 2.0 * size**3 * (1 if fastest else len(times)) / elapsed


def peak_flops_per_device(dtype: str, configured: float | None = None) -> tuple[float, str]:
    """(peak FLOP/s, where it came from): configured, datasheet, or measured here."""
    if configured:
        return configured, "config"
    kind = jax.devices()[0].device_kind
    if kind in DATASHEET_PEAKS:
        return DATASHEET_PEAKS[kind], f"datasheet {kind}"
    # Measured as training starts, while the input pipeline prefetches: the mean rate of a
    # T5 run's start-up measured half the idle rate and reported MFU 0.96.
    return (measure_matmul_peak(dtype, fastest=True),
            f"fastest 1024^3 {dtype} matmul measured on {kind}")
