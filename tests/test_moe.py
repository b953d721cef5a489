"""Mixture-of-experts feed-forward layers (models/moe.py): each token through its top-k experts
as a per-token loop computes it, GShard's capacity (second choices dropped first), the router
statistics and the losses they add to the gradient, equal losses on meshes, pmap and the
memory levers, active-parameter FLOPs, and a whole run."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import tiny_config
from flax import nnx

import llmjax
from llmjax import validation
from llmjax.configs import ConfigError
from llmjax.models import ModelConfig, moe
from llmjax.objectives.base import Regularizers
from llmjax.train import flops, optim
from llmjax.train import state as state_lib
from llmjax.train import step as step_lib

E, K, D, F = 4, 2, 8, 12


def layer(**kw) -> moe.MoEFeedForward:
    cfg = ModelConfig(**{"vocab_size": 10, "emb_dim": D, "mlp_dim": F, "num_heads": 2,
                         "head_dim": 4, "num_experts": E, "num_experts_per_token": K, **kw})
    return moe.MoEFeedForward(cfg, rngs=nnx.Rngs(0))


def per_token_reference(m: moe.MoEFeedForward, x: np.ndarray, keep=lambda t, rank: True
                        ) -> np.ndarray:
    """Each token through its top-k experts one at a time, in float64; `keep(t, rank)`: whether
    token t's rank-th choice is taken (capacity)."""
    cfg = m.cfg
    ex = m.experts
    get = lambda v: None if v is None else np.asarray(v[...], np.float64)  # noqa: E731
    wi, wo = get(ex.wi.kernel), get(ex.wo.kernel)
    wg = None if ex.wg is None else get(ex.wg.kernel)
    bi, bo = get(ex.wi.bias), get(ex.wo.bias)
    act = {"silu": lambda h: h / (1 + np.exp(-h)), "relu": lambda h: np.maximum(h, 0)}[
        cfg.activation]
    out = np.zeros(x.shape)
    if m.shared is not None:  # + [sigmoid(x . gate) x] the shared expert (Qwen2-MoE, DeepSeek)
        s = m.shared
        h = act(x @ get(s.wi.kernel)) * (x @ get(s.wg.kernel))
        gate = (1 if m.shared_gate is None
                else 1 / (1 + np.exp(-(x @ get(m.shared_gate.kernel)))))
        out += gate * (h @ get(s.wo.kernel))
    bias = 0 if m.router_bias is None else get(m.router_bias)
    for b, t in np.ndindex(x.shape[:2]):
        logits = x[b, t] @ np.asarray(m.router[...], np.float64)
        if cfg.moe_router == "sigmoid":  # DeepSeek-V3
            p = 1 / (1 + np.exp(-logits))
        else:
            p = np.exp(logits - logits.max())
            p /= p.sum()
        choice = p + bias
        if cfg.moe_groups:  # DeepSeek: only the best groups' experts compete
            grouped = choice.reshape(cfg.moe_groups, -1)
            score = (np.sort(grouped, -1)[:, -2:].sum(-1) if cfg.moe_router == "sigmoid"
                     else grouped.max(-1))
            lost = np.argsort(-score)[cfg.moe_group_top_k:]
            grouped = grouped.copy()
            grouped[lost] = -np.inf
            choice = grouped.reshape(-1)
        top = np.argsort(-choice)[:K]
        weights = p[top] / p[top].sum() if cfg.moe_normalize_top_k else p[top]
        weights = weights * cfg.moe_routed_scale
        for rank, (j, w) in enumerate(zip(top, weights, strict=True)):
            if not keep(t, rank):
                continue
            h = x[b, t] @ wi[j] + (0 if bi is None else bi[j])
            h = act(h) * (1 if wg is None else x[b, t] @ wg[j])
            out[b, t] += w * (h @ wo[j] + (0 if bo is None else bo[j]))
    return out


