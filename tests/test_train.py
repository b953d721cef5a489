"""Training: schedules, weight-decay mask, accumulation and pmap equivalence, checkpoint/resume,
fine-tuning, outputs, non-finite losses, and closeness to the generated data's loss floor."""

import shutil
import struct
import subprocess
import sys
from unittest import mock

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import jitted, optimised, run_command, tiny_config
from etils import epath

import llmjax
from llmjax import workdir_config
from llmjax.configs import ConfigError
from llmjax.data import pipeline
from llmjax.objectives import get_objective
from llmjax.train import loop, optim
from llmjax.train.loop import NonFiniteLossError, train_and_evaluate
from llmjax.train.writer import read_metrics


def losses(workdir, key="train/loss"):
    return {r["step"]: r[key] for r in read_metrics(workdir) if key in r}


def test_schedules_give_their_documented_values():
    c = tiny_config(**{"optimizer.learning_rate": 1.0, "optimizer.end_learning_rate": 0.1,
                       "optimizer.warmup_steps": 10})
    cosine = optim.learning_rate_schedule(c.optimizer, 110)
    assert float(cosine(0)) == 0.0 and float(cosine(5)) == pytest.approx(0.5)
    assert float(cosine(10)) == pytest.approx(1.0)
    assert float(cosine(60)) == pytest.approx(0.55, abs=1e-6)  # halfway: (1 + 0.1) / 2
    assert float(cosine(110)) == pytest.approx(0.1) and float(cosine(500)) == pytest.approx(0.1)
    c.optimizer.schedule = "linear"
    linear = optim.learning_rate_schedule(c.optimizer, 110)
    assert float(linear(60)) == pytest.approx(0.55) and float(linear(110)) == pytest.approx(0.1)
    c.optimizer.schedule = "constant"
    assert float(optim.learning_rate_schedule(c.optimizer, 110)(90)) == pytest.approx(1.0)
    c.optimizer.schedule = "rsqrt"  # 1 * sqrt(10 / step) after warmup, with no end
    rsqrt = optim.learning_rate_schedule(c.optimizer, 110)
    assert float(rsqrt(5)) == pytest.approx(0.5) and float(rsqrt(10)) == pytest.approx(1.0)
    assert float(rsqrt(40)) == pytest.approx(0.5) and float(rsqrt(1000)) == pytest.approx(0.1)
    c.optimizer.schedule = "wsd"  # stable at 1 until the last 20% after warmup, then linear
    wsd = optim.learning_rate_schedule(c.optimizer, 110)
    assert [float(wsd(s)) for s in (5, 50, 90)] == pytest.approx([0.5, 1.0, 1.0])
    assert [float(wsd(s)) for s in (100, 110, 500)] == pytest.approx([0.55, 0.1, 0.1])
    c.optimizer.schedule = "wsd_sqrt"  # 1 - sqrt: halfway through the cooldown 1 - 0.9 x 0.707
    assert float(optim.learning_rate_schedule(c.optimizer, 110)(100)) == pytest.approx(
        1 - 0.9 * 0.5 ** 0.5)
    c.optimizer.schedule, c.optimizer.cooldown_steps = "wsd", 40
    wsd = optim.learning_rate_schedule(c.optimizer, 110)
    assert float(wsd(70)) == pytest.approx(1.0) and float(wsd(90)) == pytest.approx(0.55)


def test_weight_decay_skips_biases_and_norm_scales():
    params = {"kernel": jnp.ones((3, 4)), "bias": jnp.ones(4), "scale": jnp.ones(4),
              "embedding": jnp.ones((10, 4))}
    assert optim.weight_decay_mask(params) == {"kernel": True, "bias": False, "scale": False,
                                               "embedding": True}
    c = tiny_config(**{"optimizer.weight_decay": 0.5, "optimizer.warmup_steps": 0,
                       "optimizer.schedule": "constant", "optimizer.grad_clip_norm": 0.0})
    for name in ("adamw", "adafactor"):  # both: learning rate x weight_decay x parameter
        c.optimizer.name = name
        tx, _ = optim.make_optimizer(c.optimizer, 10)
        zeros = jax.tree.map(jnp.zeros_like, params)
        updates, _ = tx.update(zeros, tx.init(params), params)
        assert float(jnp.abs(updates["bias"]).max()) == 0.0, name
        assert float(updates["kernel"][0, 0]) == pytest.approx(-3e-3 * 0.5), name


