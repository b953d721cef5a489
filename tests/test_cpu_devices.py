"""`parallel.cpu_devices`: the `llmjax` command splits a CPU into JAX devices before JAX starts
and trains data-parallel over them, exactly as one device trains, evaluation included."""

import pytest
from conftest import tiny_config, write_config_file
from test_cli import llmjax_cli

from llmjax.train.loop import train_and_evaluate
from llmjax.train.writer import read_metrics


def metrics(workdir, key: str) -> dict[int, float]:
    return {r["step"]: r[key] for r in read_metrics(workdir) if key in r}


# Both slow (20 s and 28 s) for the default suite's time: pmap over 8 fake devices runs by
# default in test_train, meshes and the flat all-reduce in test_mesh; the two-device eval
# wait (a hang on XLA:CPU's in-process all-reduce) is guarded here only
@pytest.mark.slow
@pytest.mark.parametrize("mode", ["mesh", "pmap"])
def test_two_cpu_devices_train_and_evaluate_as_one_device(tmp_path, mode):
    # ~200 eval batches queued at once: XLA:CPU's in-process all-reduce on two devices hung
    # in most such runs (it is a race) until each eval step was made to wait for the one before
    config = tiny_config(**{"num_train_steps": 6, "log_every_steps": 1, "eval_every_steps": 3,
                            "checkpoint_every_steps": 6, "batch_size": 12, "seq_len": 64,
                            "data.generated.eval_documents": 1500})
    train_and_evaluate(config, tmp_path / "one")
    config.parallel.mode, config.parallel.cpu_devices = mode, 2
    config_file = write_config_file(config, tmp_path / "config.py")
    out = llmjax_cli("train", f"--config={config_file}", f"--workdir={tmp_path / 'two'}")
    described = {"mesh": "parallel: mesh data 2 x fsdp 1 x tensor 1 over 2 cpu device(s): the "
                         "step on each batch shard, gradients summed in one flat all-reduce",
                 "pmap": "parallel: pmap over 2 cpu device(s): gradients summed in one flat "
                         "all-reduce"}
    assert described[mode] in out.stderr
    for key in ("train/loss", "eval/loss", "eval/token_accuracy"):
        one, two = metrics(tmp_path / "one", key), metrics(tmp_path / "two", key)
        assert sorted(two) == sorted(one) and len(one) >= 2, key
        for step in one:
            assert two[step] == pytest.approx(one[step], abs=1e-5), (key, step)
