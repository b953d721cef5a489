"""Reliability: non-finite losses (stop or skip), a process killed mid-save, a full disk.
Faults are placed exactly through llmjax.train.faults (LLMJAX_FAULTS)."""

import os
import subprocess
import sys

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from conftest import TEST_XLA_FLAGS, tiny_config, write_config_file
from test_cli import ROOT

from llmjax.train.checkpoint import Checkpointer, CheckpointWriteError
from llmjax.train.loop import NonFiniteLossError, train_and_evaluate
from llmjax.train.writer import read_metrics

SHORT = {"num_train_steps": 12, "log_every_steps": 2, "eval_every_steps": 12,
         "checkpoint_every_steps": 4}


def fault_config(**overrides):
    return tiny_config(**{**SHORT, **overrides})


def params_at(workdir, step):
    ckpt = Checkpointer(workdir, async_save=False)
    restored = ckpt.manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore()))["state"]
    ckpt.close()
    return restored["params"], restored["opt_state"]


@pytest.mark.parametrize("objective", ["causal_lm",
                                       pytest.param("mlm_nsp", marks=pytest.mark.slow)])
def test_nonfinite_loss_stops_at_its_step_and_keeps_the_last_good_checkpoint(
        tmp_path, monkeypatch, objective):
    from test_mlm_nsp import bert_config  # two loss terms, two weight arrays

    c = fault_config() if objective == "causal_lm" else bert_config(tmp_path, **SHORT)
    monkeypatch.setenv("LLMJAX_FAULTS", "nan_at_step=7")
    with pytest.raises(NonFiniteLossError, match=r"at step 7; the last good checkpoint is step 4"):
        train_and_evaluate(c, tmp_path / "run")
    assert Checkpointer(tmp_path / "run").all_steps() == [4]
    assert max(r["step"] for r in read_metrics(tmp_path / "run")) == 6


def test_skip_nonfinite_updates_leaves_the_state_unchanged_and_counts(tmp_path, monkeypatch):
    c = fault_config(**{"skip_nonfinite_updates": True, "checkpoint_every_steps": 1,
                        "max_checkpoints_to_keep": 20})
    monkeypatch.setenv("LLMJAX_FAULTS", "nan_at_step=7")
    metrics = train_and_evaluate(c, tmp_path / "run")
    assert np.isfinite(metrics["eval/loss"])
    rows = {r["step"]: r for r in read_metrics(tmp_path / "run") if "train/loss" in r}
    assert [rows[s]["train/skipped_updates"] for s in sorted(rows)] == [0, 0, 0, 1, 0, 0]
    assert all(np.isfinite(r["train/loss"]) and np.isfinite(r["train/grad_norm"])
               for r in rows.values())
    before, after = params_at(tmp_path / "run", 6), params_at(tmp_path / "run", 7)
    same = jax.tree.map(np.array_equal, before, after)
    assert all(jax.tree.leaves(same)), "a skipped update changes neither params nor Adam state"
    assert not all(jax.tree.leaves(jax.tree.map(np.array_equal, after,
                                                params_at(tmp_path / "run", 8))))


def _train_subprocess(config, workdir, faults=""):
    config_file = write_config_file(config, workdir.parent / f"{workdir.name}.py")
    env = {**os.environ, "XLA_FLAGS": TEST_XLA_FLAGS, "LLMJAX_FAULTS": faults}
    return subprocess.run([sys.executable, "-m", "llmjax", "train", f"--config={config_file}",
                           f"--workdir={workdir}"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)


def test_killed_during_a_checkpoint_write_resumes_from_the_previous_one(tmp_path):
    c = fault_config(**{"async_checkpointing": True, "log_every_steps": 1})
    killed = _train_subprocess(c, tmp_path / "run", "kill_in_save_at_step=8")
    assert killed.returncode == -9, killed.stderr[-2000:]
    names = sorted(p.name for p in (tmp_path / "run/checkpoints").iterdir())
    assert names == ["4", "8.orbax-checkpoint-tmp"]  # the interrupted write is not a step
    resumed = _train_subprocess(c, tmp_path / "run")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "ignoring 8.orbax-checkpoint-tmp" in resumed.stderr
    assert "resuming from step 4, the newest complete checkpoint" in resumed.stderr
    train_and_evaluate(c, tmp_path / "full")
    ours = {r["step"]: r["train/loss"] for r in read_metrics(tmp_path / "run") if "train/loss" in r}
    full = {r["step"]: r["train/loss"] for r in read_metrics(tmp_path / "full")
            if "train/loss" in r}
    assert ours == full
    assert sorted(p.name for p in (tmp_path / "run/checkpoints").iterdir()) == ["12", "4", "8"]


def test_a_full_disk_names_the_intact_checkpoint_and_loses_nothing(tmp_path, monkeypatch):
    c = fault_config(**{"async_checkpointing": False})
    monkeypatch.setenv("LLMJAX_FAULTS", "disk_full_at_step=8")
    with pytest.raises(CheckpointWriteError,
                       match=r"No space left on device\); the last complete checkpoint is step 4"):
        train_and_evaluate(c, tmp_path / "run")
    monkeypatch.delenv("LLMJAX_FAULTS")
    assert train_and_evaluate(c, tmp_path / "run")["eval/loss"] == \
        pytest.approx(train_and_evaluate(c, tmp_path / "full")["eval/loss"], abs=0)


def test_the_cli_reports_a_full_disk_in_one_line(tmp_path):
    """What a user sees: one line naming the intact checkpoint, no traceback (a diverged run's
    NonFiniteLossError takes the same path: tests/test_cli.py checks the triage)."""
    c = fault_config(**{"async_checkpointing": False})
    out = _train_subprocess(c, tmp_path / "run", "disk_full_at_step=8")
    assert out.returncode == 2, out.stderr[-2000:]
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("llmjax: error: could not write the checkpoint of step 8"), last
    assert "the last complete checkpoint is step 4, and it is intact" in last
    assert "Traceback" not in out.stderr

