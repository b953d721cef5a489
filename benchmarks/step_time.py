"""Train-step time of a config's model on synthetic batches (no data pipeline), per device.

    .venv/bin/python benchmarks/step_time.py [--config=experiments/shakespeare_char/config.py]
        [--steps=100] [--vocab_size=69]

Prints compile time, milliseconds per step (median of 5 timed blocks) and tokens/s.
"""

from __future__ import annotations

import json
import os
import sys
import time

import numpy as np
from absl import app, flags
from ml_collections import config_flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
config_flags.DEFINE_config_file(
    "config", os.path.join(ROOT, "experiments", "shakespeare_char", "config.py"), "Config file.")
flags.DEFINE_integer("steps", 100, "Steps per timed block.")
flags.DEFINE_integer("vocab_size", 69, "Vocabulary size (the tokenizer's, normally).")
FLAGS = flags.FLAGS


def main(argv):
    del argv
    import jax
    from flax import nnx

    from llmjax.objectives import get_objective
    from llmjax.train import optim
    from llmjax.train import state as state_lib
    from llmjax.train.parallel import Parallel

    c = FLAGS.config
    c.model.vocab_size = FLAGS.vocab_size
    graphdef, params = nnx.split(state_lib.build_model(c))
    tx, schedule = optim.make_optimizer(c.optimizer, c.num_train_steps)
    parallel = Parallel("single", graphdef, get_objective(c.objective), tx, schedule)
    state = parallel.to_device(state_lib.init_state(params, tx, 0))
    rng = np.random.default_rng(0)
    shape = (c.batch_size, c.seq_len)
    batch = {"inputs": rng.integers(5, FLAGS.vocab_size, shape).astype(np.int32),
             "targets": rng.integers(5, FLAGS.vocab_size, shape).astype(np.int32),
             "segment_ids": np.ones(shape, np.int32), "weights": np.ones(shape, np.float32)}
    start = time.perf_counter()
    state, _ = parallel.train_step(state, batch)
    jax.block_until_ready(state)
    compile_s = time.perf_counter() - start
    blocks = []
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(FLAGS.steps):
            state, _ = parallel.train_step(state, batch)
        jax.block_until_ready(state)
        blocks.append((time.perf_counter() - start) / FLAGS.steps)
    step = float(np.median(blocks))
    print(json.dumps({"compile_s": round(compile_s, 2), "ms_per_step": round(step * 1e3, 2),
                      "tokens_per_sec": round(c.batch_size * c.seq_len / step),
                      "device": jax.devices()[0].device_kind}))


if __name__ == "__main__":
    app.run(main)
