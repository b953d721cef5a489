"""bfloat16 compute on CPU: every matmul of the train step reaches XLA:CPU's bfloat16 kernels
(bfloat16 operands, float32 result), the hand-written matmul gradient equals autodiff's (a
float32 weight's unrounded), and
pmap and a mesh give one device's bfloat16 losses (the layout constraints shard and batch)."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import tiny_config
from flax import nnx
from test_mesh import family_setup, run_steps

from llmjax import configs
from llmjax.models import layers
from llmjax.train import optim
from llmjax.train import state as state_lib
from llmjax.train.parallel import Parallel

BF16 = {"model.dtype": "bfloat16", "model.num_heads": 4, "model.num_kv_heads": 2}


def dot_operand_types(hlo: str) -> list[tuple[str, str]]:
    """(lhs type, rhs type) of every matrix-matrix dot in an optimized HLO module's text: the
    bias gradients' ones-vector products (results [1, O], layers.add_bias) are left out."""
    types = dict(re.findall(r"%([\w.\-]+) = (\w+)\[", hlo))
    return [(types[a], types[b]) for result, a, b in re.findall(
        r"= \w+\[([\d,]*)\]\S* dot\(%([\w.\-]+), %([\w.\-]+)\)", hlo)
        if not (result.startswith("1,") and result.count(",") == 1)]


def test_every_train_step_matmul_runs_on_bfloat16_operands(tmp_path):
    # grouped-query attention and tied embeddings (the logits read the table transposed)
    c, objective, batches = family_setup(tmp_path, "decoder", **BF16)
    graphdef, params = nnx.split(state_lib.build_model(c))
    tx, schedule = optim.make_optimizer(c.optimizer, c.num_train_steps)
    parallel = Parallel("single", graphdef, objective, tx, schedule,
                        compiler_options=configs.resolve_compiler_options(c))
    state = parallel.to_device(state_lib.init_state(params, tx, 0))
    hlo = parallel._train.lower(state, parallel.shard_batch(batches[0])).compile(
        configs.resolve_compiler_options(c)).as_text()
    dots = dot_operand_types(hlo)
    # forward and both gradients of q, k, v, out, wi, wo per layer, scores and mix, logits
    assert len(dots) >= 2 * (6 * 3 + 2 * 3) + 3
    assert all(pair == ("bf16", "bf16") for pair in dots), sorted(set(dots))


def test_auto_gives_float32_runs_eigen_dots_without_avx512_and_else_xlas_defaults(monkeypatch):
    c = tiny_config()
    monkeypatch.setattr(configs, "cpu_has_avx512", lambda: False)
    assert configs.resolve_compiler_options(c) == {"xla_cpu_experimental_ynn_fusion_type": ""}
    monkeypatch.setattr(configs, "cpu_has_avx512", lambda: True)
    assert configs.resolve_compiler_options(c) == {}
    monkeypatch.setattr(configs, "cpu_has_avx512", lambda: False)
    c.model.dtype = "bfloat16"
    assert configs.resolve_compiler_options(c) == {}
    c.parallel.compiler_options = "xla_cpu_enable_fast_math=false"
    assert configs.resolve_compiler_options(c) == {"xla_cpu_enable_fast_math": False}
    assert configs.resolve_compiler_options(c, "auto") == {}


def test_batched_matmul_gradients_equal_autodiffs():
    rng = np.random.default_rng(0)
    a = jnp.asarray(rng.normal(size=(2, 3, 5, 7)), jnp.float32)
    b = jnp.asarray(rng.normal(size=(2, 3, 7, 4)), jnp.float32)
    g = jnp.asarray(rng.normal(size=(2, 3, 5, 4)), jnp.float32)

    def reference(a, b):
        return jnp.einsum("...mk,...kn->...mn", a, b)

    np.testing.assert_allclose(layers.batched_matmul(a, b), reference(a, b), rtol=1e-6)
    ours = jax.vjp(layers.batched_matmul, a, b)[1](g)
    theirs = jax.vjp(reference, a, b)[1](g)
    for x, y in zip(ours, theirs, strict=True):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-5)
    # bfloat16 operands: float32 result, gradients in the operands' dtype, autodiff's values
    # up to bfloat16 rounding of the operands and the incoming gradient
    ours = jax.vjp(layers.batched_matmul, a.astype(jnp.bfloat16), b.astype(jnp.bfloat16))[1](g)
    assert [x.dtype for x in ours] == [jnp.bfloat16, jnp.bfloat16]
    for x, y in zip(ours, theirs, strict=True):
        np.testing.assert_allclose(x.astype(jnp.float32), y, rtol=0.05, atol=0.05)
    # float32 operands cast to bfloat16 inside (a float32 weight): each gradient in its
    # operand's dtype, straight from the float32 accumulator of the bfloat16 products
    ours = jax.vjp(lambda a, b: layers.batched_matmul(a, b, jnp.bfloat16), a, b)[1](g)
    assert [x.dtype for x in ours] == [jnp.float32, jnp.float32]
    a16, b16, g16 = (np.asarray(x.astype(jnp.bfloat16), np.float64) for x in (a, b, g))
    exact = (np.einsum("...mn,...kn->...mk", g16, b16), np.einsum("...mk,...mn->...kn", a16, g16))
    for x, y in zip(ours, exact, strict=True):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-5)
        # not rounded to bfloat16 on the way (as the gradient of a cast would be)
        assert np.any(np.asarray(x) != np.asarray(x.astype(jnp.bfloat16), np.float32))


@pytest.mark.slow  # 15 s; float32's pmap and meshes run by default (test_mesh)
def test_bfloat16_pmap_and_mesh_give_one_devices_losses(tmp_path):
    c, objective, batches = family_setup(tmp_path, "decoder", **BF16)
    single, _, _ = run_steps(c, objective, batches, "single")
    assert len(set(single)) == 3
    options = configs.resolve_compiler_options(c)
    pmap, _, _ = run_steps(c, objective, batches, "pmap", compiler_options=options)
    mesh, _, _ = run_steps(c, objective, batches, "mesh", (2, 2, 1, 2), compiler_options=options)
    # bfloat16 sums in another order: within a few bfloat16 ulps of the loss (~4.2)
    np.testing.assert_allclose(pmap, single, atol=0.02)
    np.testing.assert_allclose(mesh, single, atol=0.02)


def test_bias_gradient_is_the_column_sum_of_the_gradient_the_weight_reads():
    rng = np.random.default_rng(0)
    y = jnp.asarray(rng.normal(size=(48, 24)), jnp.float32)
    bias = jnp.asarray(rng.normal(size=(24,)), jnp.float32)
    g = jnp.asarray(rng.normal(size=(48, 24)), jnp.float32)
    for dtype in (None, jnp.float32, jnp.bfloat16):
        out, vjp = jax.vjp(lambda y, b, dtype=dtype: layers.add_bias(y, b, dtype), y, bias)
        np.testing.assert_array_equal(out, y + bias)
        dy, dbias = vjp(g)
        np.testing.assert_array_equal(dy, g)  # the gradient itself passes unrounded
        assert dbias.dtype == jnp.float32
        if dtype == jnp.bfloat16:  # on CPU: the sum of g rounded to bfloat16, as x^T g reads it
            exact = np.asarray(g.astype(jnp.bfloat16), np.float64).sum(0)
            np.testing.assert_allclose(dbias, exact, rtol=1e-6, atol=1e-5)
            assert not np.allclose(dbias, np.asarray(g, np.float64).sum(0), rtol=0, atol=1e-6)
        else:
            np.testing.assert_allclose(dbias, np.asarray(g, np.float64).sum(0), rtol=1e-5)
