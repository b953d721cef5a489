"""How fast a decoder's train step could run if it were nothing but its matmuls, in JAX and in
PyTorch on this machine: a lower bound on step time, to judge speed targets against.

    .venv/bin/python benchmarks/matmul_bound.py [--config=experiments/shakespeare_char/config.py]
        [--vocab_size=65] [--repeats=100]

The step's matmuls are listed from the config (per layer: the fused q/k/v projection, the
attention output projection, the two feed-forward matmuls (three when gated), the attention
scores and the attention-weighted values; once: the vocabulary projection), each forward
matmul (m x k) @ (k x n) with its two backward matmuls: (m x n) @ (n x k) for the input
gradient and (k x m) @ (m x n) for the weight gradient. Each distinct shape is timed alone in
float32: in JAX as --repeats matmuls inside one jitted fori_loop (the config's compiler
options), in PyTorch as --repeats eager calls into a preallocated output. The bound is
sum(FLOPs of each matmul / its shape's rate): a step also normalises, applies GELU and
softmax, computes the loss and updates AdamW, so real steps are slower. Prints each shape's
rate in both frameworks, the matmuls' FLOPs beside the model FLOPs that MFU counts
(llmjax.train.flops: the two agree up to the norm scales and biases), and both bounds in ms.
"""

from __future__ import annotations

import collections
import json
import os
import sys

import numpy as np
from absl import app, flags
from ml_collections import config_flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from benchmarks import synthetic  # noqa: E402
from llmjax.launch import reexec_with_malloc_tunables  # noqa: E402

reexec_with_malloc_tunables()  # as the llmjax command runs (llmjax/launch.py)
config_flags.DEFINE_config_file(
    "config", os.path.join(ROOT, "experiments", "shakespeare_char", "config.py"), "Config file.")
flags.DEFINE_integer("vocab_size", 65, "Vocabulary size (the tokenizer's, normally).")
flags.DEFINE_integer("repeats", 100, "Matmuls per timing.")
FLAGS = flags.FLAGS

Shape = tuple[int, int, int, int]  # (batch, m, k, n): batch x (m x k) @ (k x n)


def step_matmuls(c) -> collections.Counter:
    """{shape: count} of the forward and backward matmuls of one training step."""
    m = c.model
    tokens, d, mlp = c.batch_size * c.seq_len, m.emb_dim, m.mlp_dim
    head_dim = m.head_dim or d // m.num_heads
    heads = m.num_heads * head_dim
    t, bh = c.seq_len, c.batch_size * m.num_heads
    per_layer = [(1, tokens, d, 3 * heads), (1, tokens, heads, d), (1, tokens, d, mlp),
                 (1, tokens, mlp, d)] + ([(1, tokens, d, mlp)] if m.gated_mlp else [])
    per_layer += [(bh, t, head_dim, t), (bh, t, t, head_dim)]  # scores, weighted values
    forward = collections.Counter({s: m.num_layers for s in per_layer})
    forward[(1, tokens, d, m.vocab_size)] += 1
    counts: collections.Counter = collections.Counter()
    for (b, rows, inner, cols), n in forward.items():
        counts[(b, rows, inner, cols)] += n   # forward
        counts[(b, rows, cols, inner)] += n   # gradient of the input
        counts[(b, inner, rows, cols)] += n   # gradient of the weight (or the other operand)
    return counts


def jax_rate(shape: Shape, compiler_options: dict) -> float:
    """FLOP/s of `shape` in a jitted loop (each iteration depends on the last, so XLA can
    neither hoist nor drop it)."""
    import jax
    import jax.numpy as jnp

    b, m, k, n = shape
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((b, m, k), np.float32))
    w = jnp.asarray(rng.standard_normal((b, k, n), np.float32) * 0.01)

    def loop(x, w):
        def body(_, acc):
            return acc + jnp.einsum("bmk,bkn->bmn", x + acc[:, :1, :1], w)
        return jax.lax.fori_loop(0, FLAGS.repeats, body, jnp.zeros((b, m, n), jnp.float32))

    run = jax.jit(loop, compiler_options=compiler_options)
    jax.block_until_ready(run(x, w))
    seconds = synthetic.median_seconds(lambda: jax.block_until_ready(run(x, w)))
    return 2.0 * b * m * k * n * FLAGS.repeats / seconds


def torch_rate(shape: Shape) -> float:
    import torch

    b, m, k, n = shape
    x, w, out = torch.randn(b, m, k), torch.randn(b, k, n), torch.empty(b, m, n)

    def run():
        for _ in range(FLAGS.repeats):
            torch.bmm(x, w, out=out)

    run()
    return 2.0 * b * m * k * n * FLAGS.repeats / synthetic.median_seconds(run)


def main(argv):
    del argv
    from flax import nnx

    from llmjax.configs import resolve_compiler_options
    from llmjax.train import flops
    from llmjax.train import state as state_lib

    c = FLAGS.config
    c.model.vocab_size = FLAGS.vocab_size
    _, params = nnx.split(state_lib.build_model(c))
    _, model_flop = flops.step_cost(c, state_lib.model_config(c), params)
    counts = step_matmuls(c)
    options = resolve_compiler_options(c)
    try:
        import torch
        torch.set_num_threads(os.cpu_count())
    except ImportError:
        torch = None
    rows, bound = [], {"jax": 0.0, "pytorch": 0.0}
    for shape, n in sorted(counts.items()):
        flop = 2.0 * np.prod(shape)
        rates = {"jax": jax_rate(shape, options)}
        if torch is not None:
            rates["pytorch"] = torch_rate(shape)
        for name, rate in rates.items():
            bound[name] += n * flop / rate
        rows.append({"batch_m_k_n": list(shape), "count": n,
                     **{f"{k}_gflops": round(v / 1e9, 1) for k, v in rates.items()}})
        print(json.dumps(rows[-1]))
    total = sum(n * 2.0 * np.prod(s) for s, n in counts.items())
    print(json.dumps({"matmul_gflop_per_step": round(total / 1e9, 3),
                      "model_gflop_per_step": round(model_flop / 1e9, 3),
                      **{f"{k}_matmul_bound_ms": round(v * 1e3, 1) for k, v in bound.items()
                         if v}}))


if __name__ == "__main__":
    app.run(main)
