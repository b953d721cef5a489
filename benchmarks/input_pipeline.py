"""Input-pipeline throughput on its own: batches per second from the training iterator of a
config (data prepared and tokenized first, then timed), against the train step's tokens/s.

    .venv/bin/python benchmarks/input_pipeline.py \\
        [--config=experiments/shakespeare_char/config.py] [--batches=2000] \\
        [--step_tokens_per_sec=13600]

Prints tokens/s of the pipeline and its ratio to --step_tokens_per_sec (what
benchmarks/step_time.py measured for the same config; issue 8 asks for at least 10x).
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time

from absl import app, flags
from ml_collections import config_flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from llmjax.launch import reexec_with_malloc_tunables  # noqa: E402

reexec_with_malloc_tunables()  # as the llmjax command runs (llmjax/launch.py)
config_flags.DEFINE_config_file(
    "config", os.path.join(ROOT, "experiments", "shakespeare_char", "config.py"), "Config file.")
flags.DEFINE_integer("batches", 2000, "Batches to time.")
flags.DEFINE_float("step_tokens_per_sec", 13600.0, "The train step's tokens/s, for the ratio.")
FLAGS = flags.FLAGS


def main(argv):
    del argv
    from etils import epath

    from llmjax.objectives import get_objective
    from llmjax.train.loop import _prepare_data

    c = FLAGS.config
    with tempfile.TemporaryDirectory() as workdir:
        start = time.perf_counter()
        _, train_iter, _ = _prepare_data(c, epath.Path(workdir), get_objective(c.objective))
        next(train_iter)
        prepare_s = time.perf_counter() - start
        start = time.perf_counter()
        tokens = 0
        for _ in range(FLAGS.batches):
            batch = next(train_iter)
            tokens += batch["inputs"].size
        elapsed = time.perf_counter() - start
    rate = tokens / elapsed
    print(json.dumps({"source": c.data.source, "batch": c.batch_size, "seq_len": c.seq_len,
                      "prepare_s": round(prepare_s, 1), "batches": FLAGS.batches,
                      "pipeline_tokens_per_sec": round(rate),
                      "over_step_tokens_per_sec": round(rate / FLAGS.step_tokens_per_sec, 1)}))


if __name__ == "__main__":
    app.run(main)
