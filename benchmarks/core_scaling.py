"""How the time-to-loss recipe's train step uses this machine's cores, and what data parallelism
over single-core processes would cost instead:

    .venv/bin/python benchmarks/core_scaling.py [--steps=150] [--rounds=3]

Each step row runs in its own process whose CPU affinity is set before jax starts, so XLA's
thread pool has one thread per allowed core. The step is benchmarks/time_to_loss.py's (biases,
exact GELU, bfloat16 compute, context 64, synthetic tokens), timed
- on all N cores at the full batch of 12 (how llmjax runs);
- on one core at the full batch, and at a 1/N share of it, with the other cores idle;
- in N processes at once, each pinned to its own core with a 1/N share (no communication):
  what each data-parallel worker's compute would take while the others run.
Then N processes, one per core, joined through jax.distributed on 127.0.0.1 (gloo, the CPU
collectives), time an all-reduce of the model's gradients as one flat float32 vector and as one
array per parameter (a jitted step's data-parallel gradient sum issues one per leaf), and then
the data-parallel step itself: each process its 1/N share through llmjax's mesh mode on a
data-only mesh (the step per batch shard, the gradients summed by one flat all-reduce). Prints a
JSON line per row, then the ratios.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

import numpy as np
from absl import app, flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

flags.DEFINE_integer("steps", 150, "Timed steps per round.")
flags.DEFINE_integer("rounds", 3, "Timed rounds (the median is reported).")
flags.DEFINE_integer("batch", 12, "Global batch (the recipe's).")
flags.DEFINE_string("worker", "", "Internal: step, allreduce or data_parallel (one row, run in "
                    "a subprocess).")
flags.DEFINE_list("cpus", [], "Internal: the worker's CPUs.")
flags.DEFINE_integer("process_id", 0, "Internal: a joined worker's process index.")
flags.DEFINE_integer("num_processes", 1, "Internal: how many workers join.")
flags.DEFINE_integer("port", 0, "Internal: the coordinator's port on 127.0.0.1.")
FLAGS = flags.FLAGS


def recipe_config(batch: int):
    from experiments.shakespeare_char.config import get_config

    c = get_config("seed=0")
    c.model.use_bias, c.model.dtype, c.model.vocab_size = True, "bfloat16", 65
    c.batch_size = batch
    return c


def median_ms(run_once, steps: int, rounds: int) -> float:
    """run_once(n) runs n iterations and blocks; the median of `rounds` timings, per iteration."""
    run_once(30)  # warm-up: the first steps fault their buffers in
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        run_once(steps)
        times.append((time.perf_counter() - start) / steps * 1e3)
    return float(np.median(times))


def median_step_ms(step, state, batch) -> float:
    """median_ms of `state, _ = step(state, batch)` (the state is donated: carried along)."""
    import jax

    holder = {"state": state}

    def run(n):
        for _ in range(n):
            holder["state"], _ = step(holder["state"], batch)
        jax.block_until_ready(holder["state"])

    return median_ms(run, FLAGS.steps, FLAGS.rounds)


def step_worker() -> dict:
    from benchmarks import synthetic

    c = recipe_config(FLAGS.batch)
    parallel, host_state, _ = synthetic.train_setup(c)
    batch = synthetic.batch(c)
    ms = median_step_ms(parallel.train_step, parallel.to_device(host_state), batch)
    return {"row": "train step", "cpus": len(FLAGS.cpus), "batch": FLAGS.batch,
            "ms_per_step": round(ms, 2)}


def join_processes():
    from llmjax.train import distributed  # gloo: JAX's CPU collectives

    distributed.initialize(f"127.0.0.1:{FLAGS.port}", FLAGS.num_processes, FLAGS.process_id)


def data_parallel_worker() -> dict:
    """This process's share of the batch through llmjax's mesh mode on a data-only mesh of the
    processes' devices: the step on each batch shard, the gradients and metric sums summed in
    one flat gloo all-reduce (parallel.gradient_allreduce=auto on CPU)."""
    join_processes()
    from benchmarks import synthetic

    c = recipe_config(FLAGS.batch)
    c.parallel.mode = "mesh"
    parallel, host_state, _ = synthetic.train_setup(c)
    share = FLAGS.batch // FLAGS.num_processes
    rows = {k: v[FLAGS.process_id * share:(FLAGS.process_id + 1) * share]
            for k, v in synthetic.batch(c).items()}
    ms = median_step_ms(parallel.train_step, parallel.to_device(host_state), rows)
    return {"row": "data-parallel train step (one flat all-reduce)",
            "processes": FLAGS.num_processes, "batch_each": share, "ms_per_step": round(ms, 2)}


def allreduce_worker() -> dict:
    join_processes()
    import jax
    import jax.numpy as jnp
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

    from benchmarks import synthetic

    _, host_state, _ = synthetic.train_setup(recipe_config(FLAGS.batch))
    sizes = [int(np.prod(x.shape)) for x in jax.tree.leaves(host_state["params"])]
    mesh = Mesh(np.array(jax.devices()), ("data",))
    sharded = NamedSharding(mesh, PartitionSpec("data"))
    summed = jax.jit(jax.shard_map(lambda xs: [jax.lax.psum(x, "data") for x in xs], mesh=mesh,
                                   in_specs=PartitionSpec("data"),
                                   out_specs=PartitionSpec("data")))
    result = {"row": "gradient all-reduce", "processes": FLAGS.num_processes,
              "parameters": sum(sizes), "leaves": len(sizes)}
    for name, shapes in (("flat", [sum(sizes)]), ("per_leaf", sizes)):
        arrays = [jax.make_array_from_process_local_data(sharded, np.ones(n, np.float32))
                  for n in shapes]

        def run(n, arrays=arrays):
            out = None
            for _ in range(n):
                out = summed(arrays)
            jax.block_until_ready(out)

        result[f"ms_{name}"] = round(median_ms(run, max(FLAGS.steps // 5, 10), FLAGS.rounds), 2)
        assert float(jnp.asarray(summed(arrays)[0].addressable_data(0))[0]) == FLAGS.num_processes
    return result


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spawn(cpus: list[int], *extra: str) -> subprocess.Popen:
    common = [f"--steps={FLAGS.steps}", f"--rounds={FLAGS.rounds}",
              f"--cpus={','.join(map(str, cpus))}"]
    return subprocess.Popen([sys.executable, os.path.abspath(__file__), *common, *extra],
                            cwd=ROOT, stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "JAX_PLATFORMS": "cpu"})


def result_of(process: subprocess.Popen) -> dict:
    out, _ = process.communicate(timeout=900)
    if process.returncode != 0:
        raise SystemExit(f"a worker failed with exit code {process.returncode}")
    return json.loads(out.strip().splitlines()[-1])


def main(argv):
    del argv
    if FLAGS.worker:
        # before jax starts: XLA sizes its thread pool by the CPUs this process may use
        os.sched_setaffinity(0, {int(c) for c in FLAGS.cpus})
        from llmjax.launch import reexec_with_malloc_tunables

        reexec_with_malloc_tunables()  # as the llmjax command runs (affinity survives exec)
        workers = {"step": step_worker, "allreduce": allreduce_worker,
                   "data_parallel": data_parallel_worker}
        row = workers[FLAGS.worker]()
        if FLAGS.worker == "step" or FLAGS.process_id == 0:
            print(json.dumps(row), flush=True)
        return
    cpus = sorted(os.sched_getaffinity(0))
    n = len(cpus)
    if n < 2:
        raise SystemExit("core_scaling needs at least 2 CPUs")
    rows = [result_of(spawn(cpus, "--worker=step", f"--batch={FLAGS.batch}")),
            result_of(spawn(cpus[:1], "--worker=step", f"--batch={FLAGS.batch}")),
            result_of(spawn(cpus[:1], "--worker=step", f"--batch={FLAGS.batch // n}"))]
    at_once = [spawn([cpu], "--worker=step", f"--batch={FLAGS.batch // n}") for cpu in cpus]
    concurrent = [result_of(p) for p in at_once]
    rows.append({"row": "train step, one process per core at once", "processes": n,
                 "batch_each": FLAGS.batch // n,
                 "ms_per_step": max(r["ms_per_step"] for r in concurrent)})
    for worker in ("allreduce", "data_parallel"):
        port = free_port()
        group = [spawn([cpu], f"--worker={worker}", f"--process_id={i}", f"--num_processes={n}",
                       f"--port={port}", f"--batch={FLAGS.batch}") for i, cpu in enumerate(cpus)]
        rows.append(result_of(group[0]))  # process 0 prints the row
        for p in group[1:]:
            if p.wait(timeout=900) != 0:
                raise SystemExit(f"a {worker} worker failed with exit code {p.returncode}")
    for row in rows:
        print(json.dumps(row))
    one_process = rows[0]["ms_per_step"]
    print(json.dumps({"one_process_all_cores_ms": one_process,
                      "all_cores_speedup": round(rows[1]["ms_per_step"] / one_process, 2),
                      "data_parallel_over_one_process": round(
                          rows[5]["ms_per_step"] / one_process, 2)}))


if __name__ == "__main__":
    app.run(main)
