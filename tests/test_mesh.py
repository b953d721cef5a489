"""Mesh sharding on 8 fake CPU devices: pmap and (data, fsdp, sequence, tensor) meshes give one
device's losses for each model family, parameters, optimizer state and a long sequence's
activations are really split, and a checkpoint written on one mesh restores bit-identically on
another mesh and on one device."""

import re

import jax
import numpy as np
import pytest
from conftest import tiny_config
from flax import nnx

from llmjax import configs, sharding
from llmjax.objectives import get_objective
from llmjax.train import checkpoint, optim
from llmjax.train import state as state_lib
from llmjax.train.loop import _prepare_data
from llmjax.train.parallel import Parallel

FAMILIES = {
    "decoder": {},
    "encoder": {"model.arch": "encoder", "objective": "mlm", "model.norm_position": "post"},
    "encoder_decoder": {"model.arch": "encoder_decoder", "objective": "seq2seq",
                        "data.source": "generated:reverse", "target_seq_len": 16,
                        "seq_len": 16, "model.position_embedding": "relative"},
}
# (data, fsdp, sequence, tensor), as sharding.MESH_AXES
MESHES = {"8x1x1x1": (8, 1, 1, 1), "2x4x1x1": (2, 4, 1, 1), "1x2x2x2": (1, 2, 2, 2)}


def set_mesh(c, mesh: tuple[int, ...]) -> None:
    for axis, size in zip(sharding.MESH_AXES, mesh, strict=True):
        c.parallel.mesh[axis] = size


def family_setup(tmp_path, family: str, **extra):
    """(config, objective, three training batches) for a tiny model of `family`."""
    c = tiny_config(**{"batch_size": 8, "model.mlp_dim": 64, **FAMILIES[family], **extra})
    c = configs.ml_collections.ConfigDict(c.to_dict(), type_safe=True)
    objective = get_objective(c.objective)
    _, train_iter, _ = _prepare_data(c, tmp_path / family, objective)
    return c, objective, [next(train_iter) for _ in range(3)]


def run_steps(c, objective, batches, mode, mesh=None, compiler_options=None,
              gradient_allreduce="auto"):
    """(losses of three steps, final device state, Parallel) under `mode`."""
    c = configs.ml_collections.ConfigDict(c.to_dict())
    if mesh:
        set_mesh(c, mesh)
    graphdef, params = nnx.split(state_lib.build_model(c))
    tx, schedule = optim.make_optimizer(c.optimizer, c.num_train_steps)
    host_state = state_lib.init_state(params, tx, c.seed)
    abstract = jax.eval_shape(lambda: host_state)
    parallel = Parallel(mode, graphdef, objective, tx, schedule, mesh_sizes=c.parallel.mesh,
                        abstract_state=abstract, compiler_options=compiler_options,
                        gradient_allreduce=gradient_allreduce)
    state = parallel.to_device(host_state)
    losses = []
    for batch in batches:
        state, metrics = parallel.train_step(state, batch)
        losses.append(float(jax.device_get(parallel.unreplicate_metrics(metrics))["loss"]))
    return losses, state, parallel


@pytest.mark.parametrize("family", [
    "decoder", pytest.param("encoder", marks=pytest.mark.slow),
    pytest.param("encoder_decoder", marks=pytest.mark.slow)])
def test_pmap_and_meshes_give_one_devices_losses(tmp_path, family):
    c, objective, batches = family_setup(tmp_path, family)
    single, _, _ = run_steps(c, objective, batches, "single")
    assert len(set(single)) == 3  # training moves: three different losses
    if family != "decoder":  # the decoder's: test_data_parallel_sums_gradients_in_one_...
        pmap, _, _ = run_steps(c, objective, batches, "pmap")
        np.testing.assert_allclose(pmap, single, atol=1e-5)
    for name, mesh in MESHES.items():
        losses, state, _ = run_steps(c, objective, batches, "mesh", mesh)
        np.testing.assert_allclose(losses, single, atol=1e-5, err_msg=f"mesh {name}")


