"""Training throughput, side by side on this machine: an llmjax decoder vs Hugging Face
transformers' GPT2LMHeadModel on PyTorch, same shape, batch, AdamW and synthetic tokens,
interleaved A B A B so both see the same machine state. Per size it prints the median ms/step
and tokens/s of each and the llmjax / PyTorch tokens/s ratio.

    .venv/bin/python benchmarks/vs_pytorch.py [--sizes=tiny,small] [--rounds=3] [--steps=10]

Sizes are configs/gpt.py's: tiny = 4 x 128, context 64, batch 12 (nanoGPT's CPU recipe);
small = 6 x 384, context 256, batch 16. Vocabulary 65 (tiny Shakespeare's characters). Both
models: GELU (tanh), pre-LayerNorm with biases, tied embeddings, learned positions, no dropout,
float32. torch and transformers come with the test extra.
"""

from __future__ import annotations

import json
import os
import sys
import time

import numpy as np
from absl import app, flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
flags.DEFINE_list("sizes", ["tiny", "small"], "configs/gpt.py sizes to compare.")
flags.DEFINE_integer("rounds", 3, "A B rounds (medians are reported).")
flags.DEFINE_integer("steps", 10, "Timed steps per round and framework.")
flags.DEFINE_integer("vocab_size", 65, "Vocabulary size.")
FLAGS = flags.FLAGS


def llmjax_stepper(size: str):
    """(step() that runs one training step and waits for it, tokens per step)."""
    import jax
    from flax import nnx

    from configs import gpt
    from llmjax.objectives import get_objective
    from llmjax.train import optim
    from llmjax.train import state as state_lib
    from llmjax.train.parallel import Parallel

    c = gpt.get_config(f"size={size}")
    c.model.vocab_size = FLAGS.vocab_size
    # GPT-2's own layout (configs/gpt.py drops biases and uses exact GELU, as nanoGPT does)
    c.model.dropout_rate, c.model.use_bias, c.model.activation = 0.0, True, "gelu"
    graphdef, params = nnx.split(state_lib.build_model(c))
    tx, schedule = optim.make_optimizer(c.optimizer, c.num_train_steps)
    parallel = Parallel("single", graphdef, get_objective(c.objective), tx, schedule)
    holder = {"state": parallel.to_device(state_lib.init_state(params, tx, 0))}
    rng = np.random.default_rng(0)
    shape = (c.batch_size, c.seq_len)
    batch = {"inputs": rng.integers(0, FLAGS.vocab_size, shape).astype(np.int32),
             "targets": rng.integers(0, FLAGS.vocab_size, shape).astype(np.int32),
             "segment_ids": np.ones(shape, np.int32), "weights": np.ones(shape, np.float32)}

    def step():
        holder["state"], _ = parallel.train_step(holder["state"], batch)
        jax.block_until_ready(holder["state"])

    return step, c


def torch_stepper(c):
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(vocab_size=FLAGS.vocab_size, n_positions=c.model.max_len,
                        n_embd=c.model.emb_dim, n_layer=c.model.num_layers,
                        n_head=c.model.num_heads, n_inner=c.model.mlp_dim,
                        activation_function="gelu_new", resid_pdrop=0.0, embd_pdrop=0.0,
                        attn_pdrop=0.0, layer_norm_epsilon=1e-5)
    model = GPT2LMHeadModel(config).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.99), weight_decay=0.1)
    rng = np.random.default_rng(0)
    tokens = torch.from_numpy(rng.integers(0, FLAGS.vocab_size,
                                           (c.batch_size, c.seq_len)).astype(np.int64))

    def step():
        loss = model(input_ids=tokens, labels=tokens).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def timed(step, n: int) -> float:
    start = time.perf_counter()
    for _ in range(n):
        step()
    return (time.perf_counter() - start) / n


def main(argv):
    del argv
    import torch

    torch.set_num_threads(os.cpu_count() or 1)
    for size in FLAGS.sizes:
        jax_step, c = llmjax_stepper(size)
        torch_step = torch_stepper(c)
        for step in (jax_step, torch_step):  # compile / warm up
            timed(step, 2)
        times = {"llmjax": [], "pytorch": []}
        for _ in range(FLAGS.rounds):
            times["llmjax"].append(timed(jax_step, FLAGS.steps))
            times["pytorch"].append(timed(torch_step, FLAGS.steps))
        tokens = c.batch_size * c.seq_len
        ms = {k: float(np.median(v)) * 1e3 for k, v in times.items()}
        print(json.dumps({
            "size": size, "batch": c.batch_size, "seq_len": c.seq_len,
            "llmjax_ms_per_step": round(ms["llmjax"], 1),
            "pytorch_ms_per_step": round(ms["pytorch"], 1),
            "llmjax_tokens_per_sec": round(tokens / ms["llmjax"] * 1e3),
            "pytorch_tokens_per_sec": round(tokens / ms["pytorch"] * 1e3),
            "llmjax_over_pytorch": round(ms["pytorch"] / ms["llmjax"], 2),
            "rounds_ms": {k: [round(t * 1e3, 1) for t in v] for k, v in times.items()}}),
            flush=True)


if __name__ == "__main__":
    app.run(main)