@pytest.mark.parametrize("kw", [
    dict(gated_mlp=True, activation="silu", use_bias=False),  # Mixtral's experts
    dict(gated_mlp=False, activation="relu", use_bias=True, moe_normalize_top_k=False),
    dict(gated_mlp=True, activation="silu", use_bias=False, moe_shared_mlp_dim=6),  # Qwen2-MoE
    # DeepSeek-V3: sigmoid scores chosen through a bias among the best group (by its best
    # two), rescaled and scaled; an ungated shared expert; experts narrower than mlp_dim
    dict(gated_mlp=True, activation="silu", use_bias=False, moe_shared_mlp_dim=6,
         moe_shared_gated=False, moe_router="sigmoid", moe_router_bias=True, moe_groups=2,
         moe_group_top_k=1, moe_routed_scale=2.5, moe_mlp_dim=5),
    # DeepSeek-V2: softmax, groups scored by their best expert, weights scaled, not rescaled
    dict(gated_mlp=True, activation="silu", use_bias=False, moe_shared_mlp_dim=6,
         moe_shared_gated=False, moe_groups=2, moe_group_top_k=1, moe_routed_scale=1.5,
         moe_normalize_top_k=False),
])
def test_each_token_goes_through_its_top_k_experts_weighted_by_the_router(kw):
    """Evaluation (no dropout key) is dropless whatever the capacity factor."""
    m = layer(moe_capacity_factor=0.25, **kw)
    if m.router_bias is not None:  # a bias large enough to change choices
        m.router_bias[...] = 0.5 * jax.random.normal(jax.random.key(5), (E,))
    if m.experts.wi.bias is not None:  # biases start at zero: make a mapping error show
        m.experts.wi.bias[...] = jax.random.normal(jax.random.key(3), (E, F))
        m.experts.wo.bias[...] = jax.random.normal(jax.random.key(4), (E, D))
    x = np.asarray(jax.random.normal(jax.random.key(1), (3, 7, D)))
    np.testing.assert_allclose(m(jnp.asarray(x)), per_token_reference(m, x), atol=1e-5)
    assert moe.take_router_stats(m) is None  # nothing recorded outside training


def routed(first: list[int], second: list[int]) -> tuple[moe.MoEFeedForward, jax.Array]:
    """A layer and one row of tokens whose first and second choices are as given."""
    m = layer(moe_capacity_factor=1.0, gated_mlp=True, activation="silu", use_bias=False)
    router = np.zeros((D, E), np.float32)
    x = np.zeros((1, len(first), D), np.float32)
    for t, (a, b) in enumerate(zip(first, second, strict=True)):
        x[0, t, t % D] = 1.0  # token t reads router row t
        router[t % D, a], router[t % D, b] = 3.0, 2.0
    m.router[...] = jnp.asarray(router)
    for dense in (m.experts.wi, m.experts.wg, m.experts.wo):  # outputs of order 1
        dense.kernel[...] = dense.kernel[...] * 30
    return m, jnp.asarray(x + 0.01 * np.random.RandomState(0).randn(*x.shape))


def test_capacity_keeps_every_first_choice_before_any_second_choice():
    """8 tokens, top-2 of 4 experts, capacity factor 1: 4 slots per expert. Tokens 0-3 choose
    experts (0, 1), tokens 4-7 (1, 0): the first choices fill both experts, so every second
    choice is dropped (token order alone would drop tokens 4-7's first choices instead)."""
    m, x = routed([0, 0, 0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0, 0, 0])
    assert moe.capacity(m.cfg, 8, train=True) == 4
    trained = m(x, rng=jax.random.key(0))
    firsts = per_token_reference(m, np.asarray(x), keep=lambda t, rank: rank == 0)
    np.testing.assert_allclose(trained, firsts, atol=1e-5)
    assert not np.allclose(m(x), firsts, atol=1e-4)  # dropless: both choices
    stats = moe.router_metrics(moe.take_router_stats(m))
    assert float(stats["moe_dropped"]) == pytest.approx(0.5)


