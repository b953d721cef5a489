"""Two processes x two CPU devices joined through jax.distributed on 127.0.0.1 train exactly
like one process with four devices; only process 0 writes metrics; a SIGTERM to one host
stops both at the same step with a checkpoint that resumes."""

import math
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
from conftest import TEST_XLA_FLAGS, tiny_config, write_config_file

from llmjax.train.loop import train_and_evaluate
from llmjax.train.writer import read_metrics

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def command(config_file, workdir, *extra):
    return [sys.executable, "-m", "llmjax", "train", f"--config={config_file}",
            f"--workdir={workdir}", *extra]


def env_with(devices: int, tfds_dir) -> dict:
    # override the 8 fake devices that conftest gives this process
    flags = f"{TEST_XLA_FLAGS} --xla_force_host_platform_device_count={devices}"
    return {**os.environ, "XLA_FLAGS": flags,
            "JAX_PLATFORMS": "cpu", "TFDS_DATA_DIR": str(tfds_dir)}


def launch_pair(config_file, workdir, tfds_dir, *extra):
    port = free_port()
    return [subprocess.Popen(
        command(config_file, workdir, f"--coordinator_address=127.0.0.1:{port}",
                "--num_processes=2", f"--process_id={i}", *extra),
        cwd=ROOT, env=env_with(2, tfds_dir), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True) for i in range(2)]


def finish(processes, timeout=300):
    outputs = []
    for p in processes:
        try:
            out, err = p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            for q in processes:
                q.kill()
            raise
        outputs.append((p.returncode, err))
    return outputs


def train_losses(workdir) -> dict[int, float]:
    rows = [r for r in read_metrics(workdir) if "train/loss" in r]
    steps = [r["step"] for r in rows]
    assert len(steps) == len(set(steps)), f"metrics written twice: {steps}"
    return {r["step"]: r["train/loss"] for r in rows}


def multihost_config(**overrides):
    return tiny_config(**{"parallel.mode": "mesh", "parallel.mesh.fsdp": 2,
                          "num_train_steps": 4, "log_every_steps": 1, "eval_every_steps": 4,
                          "checkpoint_every_steps": 2, **overrides})


def test_two_processes_match_one_process_with_four_devices(tmp_path):
    best = {"eval_every_steps": 2, "checkpoint_best_metric": "loss"}  # saved by both hosts
    config_file = write_config_file(multihost_config(**best), tmp_path / "config.py")
    outputs = finish(launch_pair(config_file, tmp_path / "two", tmp_path / "tfds2"))
    for i, (code, err) in enumerate(outputs):
        assert code == 0, f"process {i}: {err[-3000:]}"
    # One process (here, in-process): data.shards=2 reads both hosts' data shards, so its
    # global batches are the two hosts' batches; tests/test_mesh.py shows that the mesh and
    # device count do not change the losses.
    train_and_evaluate(multihost_config(**{"data.shards": 2, "parallel.mode": "single", **best}),
                       tmp_path / "one")
    two, single = train_losses(tmp_path / "two"), train_losses(tmp_path / "one")
    assert sorted(two) == list(range(1, 5))
    for step in single:
        assert two[step] == pytest.approx(single[step], abs=1e-5), step
    assert "process 0 of 2" in outputs[0][1] and "process 1 of 2" in outputs[1][1]
    # only process 0 logs metrics; both wrote their share of each checkpoint
    assert "step 4: " in outputs[0][1] and "step 4: " not in outputs[1][1]
    assert len(list((tmp_path / "two").glob("events.out.tfevents*"))) == 1
    assert sorted(p.name for p in (tmp_path / "two/checkpoints").iterdir()) == ["2", "4"]
    assert [p.name for p in (tmp_path / "two/best/checkpoints").iterdir()] == \
        [p.name for p in (tmp_path / "one/best/checkpoints").iterdir()]


