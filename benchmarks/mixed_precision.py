"""The full demo (configs/demo.py, 1500 steps) trained in float32 and in bfloat16 compute
(float32 parameters, optimizer state, norms, softmax and loss), one after the other.

    .venv/bin/python benchmarks/mixed_precision.py [--workdir=/tmp/llmjax-mixed-precision]

Prints one JSON line per dtype: final eval loss, the gap to the generated data's best
achievable loss, wall time and training tokens/s; then the bfloat16 - float32 loss difference.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time

from absl import app, flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from llmjax.launch import reexec_with_malloc_tunables  # noqa: E402

reexec_with_malloc_tunables()  # as the llmjax command runs (llmjax/launch.py)
flags.DEFINE_string("workdir", "/tmp/llmjax-mixed-precision", "Scratch folder (replaced).")
FLAGS = flags.FLAGS


def main(argv):
    del argv
    from configs import demo
    from llmjax.train.loop import train_and_evaluate
    from llmjax.train.writer import read_metrics

    shutil.rmtree(FLAGS.workdir, ignore_errors=True)
    losses = {}
    for dtype in ("float32", "bfloat16"):
        c = demo.get_config()
        c.model.dtype, c.progress_bar = dtype, False
        workdir = os.path.join(FLAGS.workdir, dtype)
        start = time.perf_counter()
        metrics = train_and_evaluate(c, workdir)
        wall = time.perf_counter() - start
        rates = [r["train/tokens_per_sec"] for r in read_metrics(workdir)
                 if "train/tokens_per_sec" in r]
        losses[dtype] = metrics["eval/loss"]
        print(json.dumps({"dtype": dtype, "eval_loss": round(metrics["eval/loss"], 4),
                          "gap_to_floor": round(metrics["eval/loss"]
                                                - metrics["eval/best_achievable_loss"], 4),
                          "wall_s": round(wall, 1),
                          "median_tokens_per_sec": round(sorted(rates)[len(rates) // 2])}),
              flush=True)
    print(json.dumps({"bfloat16_minus_float32": round(losses["bfloat16"] - losses["float32"],
                                                      4)}))


if __name__ == "__main__":
    app.run(main)
