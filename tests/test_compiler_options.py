"""parallel.compiler_options: XLA options reach the compiled train step (its program changes),
the function it computes does not, and `train` passes them through."""

import jax
import numpy as np
import pytest
from conftest import tiny_config
from test_mesh import family_setup, run_steps

from llmjax import configs
from llmjax.train import loop
from llmjax.train.parallel import Parallel

EIGEN_DOTS = "xla_cpu_experimental_ynn_fusion_type="  # XLA:CPU dots through Eigen, not YNNPACK


def compiled_text(parallel, state, batch) -> str:
    return parallel._train.lower(state, parallel.shard_batch(batch)).compile().as_text()


def test_parse_compiler_options():
    assert configs.parse_compiler_options("") == {}
    assert configs.parse_compiler_options(
        "xla_cpu_enable_fast_math=false, xla_cpu_parallel_codegen_split_count=4,"
        "xla_cpu_experimental_ynn_fusion_type=") == {
            "xla_cpu_enable_fast_math": False, "xla_cpu_parallel_codegen_split_count": 4,
            "xla_cpu_experimental_ynn_fusion_type": ""}


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="an XLA:CPU option")
def test_option_changes_the_program_not_the_losses(tmp_path):
    c, objective, batches = family_setup(tmp_path, "decoder")
    reference, ref_state, ref_parallel = run_steps(c, objective, batches, "single")
    if "ynn_fusion" not in compiled_text(ref_parallel, ref_state, batches[0]):
        pytest.skip("this XLA:CPU build makes no YNNPACK fusions by default")
    losses, state, parallel = run_steps(c, objective, batches, "single",
                                        compiler_options=configs.parse_compiler_options(EIGEN_DOTS))
    assert "ynn_fusion" not in compiled_text(parallel, state, batches[0])
    np.testing.assert_allclose(losses, reference, rtol=1e-5)


def test_train_passes_the_options_to_the_steps(tmp_path, monkeypatch):
    seen = []

    class Recording(Parallel):
        def __init__(self, *args, compiler_options=None, **kwargs):
            seen.append(compiler_options)
            super().__init__(*args, compiler_options=compiler_options, **kwargs)

    monkeypatch.setattr(loop, "Parallel", Recording)
    c = tiny_config(**{"num_train_steps": 2, "eval_every_steps": 2, "checkpoint_every_steps": 2,
                       "parallel.compiler_options": "xla_cpu_enable_fast_math=false"})
    loop.train_and_evaluate(c, tmp_path / "run")
    assert seen == [{"xla_cpu_enable_fast_math": False}]


@pytest.mark.slow  # ~15 s of compiling for 8 devices; the single-device case runs by default
def test_pmap_compiles_with_the_options(tmp_path):
    c, objective, batches = family_setup(tmp_path, "decoder")
    reference, _, _ = run_steps(c, objective, batches, "single")
    options = configs.parse_compiler_options(EIGEN_DOTS)
    losses, _, parallel = run_steps(c, objective, batches, "pmap", compiler_options=options)
    np.testing.assert_allclose(losses, reference, atol=1e-5)
    assert parallel.num_replicas == jax.local_device_count() == 8