def test_tokens_over_capacity_skip_the_expert_in_token_order():
    """All 8 tokens choose experts 0 then 1: each expert takes the first 4 tokens; tokens 4-7
    pass through the residual alone (the layer adds nothing for them)."""
    m, x = routed([0] * 8, [1] * 8)
    trained = np.asarray(m(x, rng=jax.random.key(0)))
    np.testing.assert_allclose(
        trained, per_token_reference(m, np.asarray(x), keep=lambda t, rank: t < 4), atol=1e-5)
    np.testing.assert_array_equal(trained[0, 4:], 0.0)
    stats = moe.router_metrics(moe.take_router_stats(m))
    assert float(stats["moe_max_load"]) == pytest.approx(E * 0.5)  # half the choices: expert 0


def test_padding_takes_no_capacity_and_no_share_of_the_statistics():
    """Tokens 0-3 choose experts 1 then 0, padding tokens 4-7 expert 0 first: counted, the
    padding's first choices would fill expert 0 (capacity 4) before the real tokens' second
    choices; marked as padding, every real choice is kept and the statistics are the real
    tokens' alone (each a block's input in a padded batch: blocks pass the mask's rows)."""
    m, x = routed([1] * 4 + [0] * 4, [0] * 8)
    valid = jnp.asarray([[True] * 4 + [False] * 4])
    train = nnx.jit(lambda m, x, valid: m(x, rng=jax.random.key(0), valid_BxL=valid))
    counted = np.asarray(train(m, x, jnp.ones_like(valid)))
    moe.take_router_stats(m)
    reference = per_token_reference(m, np.asarray(x))
    assert np.abs(counted[0, :4] - reference[0, :4]).max() > 1e-2  # second choices dropped
    masked = np.asarray(train(m, x, valid))
    np.testing.assert_allclose(masked[0, :4], reference[0, :4], atol=1e-5)
    stats = moe.router_metrics(moe.take_router_stats(m))
    train(m, x[:, :4], valid[:, :4])  # the real tokens alone (half the capacity)
    alone = moe.router_metrics(moe.take_router_stats(m))
    for name in ("moe_balance_loss", "moe_z_loss", "moe_max_load"):
        assert float(stats[name]) == pytest.approx(float(alone[name]), rel=1e-5), name
    assert float(stats["moe_dropped"]) == 0.0


def test_router_statistics_are_switch_balance_and_st_moe_z_loss():
    m = layer(moe_capacity_factor=0.0)
    x = jax.random.normal(jax.random.key(2), (2, 9, D))
    train = nnx.jit(lambda m, x, rng: m(x, rng=rng))  # keeps what the call records
    train(m, x, jax.random.key(0))
    train(m, x[:, :5], jax.random.key(1))  # a second call adds to the first
    stats = moe.take_router_stats(m)
    assert moe.take_router_stats(m) is None  # taken: gone from the layer
    expected = np.zeros(6)
    for xs in (x, x[:, :5]):
        logits = np.asarray(xs, np.float64) @ np.asarray(m.router[...], np.float64)
        p = np.exp(logits - logits.max(-1, keepdims=True))
        p /= p.sum(-1, keepdims=True)
        chosen = np.argsort(-p, axis=-1)[..., :K]
        f = np.bincount(chosen.ravel(), minlength=E) / chosen.size
        lse = np.log(np.exp(logits).sum(-1))
        expected += [E * (f * p.mean((0, 1))).sum(), (lse ** 2).mean(), E * f.max(), 0.0, 0.0,
                     1.0]
    np.testing.assert_allclose(stats, expected, rtol=1e-5)
    assert abs(expected[0] / 2 - 1.0) < 0.2  # near 1: a random router is nearly balanced


