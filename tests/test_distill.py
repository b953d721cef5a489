"""Knowledge distillation (distill.*): the soft loss against numpy, a student that learns the
data from a teacher's distributions alone, the teacher's tokenizer taken over, a resumed run
that reloads the teacher, meshes as one device, and the refusals."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import optimised, tiny_config
from flax import nnx

from llmjax import configs
from llmjax.data.tokenizers import load_tokenizer, same_vocabulary
from llmjax.objectives.base import Regularizers, cross_entropy
from llmjax.objectives.distillation import distillation_sums, soft_kl
from llmjax.train import optim
from llmjax.train import state as state_lib
from llmjax.train.loop import train_and_evaluate
from llmjax.train.parallel import Parallel

STUDENT = {"model.num_layers": 1, "model.emb_dim": 16, "model.mlp_dim": 32}


def test_soft_kl_and_the_mixed_loss_match_their_formulas():
    rs = np.random.RandomState(0)
    student, teacher = rs.randn(2, 3, 8) * 2, rs.randn(2, 3, 10) * 2  # teacher: 2 padded ids
    targets, weights = rs.randint(0, 8, (2, 3)), rs.rand(2, 3)

    def log_softmax(x):
        x = x - x.max(-1, keepdims=True)
        return x - np.log(np.exp(x).sum(-1, keepdims=True))

    t = 2.0
    p, q = log_softmax(teacher[..., :8] / t), log_softmax(student / t)
    expected_kl = (np.exp(p) * (p - q)).sum(-1)
    kl = soft_kl(jnp.asarray(student), jnp.asarray(teacher), t)
    np.testing.assert_allclose(kl, expected_kl, rtol=1e-5)
    assert soft_kl(jnp.asarray(student), jnp.asarray(student), t).max() < 1e-6

    ce = np.asarray(cross_entropy(jnp.asarray(student), jnp.asarray(targets)))
    for alpha in (0.0, 0.3, 1.0):
        loss, hits, kl_sum = distillation_sums(
            jnp.asarray(student), jnp.asarray(teacher), jnp.asarray(targets),
            jnp.asarray(weights), Regularizers(distill_alpha=alpha, distill_temperature=t))
        per_token = (1 - alpha) * ce + alpha * t**2 * expected_kl
        np.testing.assert_allclose(loss, (per_token * weights).sum(), rtol=1e-5)
        np.testing.assert_allclose(kl_sum, (expected_kl * weights).sum(), rtol=1e-5)
        np.testing.assert_allclose(hits, ((student.argmax(-1) == targets) * weights).sum())


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    """A tiny decoder trained on the `generated` corpus: (workdir, its eval loss)."""
    workdir = tmp_path_factory.mktemp("teacher")
    c = tiny_config(num_train_steps=300, eval_every_steps=300, checkpoint_every_steps=300)
    return workdir, train_and_evaluate(optimised(c), workdir)["eval/loss"]


def student_config(teacher_dir, **overrides):
    return tiny_config(**{**STUDENT, "distill.teacher_workdir": str(teacher_dir), **overrides})


def test_a_student_learns_the_data_from_the_teachers_distributions_alone(teacher, tmp_path):
    """alpha = 1: no data token enters the loss, yet the student's eval cross-entropy on the
    data falls towards the teacher's, as far as one trained on the tokens for as long; it
    takes the teacher's tokenizer, and its checkpoints hold it alone."""
    teacher_dir, teacher_loss = teacher
    steps = {"num_train_steps": 150, "eval_every_steps": 150, "checkpoint_every_steps": 150,
             "log_every_steps": 50}
    distilled = train_and_evaluate(optimised(student_config(
        teacher_dir, **steps, **{"distill.alpha": 1.0, "distill.temperature": 1.0})),
        tmp_path / "distilled")
    plain = train_and_evaluate(optimised(tiny_config(**STUDENT, **steps)), tmp_path / "plain")
    # measured: 2.494 against 2.515 trained on the tokens, the teacher 2.469 (log 17 = 2.83)
    assert distilled["eval/loss"] < plain["eval/loss"], (distilled, plain)
    assert distilled["eval/loss"] < teacher_loss + 0.05, (distilled, teacher_loss)
    rows = [json.loads(line) for line in
            (tmp_path / "distilled" / "metrics.jsonl").read_text().splitlines()]
    train_rows = [r for r in rows if "train/distill_kl" in r]
    kl = [r["train/distill_kl"] for r in train_rows]
    assert len(kl) == 3 and kl[-1] < kl[0] / 3, kl
    for row in train_rows:  # alpha = 1 at T = 1: the training loss is the KL itself
        assert row["train/loss"] == pytest.approx(row["train/distill_kl"], rel=1e-5)
    assert "eval/distill_kl" not in distilled  # evaluation is the plain cross-entropy
    assert same_vocabulary(load_tokenizer(tmp_path / "distilled" / "tokenizer"),
                           load_tokenizer(teacher_dir / "tokenizer"))
    saved = json.loads((tmp_path / "distilled" / "config.json").read_text())
    assert saved["model"]["num_layers"] == 1


