"""Train-step time of a config's model on synthetic batches (no data pipeline), per device.

    .venv/bin/python benchmarks/step_time.py [--config=experiments/shakespeare_char/config.py]
        [--steps=100] [--vocab_size=69]

Prints compile time, milliseconds per step (median of 5 timed blocks), steps/s, tokens/s,
the process's peak resident memory (and the device's on a GPU), and model
FLOPs utilisation against a matmul peak measured in the same run (a jitted --peak_size square
matmul in model.dtype, float32 accumulation), and against the datasheet where the device is
known. The GPT-2 124M shape in bfloat16:

    python benchmarks/step_time.py --config=configs/gpt.py:size=base --vocab_size=50304 \
        --config.model.dtype=bfloat16 --config.batch_size=16 --peak_size=8192
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
config_flags.DEFINE_config_file(
    "config", os.path.join(ROOT, "experiments", "shakespeare_char", "config.py"), "Config file.")
flags.DEFINE_integer("steps", 100, "Steps per timed block.")
flags.DEFINE_integer("vocab_size", 69, "Vocabulary size (the tokenizer's, normally).")
flags.DEFINE_integer("peak_size", 2048, "Side of the square matmul that measures the peak.")
flags.DEFINE_integer("profile_steps", 0, "Trace this many steps with jax.profiler and print "
                     "the device ops that take the most time.")
flags.DEFINE_string("profile_dir", "/tmp/llmjax-profile", "Where the trace is written.")
FLAGS = flags.FLAGS


def main(argv):
    del argv
    import jax

    from benchmarks import synthetic
    from llmjax.train import flops
    from llmjax.train import state as state_lib

    c = FLAGS.config
    c.model.vocab_size = FLAGS.vocab_size
    parallel, host_state, params = synthetic.train_setup(c)
    state = parallel.to_device(host_state)
    batch = synthetic.batch(c)
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
    model_cfg = state_lib.model_config(c)
    tokens, step_flops = flops.step_cost(c, model_cfg, params)
    # the reference matmul writes what the model's do (float32, or with
    # model.float32_matmul_outputs off the compute dtype)
    peak = flops.measure_matmul_peak(c.model.dtype, FLAGS.peak_size, seconds=2.0,
                                     result_dtype=model_cfg.matmul_result_dtype.name)
    device = jax.devices()[0]
    figures = {"device": device.device_kind, "dtype": c.model.dtype,
               "attention_impl": c.model.attention_impl, "batch_size": c.batch_size,
               "float32_matmul_outputs": c.model.float32_matmul_outputs,
               "logits_chunks": c.model.logits_chunks, "compile_s": round(compile_s, 2),
               "ms_per_step": round(step * 1e3, 2), "steps_per_sec": round(1 / step, 2),
               "tokens_per_sec": round(tokens / step),
               "model_tflops_per_sec": round(step_flops / step / 1e12, 3),
               "measured_peak_tflops": round(peak / 1e12, 3),
               "mfu_vs_measured_peak": round(step_flops / step / peak, 3)}
    if device.device_kind in flops.DATASHEET_PEAKS:
        datasheet = flops.DATASHEET_PEAKS[device.device_kind]
        figures["mfu_vs_datasheet"] = round(step_flops / step / datasheet, 3)
    stats = device.memory_stats() or {}
    if "peak_bytes_in_use" in stats:
        figures["peak_device_gib"] = round(stats["peak_bytes_in_use"] / 2**30, 2)
    figures["peak_host_gib"] = round(peak_host_bytes() / 2**30, 2)
    print(json.dumps(figures))
    if FLAGS.profile_steps:
        import jax.profiler

        with jax.profiler.trace(FLAGS.profile_dir, create_perfetto_trace=True):
            for _ in range(FLAGS.profile_steps):
                state, _ = parallel.train_step(state, batch)
            jax.block_until_ready(state)
        print_top_ops(FLAGS.profile_dir, FLAGS.profile_steps)


def peak_host_bytes() -> int:
    """This process's peak resident memory (Linux's ru_maxrss is in KiB); on a CPU it holds
    the parameters, optimizer state and activations too."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def print_top_ops(profile_dir: str, steps: int, top: int = 30) -> None:
    """Device time per op name in the perfetto trace (ms per step, share of the total)."""
    import collections
    import glob
    import gzip

    path = sorted(glob.glob(f"{profile_dir}/**/perfetto_trace.json.gz", recursive=True))[-1]
    trace = json.load(gzip.open(path))
    events = trace["traceEvents"] if isinstance(trace, dict) else trace
    names = {(e.get("pid"), None): e["args"]["name"] for e in events
             if e.get("ph") == "M" and e.get("name") == "process_name"}
    device_pids = {pid for (pid, _), name in names.items()
                   if "/device:" in name and "host" not in name.lower()}
    # On CPU there is no device row: XLA's ops run on its Eigen threads, inside executor spans.
    threads = {(e.get("pid"), e.get("tid")): e["args"]["name"] for e in events
               if e.get("ph") == "M" and e.get("name") == "thread_name"}

    def is_op(e) -> bool:
        if device_pids:
            return e.get("pid") in device_pids
        thread = threads.get((e.get("pid"), e.get("tid")), "")
        return thread.startswith("tf_XLAEigen") and not e["name"].startswith(
            ("ThunkExecutor", "SlinkyThreadPool"))

    totals: dict[str, float] = collections.defaultdict(float)
    for e in events:
        if e.get("ph") == "X" and is_op(e):
            totals[e["name"]] += e.get("dur", 0.0)
    total = sum(totals.values())
    # (on CPU the sum is over XLA's worker threads, so it can exceed the step's wall time)
    print(f"device time per step: {total / steps / 1e3:.2f} ms over {len(totals)} op names "
          f"(trace {path})")
    for name, us in sorted(totals.items(), key=lambda kv: -kv[1])[:top]:
        print(f"{us / steps / 1e3:8.3f} ms  {100 * us / total:5.1f}%  {name[:110]}")


if __name__ == "__main__":
    app.run(main)
