"""nanoGPT's CPU Shakespeare recipe on llmjax (experiments/shakespeare_char/config.py).

    .venv/bin/python benchmarks/shakespeare_char.py [--seeds=0,1,2] [--data=PATH]
        [--layers=nanogpt|llama] [--optimizer=adamw|muon]

Model: 4 layers x 4 heads x 128 dims, context 64, no biases, tied embeddings, dropout 0.
Train: batch 12, AdamW lr 1e-3 (b2 0.99, weight decay 0.1 on matrices), clip 1.0, warmup 100
then cosine to 1e-4 at step 2000. Prints, per seed, the loss on the whole val split (every
character once, in non-overlapping 64-character windows), wall time and tokens/s, then the mean.

--layers=llama keeps every hyperparameter above (tied embeddings, 4 heads, no biases) and
swaps nanoGPT's layers for LLaMA's: RMSNorm, rotary positions instead of a learned table, and a
SwiGLU feed-forward of width 341 (3 x 128 x 341 weights per layer against 2 x 128 x 512):
795,904 parameters against 804,608, the 8,192 of the learned position table gone.

--optimizer=muon keeps the recipe and its hyperparameters (learning rate, schedule, weight
decay) and trains the blocks' matrices with Muon instead of AdamW (optimizer.name=muon: updates
scaled to AdamW's RMS, so the learning rate carries over); embeddings and norms keep AdamW.
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

flags.DEFINE_string("seeds", "0,1,2", "Comma-separated seeds.")
flags.DEFINE_string("data", os.path.join(ROOT, "..", "shared", "data", "tinyshakespeare",
                                         "input.txt"), "tiny shakespeare input.txt")
flags.DEFINE_string("workdir", None, "Where runs go (default: a temporary directory).")
flags.DEFINE_enum("layers", "nanogpt", ["nanogpt", "llama"],
                  "nanogpt: the frozen recipe; llama: the same with LLaMA's layers.")
flags.DEFINE_enum("optimizer", "adamw", ["adamw", "muon"],
                  "adamw: the frozen recipe; muon: Muon on the blocks' matrices, same settings.")
FLAGS = flags.FLAGS


def recipe(seed: int, data: str, layers: str = "nanogpt", optimizer: str = "adamw"):
    from experiments.shakespeare_char.config import get_config

    c = get_config(f"seed={seed},data={data}")
    c.progress_bar = False
    c.optimizer.name = optimizer
    if layers == "llama":
        m = c.model
        m.norm, m.position_embedding, m.activation, m.gated_mlp = "rmsnorm", "rotary", "silu", True
        m.mlp_dim = 341  # 3 x 128 x 341 ~ 2 x 128 x 512: the feed-forward's parameters kept
    return c


def main(argv):
    del argv
    from llmjax.log_filter import quiet_library_logs
    from llmjax.train.loop import train_and_evaluate
    from llmjax.train.writer import read_metrics

    if not os.path.exists(FLAGS.data):
        raise SystemExit(f"{FLAGS.data} not found: pass --data=PATH/TO/input.txt")
    quiet_library_logs()
    root = FLAGS.workdir or tempfile.mkdtemp(prefix="shakespeare_")
    results = []
    for seed in [int(s) for s in FLAGS.seeds.split(",")]:
        workdir = os.path.join(root, f"seed{seed}")
        start = time.perf_counter()
        metrics = train_and_evaluate(recipe(seed, FLAGS.data, FLAGS.layers, FLAGS.optimizer),
                                     workdir)
        wall = time.perf_counter() - start
        rates = [r["train/tokens_per_sec"] for r in read_metrics(workdir)
                 if "train/tokens_per_sec" in r]
        row = {"seed": seed, "val_loss": round(metrics["eval/loss"], 4),
               "wall_s": round(wall, 1), "tokens_per_sec": round(sorted(rates)[len(rates) // 2])}
        results.append(row)
        print(json.dumps(row), flush=True)
    mean = sum(r["val_loss"] for r in results) / len(results)
    print(json.dumps({"mean_val_loss": round(mean, 4), "runs": len(results), "workdir": root}))


if __name__ == "__main__":
    app.run(main)