def all_reduced_arrays(parallel, state, batch) -> list[int]:
    """For each all-reduce of the compiled train step, how many arrays it sums (XLA combines
    all-reduces into one of several arrays, but XLA:CPU's runtime still exchanges them one
    array at a time)."""
    hlo = parallel._train.lower(state, parallel.shard_batch(batch)).compile().as_text()
    results = re.findall(r"= (.*?) all-reduce(?:-start)?\(", hlo)
    return [len(re.findall(r"[a-z]+[0-9]*\[[0-9,]*\]", result)) for result in results]


# flat is what `auto` picks on CPU, so test_pmap_and_meshes_give_one_devices_losses runs it
@pytest.mark.parametrize("allreduce", [pytest.param("flat", marks=pytest.mark.slow),
                                       "per_array"])
def test_data_parallel_sums_gradients_in_one_all_reduce_or_one_per_array(tmp_path, allreduce):
    """pmap and a data-only mesh give one device's losses and eval sums with either way of
    summing gradients. flat: one array all-reduced for the loss weights before the forward pass
    and one holding every gradient and metric sum (the mesh's step then runs per batch shard
    under shard_map); per_array: every gradient array on its own."""
    c, objective, batches = family_setup(tmp_path, "decoder")
    single, single_state, single_parallel = run_steps(c, objective, batches, "single")
    expected_sums = single_parallel.eval_step(single_state["params"], batches[0])
    num_arrays = len(jax.tree.leaves(single_state["params"]))
    for mode, mesh in [("pmap", None), ("mesh", (8, 1, 1, 1))]:
        losses, state, parallel = run_steps(c, objective, batches, mode, mesh,
                                            gradient_allreduce=allreduce)
        np.testing.assert_allclose(losses, single, atol=1e-5, err_msg=mode)
        sums = parallel.unreplicate_metrics(parallel.eval_step(parallel.params(state),
                                                               batches[0]))
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5), sums,
                     expected_sums)
        arrays = all_reduced_arrays(parallel, state, batches[0])
        if allreduce == "flat":
            assert arrays == [1, 1], (mode, arrays)
            assert mode == "pmap" or parallel.per_shard
        else:
            assert sum(arrays) > num_arrays, (mode, arrays)


LAYOUTS = {  # decoder layouts whose sublayers or norms span heads or sublayers together
    "gpt_neox": {"model.position_embedding": "rotary", "model.rotary_fraction": 0.5,
                 "model.parallel_residual": True},
    "phi": {"model.position_embedding": "rotary", "model.parallel_residual": True,
            "model.parallel_shared_norm": True, "model.tie_embeddings": False,
            "model.lm_head_bias": True},
    "olmo2": {"model.position_embedding": "rotary", "model.norm": "rmsnorm",
              "model.norm_position": "output", "model.qk_norm": True,
              "model.qk_norm_scope": "all", "model.num_heads": 4, "model.num_kv_heads": 2},
}


@pytest.mark.slow
@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_decoder_layouts_on_a_tensor_parallel_mesh(tmp_path, layout):
    """GPT-NeoX's partial rotary and parallel blocks, Phi's shared norm and output bias, OLMo
    2's output norms and QK-norm over all heads (heads split over the tensor axis): a (2, 2, 2)
    mesh gives one device's losses."""
    c, objective, batches = family_setup(tmp_path, "decoder", **LAYOUTS[layout])
    single, _, _ = run_steps(c, objective, batches, "single")
    losses, _, _ = run_steps(c, objective, batches, "mesh", (2, 2, 1, 2))
    np.testing.assert_allclose(losses, single, atol=1e-5)


def test_grouped_query_attention_on_a_tensor_parallel_mesh(tmp_path):
    """Key/value heads split over the tensor axis (2 of 4 query heads' groups per device)."""
    c, objective, batches = family_setup(tmp_path, "decoder", **{
        "model.num_heads": 4, "model.num_kv_heads": 2, "model.position_embedding": "rotary"})
    single, _, _ = run_steps(c, objective, batches, "single")
    losses, state, _ = run_steps(c, objective, batches, "mesh", (2, 2, 1, 2))
    np.testing.assert_allclose(losses, single, atol=1e-5)
    kernel = state["params"]["layers"][0]["attention"]["key"]["kernel"][...]
    assert kernel.shape == (32, 2, 8)
    assert shard_shapes(kernel) == {(16, 1, 8)}  # fsdp x tensor