def setup_run(**overrides):
    c = tiny_config(**{"model.num_experts": E, "model.mlp_dim": 32, "model.num_layers": 1,
                       **overrides})
    c.model.vocab_size = 20
    graphdef, params = nnx.split(state_lib.build_model(c))
    rng = np.random.RandomState(0)
    tokens = rng.randint(1, 20, (4, 17)).astype(np.int32)
    batch = {"inputs": tokens[:, :-1], "targets": tokens[:, 1:],
             "segment_ids": np.ones((4, 16), np.int32), "weights": np.ones((4, 16), np.float32)}
    from llmjax.objectives import get_objective

    return c, graphdef, params, get_objective("causal_lm"), batch


def test_router_losses_enter_the_gradient_with_their_weights():
    """A step's gradient with router-loss weights (a, b) minus the one without = the gradient
    of a x balance + b x z-loss; the reported train loss stays the cross-entropy."""
    c, graphdef, params, objective, batch = setup_run()
    state = state_lib.init_state(params, optax.sgd(1.0), 0)

    def step(a, b):
        fn = step_lib.make_train_step(graphdef, objective, optax.sgd(1.0),
                                      optax.constant_schedule(1.0),
                                      regularizers=Regularizers(0.0, 0.0, a, b))
        new, metrics = jax.jit(fn)(state, batch)
        return jax.tree.map(lambda p, q: p - q, params, new["params"]), metrics  # = grads

    def router_losses(p):  # [balance, z-loss] of the step's forward pass
        model = nnx.merge(graphdef, p)
        objective.loss(model, batch, jax.random.key(0))
        stats = moe.router_metrics(moe.take_router_stats(model))
        return jnp.stack([stats["moe_balance_loss"], stats["moe_z_loss"]])

    plain, metrics = step(0.0, 0.0)
    assert set(metrics) >= {"moe_balance_loss", "moe_z_loss", "moe_max_load", "moe_dropped"}
    a, b = 0.5, 0.25
    weighted, weighted_metrics = step(a, b)
    assert float(weighted_metrics["loss"]) == float(metrics["loss"])
    jacobian = jax.jit(jax.jacrev(router_losses))(params)  # each leaf [2, ...]
    for i, name in enumerate(("balance", "z-loss")):  # each moves the router
        router = jacobian["layers"][0]["mlp"]["router"][...][i]
        assert float(jnp.abs(router).max()) > 1e-4, name
    expected = jax.tree.map(lambda g: a * g[0] + b * g[1], jacobian)
    difference = jax.tree.map(lambda w, p: w - p, weighted, plain)
    for got, want in zip(jax.tree.leaves(difference), jax.tree.leaves(expected), strict=True):
        np.testing.assert_allclose(got, want, atol=2e-6)


def test_router_biases_step_against_each_experts_excess_load():
    """DeepSeek-V3's balancing: after a step each expert's bias has moved by the rate, down
    where the expert took more than its share (1 / E) of the batch's choices, up where fewer;
    the loss, its gradient norm and every other parameter's update are as without it."""
    overrides = {"model.moe_router": "sigmoid", "model.moe_router_bias": True}
    c, graphdef, params, objective, batch = setup_run(**overrides)
    rate = 0.01
    bias = params["layers"][0]["mlp"]["router_bias"]
    bias[...] = jnp.asarray([0.03, -0.02, 0.01, 0.0])  # steers the choice
    tx, schedule = optim.make_optimizer(c.optimizer, c.num_train_steps, router_bias_rate=rate)
    plain_tx, _ = optim.make_optimizer(c.optimizer, c.num_train_steps)

    def step(tx, update):
        fn = step_lib.make_train_step(graphdef, objective, tx, schedule,
                                      regularizers=Regularizers(moe_bias_update=update))
        return jax.jit(fn)(state_lib.init_state(params, tx, 0), batch)

    (new, metrics), (plain, plain_metrics) = step(tx, True), step(plain_tx, False)
    # the choices of the (one) router on the step's own inputs, captured while tracing
    original = moe.MoEFeedForward.route

    def chosen_experts(p):
        captured = []

        def spy(self, h):
            out = original(self, h)
            captured.append(out[3])
            return out

        moe.MoEFeedForward.route = spy
        try:
            objective.loss(nnx.merge(graphdef, p), batch, jax.random.key(0))
        finally:
            moe.MoEFeedForward.route = original
        return captured[0]

    chosen = np.asarray(jax.jit(chosen_experts)(params)).ravel()
    load = np.bincount(chosen, minlength=E) / chosen.size
    moved = np.asarray(new["params"]["layers"][0]["mlp"]["router_bias"][...]) - np.asarray(
        bias[...])
    np.testing.assert_allclose(moved, -rate * np.sign(load - 1 / E), atol=1e-7)
    assert float(metrics["loss"]) == float(plain_metrics["loss"])
    assert float(metrics["grad_norm"]) == pytest.approx(float(plain_metrics["grad_norm"]))
    np.testing.assert_array_equal(plain["params"]["layers"][0]["mlp"]["router_bias"][...],
                                  bias[...])  # without the rule: fixed (a zero gradient)
    for got, want in zip(jax.tree.leaves(new["params"]["layers"][0]["mlp"]["router"]),
                         jax.tree.leaves(plain["params"]["layers"][0]["mlp"]["router"]),
                         strict=True):
        np.testing.assert_allclose(got, want, atol=1e-7)


