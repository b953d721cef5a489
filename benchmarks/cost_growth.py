"""How training cost grows with the work: tokens/s and memory of the causal-LM train step over
model size (configs/gpt.py's tiny -> base, the GPT-2 124M shape) and sequence length
(64 -> 2048), at a fixed number of tokens per step, on synthetic batches.

    .venv/bin/python benchmarks/cost_growth.py [--sizes=tiny,small,base]
        [--seq_lens=64,128,256,512,1024,2048] [--tokens_per_step=2048] [--steps=2]
        [--plot=benchmarks/results/cost_growth.png]

Each point: batch = tokens_per_step / seq_len, one compile + warm-up step, then the median of
`--steps` timed steps. Memory is XLA's own analysis of the compiled step
(arguments: parameters, AdamW state and the batch; plus temporaries: activations kept for the
backward pass and workspace), the same on every run. FLOPs per token are 6 N + 12 L T D
(N parameters, L layers, T sequence length, D width: llmjax/train/flops.py, counted as PaLM,
nanoGPT and MaxText do), and MFU divides by a matmul peak measured in the same run. The
vocabulary is 65 characters throughout, so N is nearly all in the blocks: tiny 0.8M, small
10.7M, base 85M parameters. Prints a markdown table and writes a plot.
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
from llmjax.launch import reexec_with_malloc_tunables  # noqa: E402

reexec_with_malloc_tunables()  # as the llmjax command runs (llmjax/launch.py)
flags.DEFINE_list("sizes", ["tiny", "small", "base"], "configs/gpt.py sizes.")
flags.DEFINE_list("seq_lens", ["64", "128", "256", "512", "1024", "2048"], "Sequence lengths.")
flags.DEFINE_integer("tokens_per_step", 2048, "Global batch x sequence length, every point.")
flags.DEFINE_integer("steps", 2, "Timed steps per point (median).")
flags.DEFINE_integer("vocab_size", 65, "Vocabulary size.")
flags.DEFINE_string("dtype", "float32", "Compute dtype.")
flags.DEFINE_string("plot", os.path.join(ROOT, "benchmarks", "results", "cost_growth.png"),
                    "Where the plot is written ('' for none).")
FLAGS = flags.FLAGS


def measure(size: str, seq_len: int, peak: float) -> dict:
    """One point of the grid: compile, warm up, time; XLA's memory analysis."""
    import jax

    from benchmarks import synthetic
    from configs import gpt
    from llmjax.train import flops
    from llmjax.train import state as state_lib

    c = gpt.get_config(f"size={size}")
    c.model.vocab_size, c.model.dtype = FLAGS.vocab_size, FLAGS.dtype
    c.seq_len = c.model.max_len = seq_len
    c.batch_size = max(1, FLAGS.tokens_per_step // seq_len)
    parallel, host_state, params = synthetic.train_setup(c)
    state = parallel.to_device(host_state)
    batch = synthetic.batch(c)
    start = time.perf_counter()
    compiled = parallel._train.lower(state, batch).compile()
    compile_s = time.perf_counter() - start
    memory = compiled.memory_analysis()
    state, _ = compiled(state, batch)  # warm-up
    jax.block_until_ready(state)
    times = []
    for _ in range(FLAGS.steps):
        start = time.perf_counter()
        state, _ = compiled(state, batch)
        jax.block_until_ready(state)
        times.append(time.perf_counter() - start)
    step = float(np.median(times))
    tokens, step_flops = flops.step_cost(c, state_lib.model_config(c), params)
    return {"size": size, "seq_len": seq_len, "batch": c.batch_size,
            "params_m": round(state_lib.count_params(params) / 1e6, 2),
            "compile_s": round(compile_s, 1), "ms_per_step": round(step * 1e3, 1),
            "tokens_per_sec": round(tokens / step),
            "gflop_per_token": round(step_flops / tokens / 1e9, 4),
            "mfu": round(step_flops / step / peak, 3),
            "arguments_mib": round(memory.argument_size_in_bytes / 2**20, 1),
            "temporaries_mib": round(memory.temp_size_in_bytes / 2**20, 1)}


def plot(rows: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_speed, ax_mem) = plt.subplots(1, 2, figsize=(11, 4.2))
    for size in dict.fromkeys(r["size"] for r in rows):
        points = [r for r in rows if r["size"] == size]
        label = f"{size} ({points[0]['params_m']}M params)"
        seq = [r["seq_len"] for r in points]
        ax_speed.plot(seq, [r["tokens_per_sec"] for r in points], "o-", label=label)
        ax_mem.plot(seq, [(r["arguments_mib"] + r["temporaries_mib"]) / 1024 for r in points],
                    "o-", label=label)
    for ax, title in ((ax_speed, "training tokens/s"), (ax_mem, "step memory, GiB")):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        seq_lens = sorted({r["seq_len"] for r in rows})
        ax.set_xticks(seq_lens, [str(n) for n in seq_lens])
        ax.set_xlabel("sequence length")
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
    ax_speed.legend()
    fig.suptitle(f"llmjax causal-LM train step, {FLAGS.tokens_per_step} tokens/step, "
                 f"{FLAGS.dtype}, 2-core CPU")
    fig.tight_layout()
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fig.savefig(path, dpi=110)


def main(argv):
    del argv
    from llmjax.train import flops

    peak = flops.measure_matmul_peak(FLAGS.dtype, 1024, seconds=2.0)
    print(f"measured {FLAGS.dtype} matmul peak: {peak / 1e9:.1f} GFLOP/s")
    rows = []
    for size in FLAGS.sizes:
        for seq_len in map(int, FLAGS.seq_lens):
            rows.append(measure(size, seq_len, peak))
            print(json.dumps(rows[-1]), flush=True)
    print("\n| size | seq | batch | ms/step | tokens/s | GFLOP/token | MFU | args MiB | "
          "temps MiB |\n|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['size']} | {r['seq_len']} | {r['batch']} | {r['ms_per_step']} | "
              f"{r['tokens_per_sec']} | {r['gflop_per_token']} | {r['mfu']} | "
              f"{r['arguments_mib']} | {r['temporaries_mib']} |")
    if FLAGS.plot:
        plot(rows, FLAGS.plot)
        print(f"plot: {FLAGS.plot}")


if __name__ == "__main__":
    app.run(main)
