"""Model FLOPs per token and the peak they are compared with (MFU).

Training FLOPs per token = 6 * N + 12 * layers * heads * head_dim * seq_len (PaLM appendix B, as
in nanoGPT and MaxText): 6N for the forward and backward matmuls with the N non-position-
embedding parameters, plus the attention score and value matmuls over the whole context.
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import ml_collections

from llmjax.models.config import ModelConfig

# Dense bfloat16 datasheet peaks (FLOP/s per device), by jax device_kind.
DATASHEET_PEAKS = {
    "TPU v4": 275e12, "TPU v5 lite": 197e12, "TPU v5e": 197e12, "TPU v5p": 459e12,
    "TPU v6 lite": 918e12, "TPU v6e": 918e12,
    "NVIDIA H100 80GB HBM3": 989e12, "NVIDIA H200": 989e12, "NVIDIA A100-SXM4-80GB": 312e12,
    "NVIDIA A100-SXM4-40GB": 312e12,
}


def flops_per_token(cfg: ModelConfig, num_params: int, seq_len: int,
                    vocab_logits: bool = True) -> float:
    """Training FLOPs per token. Embedding tables are lookups, not matmuls: position tables
    never count, and the token table counts only when it also projects to vocabulary logits
    (tied LM / MLM heads), not for classification or NSP."""
    lookups = cfg.max_len * cfg.emb_dim if cfg.position_embedding == "learned" else 0
    if not vocab_logits:
        lookups += cfg.vocab_size * cfg.emb_dim
    attention = 12 * cfg.num_layers * cfg.num_heads * cfg.head_dim * seq_len
    return 6.0 * (num_params - lookups) + attention


def encoder_decoder_flops_per_example(cfg: ModelConfig, params, source_len: int,
                                      target_len: int) -> float:
    """Training FLOPs of one (source, target) example: 6 x parameters x the tokens they see
    (encoder parameters the source tokens; decoder parameters and the tied output projection
    the target tokens) plus self-attention on each side and cross-attention."""
    def size(tree) -> int:
        return sum(x.size for x in jax.tree.leaves(tree))

    encoder, decoder = size(params["encoder"]), size(params["decoder"])
    if cfg.position_embedding == "learned":  # lookups, not matmuls
        encoder -= cfg.max_len * cfg.emb_dim
        decoder -= cfg.max_len * cfg.emb_dim
    output = size(params["lm_head"]) if "lm_head" in params else cfg.vocab_size * cfg.emb_dim
    per_layer = 12 * cfg.num_heads * cfg.head_dim
    attention = per_layer * (cfg.encoder_layers * source_len**2
                             + cfg.decoder_layers * (target_len**2 + target_len * source_len))
    return 6.0 * (encoder * source_len + (decoder + output) * target_len) + attention


def step_cost(config: ml_collections.ConfigDict, cfg: ModelConfig, params,
              vocab_logits: bool = True) -> tuple[int, float]:
    """(tokens, training FLOPs) of one step of `config`: an encoder-decoder counts source and
    target tokens, other models seq_len tokens per example."""
    if config.model.arch == "encoder_decoder":
        return (config.batch_size * (config.seq_len + config.target_seq_len),
                config.batch_size * encoder_decoder_flops_per_example(
                    cfg, params, config.seq_len, config.target_seq_len))
    tokens = config.batch_size * config.seq_len
    num_params = sum(x.size for x in jax.tree.leaves(params))
    return tokens, tokens * flops_per_token(cfg, num_params, config.seq_len, vocab_logits)


def measure_matmul_peak(dtype: str = "float32", size: int = 1024, seconds: float = 0.3) -> float:
    """FLOP/s of a large jitted matmul in `dtype` on the default device."""
    x = jnp.ones((size, size), dtype)
    matmul = jax.jit(lambda a: a @ a)
    matmul(x).block_until_ready()
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        matmul(x).block_until_ready()
        n += 1
    return 2.0 * size**3 * n / (time.perf_counter() - start)


def peak_flops_per_device(dtype: str, configured: float | None = None) -> tuple[float, str]:
    """(peak FLOP/s, where it came from): configured, datasheet, or measured here."""
    if configured:
        return configured, "config"
    kind = jax.devices()[0].device_kind
    if kind in DATASHEET_PEAKS:
        return DATASHEET_PEAKS[kind], f"datasheet {kind}"
    return measure_matmul_peak(dtype), f"measured {dtype} matmul on {kind}"