@pytest.mark.slow  # 9-12 s each
@pytest.mark.parametrize("levers", [{"model.remat": "full"},
                                    {"model.scan_layers": True, "model.remat": "dots"}])
def test_remat_and_scanned_layers_record_the_same_router_statistics(levers):
    def metrics(**kw):
        c, graphdef, params, objective, batch = setup_run(**kw)
        tx, schedule = optim.make_optimizer(c.optimizer, c.num_train_steps)
        fn = jax.jit(step_lib.make_train_step(graphdef, objective, tx, schedule,
                                              regularizers=Regularizers(0, 0, 0.01, 0.001)))
        _, out = fn(state_lib.init_state(params, tx, 0), batch)
        return {k: float(v) for k, v in out.items()}

    plain, levered = metrics(), metrics(**levers)
    assert set(plain) == set(levered)
    for name in plain:
        assert levered[name] == pytest.approx(plain[name], rel=1e-5, abs=1e-6), name


@pytest.mark.slow
def test_pmap_and_meshes_give_one_devices_losses(tmp_path):
    """Capacity applies per row, so a device's rows route as they would on one device; on a
    mesh whose fsdp axis holds whole experts the tokens travel to them by all-to-all."""
    from test_mesh import family_setup, run_steps

    c, objective, batches = family_setup(tmp_path, "decoder", **{"model.num_experts": E,
                                                                  "model.moe_capacity_factor": 1.0})
    single, _, _ = run_steps(c, objective, batches, "single")
    for mode, mesh in (("pmap", None), ("mesh", (1, 2, 2, 2)), ("mesh", (1, 4, 1, 2))):
        losses, state, parallel = run_steps(c, objective, batches, mode, mesh)
        np.testing.assert_allclose(losses, single, atol=1e-5, err_msg=f"{mode} {mesh}")
    hlo = parallel._train.lower(state, parallel.shard_batch(batches[0])).compile().as_text()
    assert "all-to-all" in hlo


@pytest.mark.parametrize("mesh, experts, expected", [
    ((2, 4, 1, 1), 4, ("fsdp", None, None)),  # one whole expert per fsdp device
    ((1, 4, 1, 2), 8, ("fsdp", None, "tensor")),  # two each, hidden units split over tensor
    ((1, 4, 1, 2), 6, (None, "fsdp", "tensor")),  # 4 does not divide 6: as a dense layer
])
def test_the_fsdp_axis_holds_whole_experts_where_it_divides_them(mesh, experts, expected):
    from jax.sharding import PartitionSpec

    from llmjax import sharding

    devices = sharding.make_mesh(dict(zip(sharding.MESH_AXES, mesh, strict=True)))
    axes = sharding.param_logical_axes("layers/0/mlp/experts/wi/kernel", 3)
    assert sharding.spec(axes, (experts, 32, 64), devices) == PartitionSpec(*expected)