def test_adafactor_factors_its_second_moments_and_trains(tmp_path):
    from flax import nnx

    from llmjax.train.state import build_model

    c = tiny_config(**{"model.emb_dim": 128, "model.mlp_dim": 256, "model.vocab_size": 20})
    params = nnx.split(build_model(c))[1]
    sizes = {}
    for name in ("adamw", "adafactor"):
        c.optimizer.name = name
        tx, _ = optim.make_optimizer(c.optimizer, 10)
        sizes[name] = sum(x.size for x in jax.tree.leaves(tx.init(params)))
    num_params = sum(x.size for x in jax.tree.leaves(params))
    assert sizes["adamw"] >= 2 * num_params
    assert sizes["adafactor"] < 0.1 * num_params  # 128-wide matrices: a row and a column each
    # a tiny run learns with it; its weight decay follows the schedule (none at step 0: lr = 0)
    # (steps are scaled by each parameter's RMS, so it takes a larger learning rate: measured
    # 2.844 -> 2.552 in 30 steps at 0.1, against 2.601 for AdamW at 3e-3)
    c = tiny_config(**{"optimizer.name": "adafactor", "optimizer.learning_rate": 0.1,
                       "num_train_steps": 30, "log_every_steps": 1})
    train_and_evaluate(c, tmp_path / "run")
    loss = losses(tmp_path / "run")
    assert loss[30] < loss[1] - 0.2, (loss[1], loss[30])


def test_muon_orthogonalises_the_blocks_matrices_and_adamw_takes_the_rest(tmp_path):
    """optimizer.name=muon: each attention / MLP matrix's first update (random gradients, no
    decay) descends along the gradient orthogonalised as one [inputs, outputs] matrix (its
    polar factor U Vᵀ: cosine > 0.97, where the raw gradient gives 0.83-0.93 and heads
    orthogonalised one by one 0.86) at RMS 0.2 x lr; embeddings, norms and biases take
    AdamW's first step (lr x sign); and a run learns."""
    from flax import nnx

    from llmjax.train.checkpoint import param_path_name
    from llmjax.train.state import build_model

    assert optim.muon_dimensions("decoder/layers/1/cross_attention/out/kernel", 3) == (
        optim.MuonDimensionNumbers(reduction_axis=(0, 1), output_axis=2))
    assert optim.muon_dimensions("layers/0/attention/query/kernel", 3).output_axis == (1, 2)
    for path in ("embed/embedding", "lm_head/kernel", "classifier/kernel", "layers/0/mlp/wi/bias"):
        assert optim.muon_dimensions(path, 2) is None
    c = tiny_config(**{"optimizer.name": "muon", "optimizer.weight_decay": 0.0,
                       "optimizer.warmup_steps": 0, "optimizer.schedule": "constant",
                       "model.vocab_size": 30})
    lr = c.optimizer.learning_rate
    params = nnx.split(build_model(c))[1]
    tx, _ = optim.make_optimizer(c.optimizer, 10)
    rng = np.random.default_rng(0)
    grads = jax.tree.map(lambda p: jnp.asarray(rng.normal(size=p.shape), p.dtype), params)
    updates, _ = jax.jit(tx.update)(grads, tx.init(params), params)  # eager: op by op, slow

    def cosine_to_polar(update, gradient):
        u, _, vt = np.linalg.svd(gradient, full_matrices=False)
        polar = u @ vt
        return float((update * polar).sum() / np.linalg.norm(update) / np.linalg.norm(polar))

    matrices = 0
    for (path, u), g in zip(jax.tree_util.tree_leaves_with_path(updates),
                            jax.tree.leaves(grads), strict=True):
        name, u, g = param_path_name(path), np.asarray(u), np.asarray(g)
        dims = optim.muon_dimensions(name, u.ndim)
        if dims is None:
            np.testing.assert_allclose(np.abs(u), lr, rtol=1e-2, err_msg=name)  # eps aside
            continue
        matrices += 1
        rows = u.shape[0] * (u.shape[1] if name.endswith("out/kernel") and u.ndim == 3 else 1)
        assert -cosine_to_polar(u.reshape(rows, -1), g.reshape(rows, -1)) > 0.97, name
        assert 0.6 * 0.2 * lr < np.sqrt((u ** 2).mean()) < 1.1 * 0.2 * lr, name
    assert matrices == 2 * 6  # q, k, v, out, wi, wo in each of 2 layers
    adamw, _ = optim.make_optimizer(tiny_config(**{"model.vocab_size": 30}).optimizer, 10)
    assert sum(x.size for x in jax.tree.leaves(tx.init(params))) < sum(
        x.size for x in jax.tree.leaves(adamw.init(params)))  # one moment for the matrices
    c = tiny_config(**{"optimizer.name": "muon", "num_train_steps": 30, "log_every_steps": 1})
    train_and_evaluate(c, tmp_path / "run")
    loss = losses(tmp_path / "run")
    assert loss[30] < loss[1] - 0.2, (loss[1], loss[30])