@pytest.mark.slow  # the suite's time budget: the teacher loads as on a fresh start
def test_a_distillation_run_resumes_on_its_trajectory(teacher, tmp_path):
    """The teacher is not in the checkpoint: a resumed run loads it again and continues as an
    uninterrupted run does."""
    c = student_config(teacher[0], num_train_steps=20, eval_every_steps=20,
                       checkpoint_every_steps=10)
    whole = train_and_evaluate(c, tmp_path / "whole")
    train_and_evaluate(c, tmp_path / "split", stop_at_step=10)
    resumed = train_and_evaluate(c, tmp_path / "split")
    assert resumed["eval/loss"] == pytest.approx(whole["eval/loss"], abs=1e-6)


def steps_with_teacher(setup, mode, mesh=None, gradient_allreduce="auto"):
    """Losses and KLs of three distillation steps of a fresh student under `mode`, with a
    fresh 2-layer teacher."""
    from test_mesh import set_mesh

    c, objective, batches = setup
    c = configs.ml_collections.ConfigDict(c.to_dict())
    if mesh:
        set_mesh(c, mesh)
    teacher_config = configs.ml_collections.ConfigDict(c.to_dict())
    teacher_config.model.num_layers, teacher_config.model.emb_dim = 2, 32
    teacher_config.seed = 7
    teacher = nnx.split(state_lib.build_model(teacher_config))
    c.model.num_layers, c.model.emb_dim, c.model.mlp_dim = 1, 16, 32
    graphdef, params = nnx.split(state_lib.build_model(c))
    tx, schedule = optim.make_optimizer(c.optimizer, c.num_train_steps)
    host_state = state_lib.init_state(params, tx, c.seed)
    parallel = Parallel(mode, graphdef, objective, tx, schedule, mesh_sizes=c.parallel.mesh,
                        abstract_state=jax.eval_shape(lambda: host_state),
                        regularizers=Regularizers(distill_alpha=0.5, distill_temperature=2.0),
                        gradient_allreduce=gradient_allreduce, teacher=teacher)
    state, out = parallel.to_device(host_state), []
    for batch in batches:
        state, metrics = parallel.train_step(state, batch)
        metrics = jax.device_get(parallel.unreplicate_metrics(metrics))
        out.append((float(metrics["loss"]), float(metrics["distill_kl"])))
    return np.array(out)


@pytest.mark.slow  # the suite's time budget; `make test-slow`
@pytest.mark.parametrize("others", [
    [("mesh", (1, 2, 2, 2), "auto")],  # the teacher sharded by the parameter rules
    # a data-only mesh summing in one all-reduce steps per batch shard (shard_map: the teacher
    # whole on each); pmap replicates it
    [("mesh", (8, 1, 1, 1), "flat"), ("pmap", None, "auto")]], ids=["sharded", "replicated"])
def test_distillation_in_parallel_equals_one_device(tmp_path, others):
    from test_mesh import family_setup

    setup = family_setup(tmp_path, "decoder")
    single = steps_with_teacher(setup, "single")
    assert len(set(single[:, 0])) == 3
    for mode, mesh, allreduce in others:
        np.testing.assert_allclose(steps_with_teacher(setup, mode, mesh, allreduce), single,
                                   atol=1e-5, err_msg=f"{mode} {mesh}")


def test_distillation_refusals(teacher, tmp_path):
    teacher_dir = teacher[0]
    cases = [
        ({"distill.teacher_workdir": str(tmp_path / "nowhere")}, FileNotFoundError,
         "does not exist"),
        ({"model.logits_chunks": 2}, configs.ConfigError, "set model.logits_chunks=1"),
        ({"distill.alpha": 1.5}, configs.ConfigError, r"must be in \[0, 1\]"),
        ({"model.arch": "encoder", "objective": "mlm"}, configs.ConfigError,
         "distils next-token distributions"),
    ]
    for overrides, error, message in cases:
        with pytest.raises(error, match=message):
            train_and_evaluate(student_config(teacher_dir, **overrides), tmp_path / "run")
        assert not (tmp_path / "run").exists()
    # a run with its own tokenizer (init.workdir's) that is not the teacher's
    other = tmp_path / "byte_run"
    train_and_evaluate(tiny_config(**{"tokenizer.kind": "byte", "num_train_steps": 1,
                                      "eval_every_steps": 1, "checkpoint_every_steps": 1}),
                       other)
    with pytest.raises(configs.ConfigError, match="has another tokenizer than this run"):
        train_and_evaluate(student_config(teacher_dir, **{"init.workdir": str(other),
                                                          "tokenizer.kind": "byte"}),
                           tmp_path / "run")