def test_flops_count_the_active_experts():
    """Top-2 of 4 experts of width F cost what a dense layer of width 2F does, plus the
    router (D x E per token)."""
    def count(**kw):
        c = tiny_config(**kw)
        c.model.vocab_size = 20
        cfg = ModelConfig.from_config(c.model)
        params = nnx.state(state_lib.build_model(c), nnx.Param)
        return flops.flops_per_example(cfg, params.to_pure_dict(), 32)

    mixture = count(**{"model.num_experts": 4, "model.mlp_dim": 16, "model.use_bias": False})
    dense = count(**{"model.mlp_dim": 32, "model.use_bias": False})
    assert mixture - dense == pytest.approx(6 * 2 * 32 * 4 * 32)  # 6 x layers x D x E x L
    c = tiny_config(**{"model.num_experts": 4, "model.mlp_dim": 16, "model.use_bias": False,
                       "model.vocab_size": 20})
    params = nnx.state(state_lib.build_model(c), nnx.Param)
    experts = 2 * 4 * (2 * 32 * 16)  # layers x E x (wi + wo); half of them unchosen
    cfg = ModelConfig.from_config(c.model)
    assert state_lib.count_active_params(params, cfg) == state_lib.count_params(params) - \
        experts // 2


def test_expert_kernels_shard_and_orthogonalise_one_expert_at_a_time():
    from llmjax import sharding

    assert sharding.param_logical_axes("layers/0/mlp/experts/wi/kernel", 3) == (
        "expert", "embed", "mlp")
    assert sharding.param_logical_axes("layers/0/mlp/experts/wo/kernel", 3) == (
        "expert", "mlp", "embed")
    assert sharding.param_logical_axes("layers/0/mlp/router", 2) == ("embed", None)
    dims = optim.muon_dimensions("layers/0/mlp/experts/wg/kernel", 3)
    assert (dims.reduction_axis, dims.output_axis) == (1, 2)
    assert optim.muon_dimensions("layers/0/mlp/router", 2) is None  # AdamW's, as heads are
    assert optim.muon_dimensions("layers/0/mlp/shared/wo/kernel", 2) == (0, 1)  # a dense MLP's
    assert optim.muon_dimensions("layers/0/mlp/shared_gate/kernel", 2) is None


@pytest.mark.parametrize("overrides, message", [
    ({"model.num_experts": 4, "model.num_experts_per_token": 5}, "choose at most num_experts"),
    ({"model.num_experts": 1}, "use 0 \\(dense\\) or at least 2"),
    ({"model.num_experts": 4, "model.moe_every": 2, "model.scan_layers": True},
     "set model.moe_every=1 or model.scan_layers=False"),
    ({"model.num_experts": 4, "model.moe_capacity_factor": -1.0},
     "model.moe_capacity_factor"),
])
def test_bad_mixture_settings_say_what_to_change(overrides, message):
    with pytest.raises(ConfigError, match=message):
        validation.validate(tiny_config(**overrides))


def test_a_mixture_run_trains_reports_router_metrics_and_generates(tmp_path):
    from llmjax.train.loop import train_and_evaluate

    c = tiny_config(**{"model.num_experts": E, "model.moe_every": 2,
                       "model.position_embedding": "rotary", "num_train_steps": 30,
                       "eval_every_steps": 30, "checkpoint_every_steps": 30})
    train_and_evaluate(c, tmp_path / "run")
    rows = [json.loads(line) for line in (tmp_path / "run/metrics.jsonl").read_text().split("\n")
            if line]
    train = [r for r in rows if "train/loss" in r]
    for name in ("moe_balance_loss", "moe_z_loss", "moe_max_load", "moe_dropped"):
        assert all(np.isfinite(r[f"train/{name}"]) for r in train), name
    assert all(0.9 < r["train/moe_balance_loss"] < 2.0 for r in train)
    assert train[-1]["train/loss"] < train[0]["train/loss"] - 0.15
    evals = [r for r in rows if "eval/loss" in r]
    assert not any(k.startswith("eval/moe") for k in evals[-1])  # eval: dropless, no losses
    run = llmjax.load(tmp_path / "run")
    state = nnx.state(run.model)
    assert "router" not in state["layers"][0]["mlp"]  # layer 0 dense, layer 1 a mixture
    assert state["layers"][1]["mlp"]["experts"]["wi"]["kernel"][...].shape == (E, 32, 64)
    assert isinstance(run.generate("ab", max_new_tokens=5, temperature=0.0), str)