def _run(tmp_path, name, **overrides):
    c = tiny_config(**{"num_train_steps": 3, "log_every_steps": 1, "eval_every_steps": 3,
                       "checkpoint_every_steps": 3, "batch_size": 16, **overrides})
    train_and_evaluate(c, tmp_path / name)
    return losses(tmp_path / name)


def test_pmap_over_8_devices_and_accumulation_equal_one_device(tmp_path):
    assert jax.local_device_count() == 8
    single = _run(tmp_path, "single")
    pmap = _run(tmp_path, "pmap", **{"parallel.mode": "pmap"})
    accumulated = _run(tmp_path, "accum", **{"optimizer.accumulation_steps": 4})
    assert len(single) == 3
    for step in single:
        assert pmap[step] == pytest.approx(single[step], abs=1e-5)
        assert accumulated[step] == pytest.approx(single[step], abs=1e-5)


def test_stop_and_resume_equals_uninterrupted(tmp_path):
    c = tiny_config()
    train_and_evaluate(c, tmp_path / "full")
    stopped = train_and_evaluate(c, tmp_path / "resumed", stop_at_step=10)
    assert stopped["eval/loss"] > 0  # step 10 is an eval step
    assert sorted(int(p.name) for p in (tmp_path / "resumed/checkpoints").iterdir()) == [10]
    with mock.patch.object(loop.logging, "info") as info:  # a step already reached
        train_and_evaluate(c, tmp_path / "resumed", stop_at_step=8)
    assert any("at or past --stop_at_step=%d: nothing to do" in str(call.args[0])
               and call.args[-1] == 8 for call in info.call_args_list)
    with pytest.raises(ConfigError, match="--stop_at_step=0: give a step of at least 1"):
        train_and_evaluate(c, tmp_path / "never", stop_at_step=0)
    assert not (tmp_path / "never").exists()  # refused before anything is written
    train_and_evaluate(c, tmp_path / "resumed")
    full, resumed = losses(tmp_path / "full"), losses(tmp_path / "resumed")
    assert sorted(full) == sorted(resumed) == [5, 10, 15, 20]
    for step in full:
        assert resumed[step] == pytest.approx(full[step], abs=1e-6)
    ev_full = losses(tmp_path / "full", "eval/loss")
    assert losses(tmp_path / "resumed", "eval/loss")[20] == pytest.approx(ev_full[20], abs=1e-6)


@pytest.mark.slow
def test_finetuning_starts_from_pretrained_parameters_and_tokenizer(tmp_path):
    pre = tmp_path / "pre"
    train_and_evaluate(tiny_config(), pre)
    c = tiny_config(**{"init.workdir": str(pre), "num_train_steps": 2, "log_every_steps": 1,
                       "eval_every_steps": 2, "seed": 7, "optimizer.learning_rate": 1e-4})
    fine = tmp_path / "fine"
    train_and_evaluate(c, fine)
    run = llmjax.load(pre)
    obj = get_objective("causal_lm")
    batch = next(iter(pipeline.train_dataset(c, run.tokenizer, obj)))
    sums = obj.loss(run.model, jax.tree.map(jnp.asarray, batch), None)
    assert losses(fine)[1] == pytest.approx(float(sums["loss"][0] / sums["loss"][1]), abs=1e-5)
    assert (fine / "tokenizer/vocab.json").read_text() == (pre / "tokenizer/vocab.json").read_text()
    # another text, same tokenizer: characters it never saw become <unk>, nothing is retrained
    other = tmp_path / "other.txt"
    other.write_text("abc xyz\n" * 400)
    c2 = tiny_config(**{"init.workdir": str(pre), "data.source": f"text:{other}",
                        "num_train_steps": 2})
    train_and_evaluate(c2, tmp_path / "fine2")
    assert (tmp_path / "fine2/tokenizer/vocab.json").read_text() == \
        (pre / "tokenizer/vocab.json").read_text()


