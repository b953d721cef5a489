"""Train-step time under each of the malloc tunables that the `llmjax` command sets
(llmjax/launch.py), each round of each variant in a fresh process, alternating (A B C A B C).

    .venv/bin/python benchmarks/host_memory.py [--config=configs/gpt.py:size=small]
        [--config.model.dtype=bfloat16] [--rounds=3] [--steps=3] [--warmup=2]

Per variant: the median ms/step, and per step the minor page faults and the kernel (system)
CPU seconds of the process, which is where memory handed back to the kernel and faulted in
again shows up. Variant `default` runs with glibc's defaults (GLIBC_TUNABLES unset),
`huge_pages` with glibc.malloc.hugetlb=1 (the blocks too large for an arena: gpt:small),
`huge_pages+keep_arenas` with the command's setting, glibc.malloc.top_pad=64 MiB and
glibc.malloc.mmap_max=0 added (a worker arena's buffers of up to 64 MiB kept between steps:
gpt:tiny). Peak resident memory per variant too.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import numpy as np
from absl import app, flags
from ml_collections import config_flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from llmjax import launch  # noqa: E402

config_flags.DEFINE_config_file("config", os.path.join(ROOT, "configs", "gpt.py") + ":size=small",
                                "Config file.")
flags.DEFINE_integer("rounds", 3, "A B rounds (medians are reported).")
flags.DEFINE_integer("steps", 3, "Timed steps per round and variant.")
flags.DEFINE_integer("warmup", 2, "Untimed steps first (the first compiles).")
flags.DEFINE_integer("vocab_size", 65, "Vocabulary size.")
flags.DEFINE_bool("worker", False, "Internal: time this process and print the figures.")
FLAGS = flags.FLAGS

VARIANTS = {"default": "", "huge_pages": launch.HUGE_PAGES_TUNABLE,
            "huge_pages+keep_arenas": ":".join(launch.MALLOC_TUNABLES)}


def worker() -> dict:
    """ms/step, minor page faults/step and system CPU s/step of the config's train step."""
    import resource

    import jax

    from benchmarks import synthetic

    c = FLAGS.config
    c.model.vocab_size = FLAGS.vocab_size
    parallel, host_state, _ = synthetic.train_setup(c)
    state, batch = parallel.to_device(host_state), synthetic.batch(c)
    for _ in range(FLAGS.warmup):  # compile, warm up
        state, _ = parallel.train_step(state, batch)
    jax.block_until_ready(state)
    before, start = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    for _ in range(FLAGS.steps):
        state, _ = parallel.train_step(state, batch)
    jax.block_until_ready(state)
    seconds, after = time.perf_counter() - start, resource.getrusage(resource.RUSAGE_SELF)
    return {"ms": seconds / FLAGS.steps * 1e3,
            "faults": (after.ru_minflt - before.ru_minflt) / FLAGS.steps,
            "system_s": (after.ru_stime - before.ru_stime) / FLAGS.steps,
            "peak_host_mib": after.ru_maxrss / 1024}  # Linux: KiB


def in_subprocess(tunables: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}
    if tunables:
        env["GLIBC_TUNABLES"] = tunables
    out = subprocess.run([sys.executable, os.path.abspath(__file__), "--worker", *sys.argv[1:]],
                         env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv):
    del argv
    if FLAGS.worker:
        print(json.dumps(worker()))
        return
    runs: dict[str, list[dict]] = {name: [] for name in VARIANTS}
    for _ in range(FLAGS.rounds):
        for name, tunables in VARIANTS.items():
            runs[name].append(in_subprocess(tunables))
    c = FLAGS.config
    for name, rs in runs.items():
        print(json.dumps({
            "variant": name, "glibc_tunables": VARIANTS[name], "dtype": c.model.dtype,
            "ms_per_step": round(float(np.median([r["ms"] for r in rs])), 1),
            "minor_faults_per_step": round(float(np.median([r["faults"] for r in rs]))),
            "system_cpu_s_per_step": round(float(np.median([r["system_s"] for r in rs])), 3),
            "peak_host_mib": round(max(r["peak_host_mib"] for r in rs)),
            "rounds_ms": [round(r["ms"], 1) for r in rs]}), flush=True)


if __name__ == "__main__":
    app.run(main)
