"""When a process joins jax.distributed: explicit flags, the --distributed switch, or a
cluster's environment (SLURM, Cloud TPU pod slices, JAX_COORDINATOR_ADDRESS)."""

import pytest

from llmjax.train import distributed

CLUSTER_VARS = ("JAX_COORDINATOR_ADDRESS", "TPU_WORKER_HOSTNAMES", "SLURM_NTASKS")


@pytest.mark.parametrize("env,coordinator,switch,expected", [
    ({}, None, None, False),  # a laptop or a single GPU box
    ({}, "10.0.0.1:1234", None, True),
    ({}, "10.0.0.1:1234", False, False),  # --nodistributed wins
    ({}, None, True, True),  # --distributed: jax detects the cluster
    ({"SLURM_NTASKS": "1"}, None, None, False),
    ({"SLURM_NTASKS": "4"}, None, None, True),
    ({"TPU_WORKER_HOSTNAMES": "10.0.0.2"}, None, None, False),  # a single-host TPU VM
    ({"TPU_WORKER_HOSTNAMES": "10.0.0.2,10.0.0.3"}, None, None, True),
    ({"JAX_COORDINATOR_ADDRESS": "10.0.0.1:1234"}, None, None, True),
])
def test_when_a_process_joins(monkeypatch, env, coordinator, switch, expected):
    for name in CLUSTER_VARS:
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert distributed.wanted(coordinator, switch) is expected
