"""The demo against its floor: trains configs/demo.py and prints the final eval loss, the best
achievable loss on the generated data (Bayes-optimal given the model's context) and the gap.

    .venv/bin/python benchmarks/demo_floor.py [--workdir=DIR]

Target (issue 2): gap <= 0.1 nats/token.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time

from absl import app, flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from llmjax.launch import reexec_with_malloc_tunables  # noqa: E402

reexec_with_malloc_tunables()  # as the llmjax command runs (llmjax/launch.py)

flags.DEFINE_string("workdir", None, "Run directory (default: a temporary directory).")
FLAGS = flags.FLAGS


def main(argv):
    del argv
    from configs import demo
    from llmjax.log_filter import quiet_library_logs
    from llmjax.train.loop import train_and_evaluate

    quiet_library_logs()
    workdir = FLAGS.workdir or tempfile.mkdtemp(prefix="demo_")
    config = demo.get_config()
    config.progress_bar = False
    start = time.perf_counter()
    metrics = train_and_evaluate(config, workdir)
    floor = metrics["eval/best_achievable_loss"]
    print(json.dumps({"eval_loss": round(metrics["eval/loss"], 4), "best_achievable": round(
        floor, 4), "gap": round(metrics["eval/loss"] - floor, 4), "wall_s": round(
        time.perf_counter() - start, 1), "workdir": workdir}))


if __name__ == "__main__":
    app.run(main)