@pytest.mark.slow  # the rule: test_router_biases_step_against_each_experts_excess_load
def test_a_deepseek_v3_routed_run_balances_through_its_router_biases(tmp_path):
    """The first block dense, sigmoid routing among the best of 2 groups, an ungated shared
    expert, narrower experts: each bias ends a whole number of update steps from 0, and the
    run generates."""
    from llmjax.train.loop import train_and_evaluate

    rate = 0.002
    c = tiny_config(**{"model.num_experts": E, "model.moe_first_dense": 1,
                       "model.moe_router": "sigmoid", "model.moe_router_bias": True,
                       "model.moe_bias_update_rate": rate, "model.moe_groups": 2,
                       "model.moe_group_top_k": 1, "model.moe_shared_mlp_dim": 16,
                       "model.moe_shared_gated": False, "model.moe_mlp_dim": 24,
                       "model.moe_routed_scale": 2.0, "model.position_embedding": "rotary",
                       "num_train_steps": 20, "eval_every_steps": 20,
                       "checkpoint_every_steps": 10})
    train_and_evaluate(c, tmp_path / "run")
    run = llmjax.load(tmp_path / "run")
    assert isinstance(run.generate("ab", max_new_tokens=5, temperature=0.0), str)
    state = nnx.state(run.model)
    assert "router" not in state["layers"][0]["mlp"]  # dense
    mlp = state["layers"][1]["mlp"]
    assert mlp["experts"]["wi"]["kernel"][...].shape == (E, 32, 24)
    assert "shared_gate" not in mlp
    steps = np.asarray(mlp["router_bias"][...]) / rate
    np.testing.assert_allclose(steps, np.round(steps), atol=1e-3)
    assert 1 <= np.abs(steps).max() <= 20  # at most one step per training step
    rows = [json.loads(line) for line in (tmp_path / "run/metrics.jsonl").read_text().split("\n")
            if line]
    assert all(0.5 < r["train/moe_balance_loss"] < 2.0 for r in rows if "train/loss" in r)


def test_a_padded_batchs_router_statistics_are_its_real_tokens():
    """Through a decoder's blocks: right padding (segment 0) changes no router statistic."""
    from llmjax.models import Decoder

    cfg = ModelConfig(vocab_size=20, num_layers=2, num_heads=2, head_dim=8, emb_dim=16,
                      mlp_dim=32, num_experts=E, moe_capacity_factor=0.0)
    model = Decoder(cfg, rngs=nnx.Rngs(0))
    tokens = jnp.asarray(np.random.RandomState(0).randint(1, 20, (2, 7)), jnp.int32)
    forward = nnx.jit(lambda m, t, s: m(t, segment_ids=s, rng=jax.random.key(0)))

    def metrics(t, s):
        forward(model, t, s)
        return moe.router_metrics(moe.take_router_stats(model))

    plain = metrics(tokens, jnp.ones_like(tokens))
    padded = metrics(jnp.pad(tokens, ((0, 0), (0, 5))),
                     jnp.pad(jnp.ones_like(tokens), ((0, 0), (0, 5))))
    for name in plain:
        assert float(padded[name]) == pytest.approx(float(plain[name]), rel=1e-5), name
