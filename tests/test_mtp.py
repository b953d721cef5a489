"""Multi-token prediction (models/mtp.py, objectives/causal_lm.py): depth k reads no token past
t_{i+k+1}, its loss is the cross-entropy of the token k + 1 ahead within each document, a zero
weight leaves the main model training as without the modules, exports leave them out, and a
run fine-tunes into them from a run that had none."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import tiny_config
from flax import nnx

from llmjax import configs, validation
from llmjax.convert import hf as convert
from llmjax.models import Decoder, ModelConfig
from llmjax.objectives import get_objective
from llmjax.objectives.base import Regularizers
from llmjax.train import state as state_lib
from llmjax.train import step as step_lib


def model(**kw) -> Decoder:
    cfg = ModelConfig(**{"vocab_size": 30, "num_layers": 2, "num_heads": 2, "head_dim": 8,
                         "emb_dim": 16, "mlp_dim": 32, "max_len": 32,
                         "position_embedding": "rotary", "mtp_depth": 2, **kw})
    return Decoder(cfg, rngs=nnx.Rngs(0))


def test_depth_k_reads_no_token_past_i_plus_k_plus_1():
    m = model()
    stream = np.random.RandomState(0).randint(1, 30, (1, 13))
    states = jax.jit(lambda s: m.multi_token_states(s[:, :-1], s[:, 1:])[1])
    before = states(jnp.asarray(stream))
    changed = stream.copy()
    changed[0, 9] = (changed[0, 9] + 1) % 29 + 1  # token 9 of the stream
    after = states(jnp.asarray(changed))
    for k in range(2):  # depth k at position i reads stream[i + k + 1]: i >= 8 - k sees it
        moved = np.abs(np.asarray(after[k] - before[k]))[0].max(-1)
        assert moved[: 8 - k].max() == 0.0, k
        assert moved[8 - k] > 1e-4, k


def test_mtp_loss_is_the_cross_entropy_of_tokens_further_ahead_within_documents():
    m = model()
    rng = np.random.RandomState(1)
    seg = np.array([[1] * 7 + [2] * 6 + [0] * 3])  # two packed documents, then padding
    inputs = rng.randint(1, 30, seg.shape) * (seg > 0)
    targets = rng.randint(1, 30, seg.shape) * (seg > 0)
    weights = (seg > 0).astype(np.float32)
    weights[0, 6] = weights[0, 12] = 0.0  # each document's last target: not predicted
    batch = {"inputs": inputs, "targets": targets, "segment_ids": seg, "weights": weights}
    batch = jax.tree.map(jnp.asarray, batch)
    objective = get_objective("causal_lm")
    total, count = jax.jit(lambda b: objective.loss(m, b, None)["mtp_loss"])(batch)

    @jax.jit
    def log_probs(b):
        _, depths = m.multi_token_states(b["inputs"], b["targets"], segment_ids=b["segment_ids"])
        return [jax.nn.log_softmax(m.output_logits(h)[0]) for h in depths]

    expected, pairs = 0.0, 0
    for k, logp in enumerate(log_probs(batch), start=1):
        logp = np.asarray(logp, np.float64)
        for i in range(seg.shape[1] - k):
            if seg[0, i] == seg[0, i + k] and weights[0, i + k]:
                expected -= logp[i, targets[0, i + k]]
                pairs += 1
    assert float(count) * 2 == pairs  # counted per depth, averaged over the 2 depths
    assert float(total) == pytest.approx(expected / 2, rel=1e-5)


def test_with_weight_zero_the_main_model_trains_as_without_the_modules():
    """The modules are built last (the rest draws the same initial values); with
    mtp_loss_weight 0 the step moves the main model exactly as without them, with 0.3 it
    moves it otherwise."""
    objective = get_objective("causal_lm")

    def step(depth, weight):
        c = tiny_config(**{"model.mtp_depth": depth, "model.vocab_size": 20,
                           "model.position_embedding": "rotary"})
        graphdef, params = nnx.split(state_lib.build_model(c))
        tokens = np.random.RandomState(0).randint(1, 20, (4, 17)).astype(np.int32)
        batch = {"inputs": tokens[:, :-1], "targets": tokens[:, 1:],
                 "segment_ids": np.ones((4, 16), np.int32),
                 "weights": np.ones((4, 16), np.float32)}
        # plain SGD: Adam's normalised steps would magnify float32 rounding in tiny gradients
        fn = step_lib.make_train_step(graphdef, objective, optax.sgd(1.0),
                                      optax.constant_schedule(1.0),
                                      regularizers=Regularizers(mtp_loss=weight))
        new, metrics = jax.jit(fn)(state_lib.init_state(params, optax.sgd(1.0), 0), batch)
        main = {k: v for k, v in new["params"].to_pure_dict().items() if k != "mtp"}
        return main, metrics

    plain, plain_metrics = step(0, 0.0)
    silent, metrics = step(1, 0.0)
    weighted, weighted_metrics = step(1, 0.3)
    assert "mtp_loss" in metrics and "mtp_loss" not in plain_metrics
    assert float(metrics["loss"]) == float(plain_metrics["loss"])  # train/loss: next token
    for a, b in zip(jax.tree.leaves(silent), jax.tree.leaves(plain), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-6)  # another program: float32 rounding
    moved = [np.abs(a - b).max() for a, b in zip(jax.tree.leaves(weighted),
                                                  jax.tree.leaves(plain), strict=True)]
    assert max(moved) > 1e-4


def test_exports_leave_the_modules_out():
    def exported(depth):
        c = tiny_config(**{"model.mtp_depth": depth, "model.vocab_size": 20,
                           "model.position_embedding": "rotary", "model.norm": "rmsnorm",
                           "model.use_bias": False, "model.gated_mlp": True,
                           "model.activation": "silu", "model.tie_embeddings": False})
        return convert.export_params(c, nnx.state(state_lib.build_model(c), nnx.Param))[1]

    with_modules, without = exported(1), exported(0)
    assert with_modules.keys() == without.keys()
    for name in without:
        np.testing.assert_array_equal(with_modules[name], without[name])


@pytest.mark.parametrize("overrides, expected", [
    ({"model.mtp_depth": 1, "model.arch": "encoder", "objective": "mlm"},
     "needs model.arch=decoder and objective=causal_lm"),
    ({"model.mtp_depth": -1}, "model.mtp_depth=-1 must be >= 0"),
])
def test_settings_without_multi_token_prediction_are_refused(overrides, expected):
    with pytest.raises(configs.ConfigError, match=expected):
        validation.validate(tiny_config(**overrides))


def test_a_run_fine_tunes_into_new_modules_and_reports_their_loss(tmp_path):
    from llmjax.train.loop import train_and_evaluate

    common = {"model.position_embedding": "rotary", "num_train_steps": 20,
              "eval_every_steps": 20, "checkpoint_every_steps": 20}
    train_and_evaluate(tiny_config(**common), tmp_path / "base")
    c = tiny_config(**common, **{"model.mtp_depth": 1, "init.workdir": str(tmp_path / "base")})
    train_and_evaluate(c, tmp_path / "mtp")
    rows = [json.loads(line) for line in (tmp_path / "mtp/metrics.jsonl").read_text().split("\n")
            if line]
    train = [r for r in rows if "train/mtp_loss" in r]
    assert len(train) == 4 and train[-1]["train/mtp_loss"] < train[0]["train/mtp_loss"]
    assert "eval/mtp_loss" in rows[-1]