CONTEXT_PARALLEL = {  # grouped queries, rotary positions, sliding windows on packed documents
    "model.num_heads": 4, "model.num_kv_heads": 1, "model.position_embedding": "rotary",
    "model.attention_window": 24, "seq_len": 64}


# slow, for the suite's time budget: the default decoder trains on a sequence mesh by default
# (MESHES' (1, 2, 2, 2)), and the GQA layout's split is checked by the memory test below
@pytest.mark.parametrize("overrides", [
    pytest.param({}, marks=pytest.mark.slow),
    pytest.param({"model.position_embedding": "alibi", "model.attention_window": None},
                     marks=pytest.mark.slow),
    pytest.param({"model.kv_lora_rank": 16, "model.num_kv_heads": None},
                 marks=pytest.mark.slow)], ids=["gqa_rotary_window", "alibi", "latent"])
def test_context_parallel_meshes_give_one_devices_losses(tmp_path, overrides):
    """Each example's tokens split 8 ways over the sequence axis (queries split, keys and
    values gathered: 8 tokens per device, windows across devices) train as one device does;
    beside fsdp and tensor: MESHES."""
    c, objective, batches = family_setup(tmp_path, "decoder",
                                         **{**CONTEXT_PARALLEL, **overrides})
    single, _, _ = run_steps(c, objective, batches, "single")
    assert len(set(single)) == 3
    losses, _, _ = run_steps(c, objective, batches, "mesh", (1, 1, 8, 1))
    np.testing.assert_allclose(losses, single, atol=1e-5)


def test_context_parallelism_splits_a_long_sequences_activations_and_the_state():
    """What context parallelism is for: at 1024 tokens the attention scores dominate a step's
    temporaries, and 8 sequence devices each hold about an eighth of them (the gathered keys
    and values, and the parameters gathered for each matmul, whole). The state splits over
    the axis as over fsdp. Compiled on abstract shapes: nothing runs."""
    c = tiny_config(**{**CONTEXT_PARALLEL, "model.vocab_size": 64, "model.max_len": 1024,
                       "seq_len": 1024, "batch_size": 2})
    one, split = step_memory(c), step_memory(c, (1, 1, 8, 1))
    scores = 2 * 4 * 1024 * 1024 * 4  # one float32 [B, H, L, L]
    assert one.temp_size_in_bytes > 3 * scores
    assert split.temp_size_in_bytes < one.temp_size_in_bytes / 4, (
        split.temp_size_in_bytes, one.temp_size_in_bytes)
    batch_bytes = 4 * 2 * 1024 * 4  # whole on every device: rows split over data x fsdp only
    state = [memory.argument_size_in_bytes - batch_bytes for memory in (one, split)]
    assert state[1] < state[0] / 4, state


def step_memory(c, mesh=None):
    """XLA's memory analysis of `c`'s train step, compiled on abstract shapes (nothing runs)."""
    if mesh:
        set_mesh(c, mesh)
    graphdef, params = state_lib.abstract_model(c)
    objective = get_objective(c.objective)
    tx, schedule = optim.make_optimizer(c.optimizer, c.num_train_steps)
    abstract = jax.eval_shape(lambda p: state_lib.init_state(p, tx, 0), params)
    parallel = Parallel("mesh" if mesh else "single", graphdef, objective, tx, schedule,
                        mesh_sizes=c.parallel.mesh, abstract_state=abstract)
    rows = {"sharding": parallel.batch_sharding} if mesh else {}
    dtypes = {"inputs": np.int32, "targets": np.int32, "segment_ids": np.int32,
              "weights": np.float32}
    batch = {k: jax.ShapeDtypeStruct((c.batch_size, c.seq_len), d, **rows)
             for k, d in dtypes.items()}
    state = parallel.abstract_for_restore(abstract)
    return parallel._train.lower(state, batch).compile().memory_analysis()