def test_label_smoothing_and_z_loss_enter_the_train_loss_only(tmp_path):
    """The first step's train loss is the smoothed cross-entropy + z * log(Z)^2 of the starting
    parameters (optax's smooth_labels as the reference); eval loss stays the plain one."""
    import optax

    pre = tmp_path / "pre"
    train_and_evaluate(tiny_config(**{"num_train_steps": 2, "eval_every_steps": 2}), pre)
    # warmup: the learning rate of step 1 is 0, so eval at step 1 sees the pretrained parameters
    c = tiny_config(**{"init.workdir": str(pre), "num_train_steps": 1, "log_every_steps": 1,
                       "label_smoothing": 0.1, "z_loss": 0.01})
    fine = tmp_path / "fine"
    train_and_evaluate(c, fine)
    run = llmjax.load(pre)
    batch = jax.tree.map(jnp.asarray, next(iter(
        pipeline.train_dataset(c, run.tokenizer, get_objective("causal_lm")))))
    logits = run.model(batch["inputs"], segment_ids=batch["segment_ids"])
    labels = optax.smooth_labels(jax.nn.one_hot(batch["targets"], logits.shape[-1]), 0.1)
    per_token = (optax.softmax_cross_entropy(logits, labels)
                 + 0.01 * jax.nn.logsumexp(logits, axis=-1) ** 2)
    expected = float((per_token * batch["weights"]).sum() / batch["weights"].sum())
    plain = get_objective("causal_lm").loss(run.model, batch, None)["loss"]
    assert losses(fine)[1] == pytest.approx(expected, abs=1e-5)
    assert abs(expected - float(plain[0] / plain[1])) > 0.05  # the terms are not negligible
    assert losses(fine, "eval/loss")[1] == pytest.approx(losses(pre, "eval/loss")[2], abs=1e-6)


def test_z_loss_pulls_the_softmax_normaliser_towards_one(tmp_path):
    def mean_abs_log_z(z_loss: float) -> float:
        c = tiny_config(**{"num_train_steps": 30, "z_loss": z_loss})
        train_and_evaluate(c, tmp_path / str(z_loss))
        run = llmjax.load(tmp_path / str(z_loss))
        batch = next(iter(pipeline.train_dataset(c, run.tokenizer, get_objective("causal_lm"))))
        logits = jitted(run.model)(jnp.asarray(batch["inputs"]),
                                   segment_ids=jnp.asarray(batch["segment_ids"]))
        return float(jnp.abs(jax.nn.logsumexp(logits, axis=-1)).mean())

    # measured: 3.32 without, 1.43 with z_loss=1 (log Z starts near log(vocabulary) = 2.6)
    assert mean_abs_log_z(1.0) < 0.6 * mean_abs_log_z(0.0)


def test_profile_traces_the_chosen_training_steps(tmp_path):
    import gzip
    import json

    c = tiny_config(**{"num_train_steps": 6, "profile.start_step": 3, "profile.num_steps": 2})
    train_and_evaluate(c, tmp_path)
    runs = list((tmp_path / "plugins/profile").iterdir())  # where TensorBoard looks
    assert len(runs) == 1 and list(runs[0].glob("*.xplane.pb"))
    with gzip.open(next(runs[0].glob("*.trace.json.gz"))) as f:
        names = [e.get("name", "") for e in json.load(f)["traceEvents"]]
    assert any("train_step" in n for n in names)  # the jitted step's calls are in it