@pytest.mark.slow  # 33 s; the flat all-reduce runs by default in test_mesh
def test_two_processes_on_a_data_only_mesh_sum_gradients_in_one_all_reduce(tmp_path):
    """fsdp = tensor = 1: each process steps on its batch shards (shard_map) and the gradients
    cross between processes in one flat gloo all-reduce (one per array took the Shakespeare
    recipe from 21 to 179 ms a step); the losses are one process's."""
    config_file = write_config_file(multihost_config(**{"parallel.mesh.fsdp": 1}),
                                    tmp_path / "config.py")
    outputs = finish(launch_pair(config_file, tmp_path / "two", tmp_path / "tfds2"))
    for i, (code, err) in enumerate(outputs):
        assert code == 0, f"process {i}: {err[-3000:]}"
    assert ("parallel: mesh data 4 x fsdp 1 x tensor 1 over 4 cpu device(s): the step on each "
            "batch shard, gradients summed in one flat all-reduce") in outputs[0][1]
    train_and_evaluate(multihost_config(**{"data.shards": 2, "parallel.mode": "single"}),
                       tmp_path / "one")
    two, single = train_losses(tmp_path / "two"), train_losses(tmp_path / "one")
    assert sorted(two) == sorted(single) == list(range(1, 5))
    for step in single:
        assert two[step] == pytest.approx(single[step], abs=1e-5), step


@pytest.mark.slow
def test_sigterm_to_one_host_stops_both_at_one_step_and_resumes(tmp_path):
    """jax's preemption sync point: both hosts save the same step, then resume from it."""
    c = multihost_config(**{"num_train_steps": 400, "checkpoint_every_steps": 1000,
                            "log_every_steps": 1, "eval_every_steps": 1000})
    config_file = write_config_file(c, tmp_path / "config.py")
    processes = launch_pair(config_file, tmp_path / "run", tmp_path / "tfds")
    deadline = time.time() + 240
    while time.time() < deadline and len(train_losses(tmp_path / "run")) < 5:
        time.sleep(0.5)
    processes[1].send_signal(signal.SIGTERM)  # only the second host is preempted
    outputs = finish(processes)
    for i, (code, err) in enumerate(outputs):
        assert code == 0, f"process {i}: {err[-3000:]}"
    saved = sorted(int(p.name) for p in (tmp_path / "run/checkpoints").iterdir())
    assert len(saved) == 1 and 5 <= saved[0] < 400, saved
    for _, err in outputs:
        assert f"saved a checkpoint at step {saved[0]}" in err
    resumed = finish(launch_pair(config_file, tmp_path / "run", tmp_path / "tfds",
                                 f"--stop_at_step={saved[0] + 2}"))
    for i, (code, err) in enumerate(resumed):
        assert code == 0, f"process {i}: {err[-3000:]}"
        assert f"resumed from {tmp_path / 'run' / 'checkpoints'} at step {saved[0]}" in err
    assert sorted(train_losses(tmp_path / "run"))[-1] == saved[0] + 2


@pytest.mark.slow
def test_two_processes_compute_a_sharded_dpo_reference_as_one_process(tmp_path):
    """~40 s. DPO on a mesh spanning two hosts: each host's reference log-likelihoods come
    from one global sharded call per chunk (as many calls on both hosts), and the run trains
    as one process reading both hosts' data does."""
    from test_dpo import preference_setup

    c, _ = preference_setup(tmp_path, **{"parallel.mode": "mesh", "parallel.mesh.fsdp": 2,
                                         "num_train_steps": 4, "log_every_steps": 1,
                                         "eval_every_steps": 4, "checkpoint_every_steps": 4})
    config_file = write_config_file(c, tmp_path / "config.py")
    outputs = finish(launch_pair(config_file, tmp_path / "two", tmp_path / "tfds2"))
    for i, (code, err) in enumerate(outputs):
        assert code == 0, f"process {i}: {err[-3000:]}"
    c.parallel.mode, c.data.shards = "single", 2
    train_and_evaluate(c, tmp_path / "one")
    two, single = train_losses(tmp_path / "two"), train_losses(tmp_path / "one")
    assert sorted(two) == sorted(single) == list(range(1, 5))
    assert two[1] == pytest.approx(math.log(2), abs=1e-5)  # the reference is the start
    for step in single:
        assert two[step] == pytest.approx(single[step], abs=1e-5), step