def test_no_mesh_makes_gspmd_replicate_an_array_to_reshard_it(tmp_path, capfd):
    """Where GSPMD cannot move an array from one sharding to another, it gathers the whole
    array on every device and slices it ("Involuntary full rematerialization" in XLA's log):
    a table's rows gathered while it was split along D gave D-split embeddings of the whole
    global batch, which it replicated (and their gradient again in the backward pass). Embed
    gathers the table's model dimension first. Compiled afresh (a cached program is not
    partitioned again) on a mesh with every axis but data."""
    c, objective, batches = family_setup(tmp_path, "decoder")
    jax.config.update("jax_enable_compilation_cache", False)
    try:
        run_steps(c, objective, batches[:1], "mesh", (1, 2, 2, 2))
    finally:
        jax.config.update("jax_enable_compilation_cache", True)
    assert "Involuntary full rematerialization" not in capfd.readouterr().err


def shard_shapes(array) -> set[tuple]:
    return {s.data.shape for s in array.addressable_shards}


def test_parameters_and_optimizer_state_are_really_sharded(tmp_path):
    c, objective, batches = family_setup(tmp_path, "decoder")
    _, state, _ = run_steps(c, objective, batches[:1], "mesh", (2, 4, 1, 1))
    query = state["params"]["layers"][0]["attention"]["query"]["kernel"][...]
    assert query.shape == (32, 2, 16) and shard_shapes(query) == {(8, 2, 16)}  # fsdp=4 on embed
    adam_mu = state["opt_state"][1][0].mu["layers"][0]["mlp"]["wi"]["kernel"][...]
    assert shard_shapes(adam_mu) == {(8, 64)}  # optimizer state follows its parameter
    _, state, _ = run_steps(c, objective, batches[:1], "mesh", (2, 2, 1, 2))
    layer = state["params"]["layers"][0]
    assert shard_shapes(layer["attention"]["query"]["kernel"][...]) == {(16, 1, 16)}  # + heads
    assert shard_shapes(layer["mlp"]["wi"]["kernel"][...]) == {(16, 32)}  # fsdp x tensor
    assert shard_shapes(layer["mlp"]["wo"]["kernel"][...]) == {(32, 16)}
    norm = layer["attention_norm"]["scale"][...]
    assert shard_shapes(norm) == {(32,)}  # 1-D norms stay whole


def test_logical_axes_cover_every_parameter_of_every_family(tmp_path):
    """Every matrix of every family gets a rule (none falls through to replicated by accident)."""
    for family, overrides in [*FAMILIES.items(), *LAYOUTS.items()]:
        c = tiny_config(**overrides)
        c.model.vocab_size = 64
        _, params = state_lib.abstract_model(c)
        for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
            name = checkpoint.param_path_name(path)
            axes = sharding.param_logical_axes(name, len(leaf.shape))
            if len(leaf.shape) >= 2:
                assert any(a is not None for a in axes), f"{family}: {name} has no rule"


def test_checkpoint_from_one_mesh_restores_on_another_and_on_one_device(tmp_path):
    c, objective, batches = family_setup(tmp_path, "decoder")
    _, state, parallel = run_steps(c, objective, batches, "mesh", (2, 4, 1, 1))
    ckpt = checkpoint.Checkpointer(tmp_path / "run", async_save=False)
    ckpt.save(3, parallel.to_host(state), None, force=True)
    ckpt.wait()
    saved = jax.device_get(jax.tree.map(lambda x: np.asarray(x), state))
    abstract = jax.eval_shape(lambda: state)
    for mode, mesh in [("mesh", (2, 2, 1, 2)), ("mesh", (1, 2, 4, 1)), ("mesh", (1, 1, 1, 8)),
                       ("single", None)]:
        cm = configs.ml_collections.ConfigDict(c.to_dict())
        if mesh:
            set_mesh(cm, mesh)
        graphdef, _ = state_lib.abstract_model(cm)
        tx, schedule = optim.make_optimizer(cm.optimizer, cm.num_train_steps)
        other = Parallel(mode, graphdef, objective, tx, schedule, mesh_sizes=cm.parallel.mesh,
                         abstract_state=abstract)
        restored = ckpt.restore(3, other.abstract_for_restore(
            jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), abstract)))
        jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), b), restored,
                     saved)
        if mode == "mesh":
            kernel = restored["params"]["layers"][0]["mlp"]["wi"]["kernel"][...]
            assert kernel.sharding.mesh.shape == dict(zip(sharding.MESH_AXES, mesh, strict=True))
    ckpt.close()