def _event_steps(workdir: epath.Path, tag: str) -> list[int]:
    """Steps of the scalar `tag` in TensorBoard event files (TFRecord framing, parsed here)."""
    from tensorboardX.proto import event_pb2

    steps = []
    for path in workdir.glob("events.out.tfevents.*"):
        data = path.read_bytes()
        pos = 0
        while pos < len(data):
            (length,) = struct.unpack("<Q", data[pos:pos + 8])
            event = event_pb2.Event.FromString(data[pos + 12:pos + 12 + length])
            pos += 12 + length + 4
            steps += [event.step for v in event.summary.value if v.tag == tag]
    return sorted(steps)


def test_outputs_tensorboard_png_config_and_metric_names(tmp_path):
    c = tiny_config()
    train_and_evaluate(c, tmp_path)
    rows = read_metrics(tmp_path)
    train_keys = {k for r in rows for k in r if k.startswith("train/")}
    assert train_keys == {"train/loss", "train/learning_rate", "train/grad_norm",
                          "train/tokens_per_sec", "train/mfu", "train/token_accuracy"}
    eval_row = [r for r in rows if "eval/loss" in r][-1]
    assert eval_row["eval/perplexity"] == pytest.approx(np.exp(eval_row["eval/loss"]))
    assert {"eval/token_accuracy", "eval/best_achievable_loss"} <= set(eval_row)
    assert _event_steps(tmp_path, "train/loss") == [5, 10, 15, 20]
    assert _event_steps(tmp_path, "eval/loss") == [10, 20]
    png = (tmp_path / "plots/loss.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    assert '"vocab_size": 17' in (tmp_path / "config.json").read_text()  # 12 letters + 5


def test_eval_prompts_are_sampled_at_each_eval_and_a_resumed_run_repeats_them(tmp_path):
    c = tiny_config(**{"eval_prompts": "ab|", "generate.max_new_tokens": 8})
    train_and_evaluate(c, tmp_path / "once")
    rows = read_metrics(tmp_path / "once", "samples.jsonl")
    assert [(r["step"], r["prompt"]) for r in rows] == [(10, "ab"), (10, ""), (20, "ab"),
                                                        (20, "")]  # "": from <bos> alone
    run = llmjax.load(tmp_path / "once")  # step 20: the samples are its generate's
    assert [r["text"] for r in rows[2:]] == run.generate(["ab", ""])
    assert rows[0]["text"] != rows[2]["text"] and len(rows[2]["text"]) > 0
    assert _event_steps(tmp_path / "once", "samples/1/text_summary") == [10, 20]
    # stopped at 15, then killed after writing a sample row past that checkpoint: resuming
    # drops the stray row and writes the rows of the run that never stopped
    train_and_evaluate(c, tmp_path / "twice", stop_at_step=15)
    with (tmp_path / "twice" / "samples.jsonl").open("a") as f:
        f.write('{"step": 20, "prompt": "ab", "text": "stray"}\n')
    train_and_evaluate(c, tmp_path / "twice")
    assert read_metrics(tmp_path / "twice", "samples.jsonl") == rows


def test_writing_tensorboard_events_does_not_import_torch(tmp_path):
    """tensorboardX imports torch whenever it is installed; the writer hides it (2.4 s and
    torch's libraries per training process, measured)."""
    pytest.importorskip("torch", reason="only matters where torch is installed")
    code = ("import sys; from llmjax.train.writer import MetricWriter; "
            f"MetricWriter({str(tmp_path)!r}, enabled=True).write(3, {{'train/loss': 1.5}}); "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "False"
    assert _event_steps(tmp_path, "train/loss") == [3]


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    c = tiny_config()
    train_and_evaluate(c, tmp_path, stop_at_step=10)
    c.optimizer.learning_rate = float("inf")  # in range (>= 0), and diverges at once
    # update 11 applies an infinite learning rate, so update 12 is the first with a NaN loss
    with pytest.raises(NonFiniteLossError, match=r"at step 12; the last good checkpoint is "
                       r"step 10"):
        train_and_evaluate(c, tmp_path)
    assert sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir()) == [10]


def test_short_run_approaches_the_generated_loss_floor(tmp_path, capsys):
    """~15 s. The floor is the Bayes-optimal loss; measured gap after these 400 steps: 0.078,
    0.072 and 0.076 nats/token for seeds 0, 1, 2 (bound 0.1; 600 steps gave 0.045 to 0.051,
    300 steps 0.108 to 0.118). A sliding evaluation (data.eval_window_stride) gives the
    first targets of every window more context: floor and loss both drop."""
    c = tiny_config(**{"num_train_steps": 400, "eval_every_steps": 400, "log_every_steps": 100,
                       "checkpoint_every_steps": 400, "batch_size": 16, "seq_len": 64,
                       "data.generated.train_documents": 2000,
                       "data.generated.eval_documents": 100,
                       "model.emb_dim": 64, "model.mlp_dim": 256,
                       "model.position_embedding": "rotary",
                       "optimizer.learning_rate": 3e-3, "optimizer.weight_decay": 0.0})
    metrics = train_and_evaluate(optimised(c), tmp_path)
    floor = metrics["eval/best_achievable_loss"]
    assert 1.5 < floor < 2.0  # far below the ~2.45 nats of letter frequencies alone
    assert metrics["eval/loss"] - floor < 0.1
    config = workdir_config.get_config(str(tmp_path))
    config.data.eval_window_stride = 16
    sliding = run_command("eval", tmp_path, capsys, config=config)
    gain = floor - sliding["eval/best_achievable_loss"]
    assert gain > 0.01 and sliding["eval/loss"] < metrics["eval/loss"] - gain / 2, sliding


def test_resuming_with_another_model_is_refused_before_anything_is_written(tmp_path):
    c = tiny_config(**{"num_train_steps": 2})
    train_and_evaluate(c, tmp_path)
    saved = (tmp_path / "config.json").read_text()
    c.model.emb_dim = 48
    with pytest.raises(ConfigError, match=r"model.emb_dim: 32 -> 48"):
        train_and_evaluate(c, tmp_path)
    other_optimizer = tiny_config(**{"num_train_steps": 2, "optimizer.name": "adafactor"})
    with pytest.raises(ConfigError, match=r"optimizer.name: 'adamw' -> 'adafactor'"):
        train_and_evaluate(other_optimizer, tmp_path)  # its state has another structure
    assert (tmp_path / "config.json").read_text() == saved
    # other settings may change on resume, and the log names each change
    longer = tiny_config(**{"num_train_steps": 3, "optimizer.learning_rate": 1e-2})
    with mock.patch.object(loop.logging, "warning") as warning:
        train_and_evaluate(longer, tmp_path)
    logged = [call.args[0] % call.args[1:] for call in warning.call_args_list
              if "changed settings" in call.args[0]]
    assert len(logged) == 1 and "num_train_steps: 2 -> 3" in logged[0], logged
    assert "optimizer.learning_rate: 0.003 -> 0.01" in logged[0]
    # fine-tuning from a run that has no checkpoint names the setting that pointed there
    shutil.rmtree(tmp_path / "checkpoints")
    fine = tiny_config(**{"num_train_steps": 2, "init.workdir": str(tmp_path)})
    with pytest.raises(FileNotFoundError, match=r"init.workdir=.*: no checkpoint in .*checkp"):
        train_and_evaluate(fine, tmp_path / "fine")


def test_an_objective_that_does_not_fit_the_architecture_is_a_clear_error(tmp_path):
    c = tiny_config(**{"model.arch": "encoder_decoder", "objective": "mlm"})
    with pytest.raises(ConfigError, match="objective='mlm' does not fit "
                                          "model.arch='encoder_decoder'"):
        train_and_evaluate(c, tmp_path / "run")
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_bfloat16_compute_stays_within_0_01_of_float32_after_200_demo_steps(tmp_path):
    """Mixed precision: bfloat16 matmuls with float32 parameters, accumulation, norms, softmax
    and loss; configs/demo.py's model and data, 200 steps."""
    from configs import demo

    results = {}
    for dtype in ("float32", "bfloat16"):
        c = demo.get_config()
        c.num_train_steps = c.eval_every_steps = c.checkpoint_every_steps = 200
        c.model.dtype, c.progress_bar = dtype, False
        results[dtype] = train_and_evaluate(c, tmp_path / dtype)["eval/loss"]
    assert abs(results["bfloat16"] - results["float32"]) < 0.01, results
