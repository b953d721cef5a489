"""One config's train step compiled with different XLA compiler options, timed alternately
(A B A B ...) in one process so that every variant sees the same machine state.

    .venv/bin/python benchmarks/compiler_options.py --config=configs/gpt.py:size=small \
        [--options='|xla_cpu_experimental_ynn_fusion_type='] [--rounds=3] [--steps=2]

`--options` separates the variants with '|'; each is a `parallel.compiler_options` string ('' is
XLA's own defaults). Prints, per variant, the median ms/step and tokens/s over the rounds and the
loss after the last step (every variant trains the same state on the same synthetic batch, so
the losses show that the options change the program, not the function).
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
from llmjax.launch import reexec_with_malloc_tunables  # noqa: E402

reexec_with_malloc_tunables()  # as the llmjax command runs (llmjax/launch.py)
config_flags.DEFINE_config_file("config", os.path.join(ROOT, "configs", "gpt.py") + ":size=small",
                                "Config file.")
flags.DEFINE_string("options", "|xla_cpu_experimental_ynn_fusion_type=",
                    "Variants, '|'-separated parallel.compiler_options strings.")
flags.DEFINE_integer("rounds", 3, "Timed rounds (each variant once per round).")
flags.DEFINE_integer("steps", 2, "Steps per variant and round.")
flags.DEFINE_integer("vocab_size", 65, "Vocabulary size.")
FLAGS = flags.FLAGS


def main(argv):
    del argv
    import jax

    from benchmarks import synthetic

    c = FLAGS.config
    c.model.vocab_size = FLAGS.vocab_size
    batch = synthetic.batch(c)
    variants = {}
    for text in FLAGS.options.split("|"):
        parallel, host_state, _ = synthetic.train_setup(c, compiler_options=text)
        state = parallel.to_device(host_state)
        start = time.perf_counter()
        state, metrics = parallel.train_step(state, batch)
        jax.block_until_ready(state)
        variants[text] = {"parallel": parallel, "state": state, "ms": [],
                          "compile_s": time.perf_counter() - start}
    for _ in range(FLAGS.rounds):
        for v in variants.values():
            start = time.perf_counter()
            for _ in range(FLAGS.steps):
                v["state"], v["metrics"] = v["parallel"].train_step(v["state"], batch)
            jax.block_until_ready(v["state"])
            v["ms"].append((time.perf_counter() - start) / FLAGS.steps * 1e3)
    tokens = synthetic.tokens_per_step(batch)
    for text, v in variants.items():
        ms = float(np.median(v["ms"]))
        print(json.dumps({"compiler_options": text, "dtype": c.model.dtype,
                          "compile_s": round(v["compile_s"], 2), "ms_per_step": round(ms, 1),
                          "tokens_per_sec": round(tokens / ms * 1e3),
                          "rounds_ms": [round(t) for t in v["ms"]],
                          "loss_after": float(v["metrics"]["loss"])}))


if __name__ == "__main__":
    app.run(main)
