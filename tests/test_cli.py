"""The `llmjax` command as a user runs it: train, eval, generate, and one-line errors."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import TEST_XLA_FLAGS, tiny_config, write_config_file

import llmjax
from llmjax.configs import ConfigError
from llmjax.train.loop import train_and_evaluate
from llmjax.train.writer import read_metrics

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def llmjax_cli(*args, check=True):
    env = {**os.environ, "XLA_FLAGS": TEST_XLA_FLAGS}  # one device, as a user would run it
    out = subprocess.run([sys.executable, "-m", "llmjax", *args], capture_output=True,
                         text=True, cwd=ROOT, env=env, timeout=300)
    if check and out.returncode != 0:
        raise AssertionError(f"llmjax {args} failed:\n{out.stderr[-3000:]}")
    return out


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("run")
    train_and_evaluate(tiny_config(), workdir)
    return workdir


def test_unknown_config_key_is_one_line_with_the_nearest_keys(tmp_path):
    out = llmjax_cli("train", "--config=configs/demo.py", f"--workdir={tmp_path}",
                     "--config.optimizer.learning_rte=0.1", check=False)
    assert out.returncode == 2
    assert out.stderr.strip().splitlines()[-1].startswith(
        "llmjax: error: unknown config key 'optimizer.learning_rte'; did you mean "
        "optimizer.learning_rate or ")
    assert "Traceback" not in out.stderr
    assert not (tmp_path / "config.json").exists()


def test_bad_value_and_missing_data_are_clear_errors(tmp_path):
    out = llmjax_cli("train", "--config=configs/demo.py", f"--workdir={tmp_path}",
                     "--config.batch_size=lots", check=False)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "batch_size" in out.stderr.splitlines()[-1]
    out = llmjax_cli("train", "--config=configs/demo.py", f"--workdir={tmp_path}",
                     f"--config.data.source=text:{tmp_path}/missing/*.txt", check=False)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert out.stderr.strip().splitlines()[-1] == (
        f"llmjax: error: data source: '{tmp_path}/missing/*.txt' matches no file; check the "
        "path (globs such as data/*.txt are allowed)")


def test_errors_a_user_can_fix_are_one_line_and_bugs_keep_their_traceback():
    """The CLI's triage (llmjax.cli._user_error), for errors that tests cannot cause on demand
    (an allocation the machine refuses, a disk that fills outside a checkpoint)."""
    import errno

    import jax

    from llmjax import cli

    oom = jax.errors.JaxRuntimeError("RESOURCE_EXHAUSTED: Out of memory allocating 1234 bytes.")
    assert cli._user_error(oom).startswith(
        "the device ran out of memory (Out of memory allocating 1234 bytes.): lower batch_size")
    from llmjax.train.loop import NonFiniteLossError

    diverged = NonFiniteLossError("non-finite training loss (nan) at step 7; ...")
    assert cli._user_error(diverged) == str(diverged)
    full = OSError(errno.ENOSPC, "No space left on device", "/w/metrics.jsonl")
    assert cli._user_error(full).startswith(
        "No space left on device while writing /w/metrics.jsonl: free disk space")
    for bug in (ValueError("a bug"), KeyError("x"), jax.errors.JaxRuntimeError("INTERNAL: x"),
                OSError(errno.EIO, "I/O error")):
        assert cli._user_error(bug) is None


def test_help_lists_every_command_and_flag():
    from llmjax import cli

    out = llmjax_cli("--help", check=False)  # absl's --help exits 1
    for command in cli.COMMANDS:
        assert f"  llmjax {command} " in out.stdout
    for name in ("workdir", "config", "stop_at_step", "top_p", "text_pair", "from", "to",
                 "coordinator_address"):
        assert f"--{name}" in out.stdout or f"--[no]{name}" in out.stdout, name
    out = llmjax_cli(check=False)
    assert out.returncode == 2 and "llmjax --help lists the commands" in out.stderr


def test_config_argument_selects_variants():
    from configs import gpt  # noqa: PLC0415

    c = gpt.get_config("size=small,tokenizer=bpe")
    assert c.model.num_layers == 6 and c.tokenizer.kind == "bpe"
    from llmjax.convert import hf  # noqa: PLC0415

    for style, family in (("llama", "llama"), ("gemma2", "gemma"), ("pythia", "gpt_neox")):
        c = gpt.get_config(f"style={style}")
        c.model.vocab_size = 70
        assert hf.export_family(c).__name__.endswith(family)
        assert not hf.export_family(c).inexpressible(c), style  # it writes as that family
    with pytest.raises(ValueError, match="expected one of"):
        gpt.get_config("sise=small")


def test_eval_command_reproduces_the_training_eval_and_records_it(trained):
    before = [r for r in read_metrics(trained) if "eval/loss" in r][-1]
    out = llmjax_cli("eval", f"--workdir={trained}")
    printed = json.loads(out.stdout)
    assert printed["step"] == 20
    assert printed["eval/loss"] == pytest.approx(before["eval/loss"], abs=1e-5)
    assert set(printed) == set(before)  # the same metrics, the data's loss floor included
    assert printed["eval/best_achievable_loss"] == pytest.approx(
        before["eval/best_achievable_loss"], abs=1e-9)
    assert read_metrics(trained)[-1]["eval/loss"] == printed["eval/loss"]
    out = llmjax_cli("eval", f"--workdir={trained}", "--split=train[:10%]", "--step=10")
    printed = json.loads(out.stdout)
    assert printed["step"] == 10 and "train[:10%]/loss" in printed
    out = llmjax_cli("eval", f"--workdir={trained}", "--step=15", check=False)
    assert out.returncode == 2 and out.stderr.strip().splitlines()[-1] == (
        f"llmjax: error: no checkpoint of step 15 in {trained}/checkpoints; its saved steps are "
        "10, 20: choose one of them, or leave the step unset for the latest")


def test_a_tokenizer_of_another_id_layout_is_one_line(tmp_path):
    """A workdir whose tokenizer an older llmjax wrote with other special tokens."""
    from llmjax import configs
    from llmjax.data.tokenizers import CharTokenizer

    (tmp_path / "config.json").write_text(configs.to_json(tiny_config(**{"model.vocab_size": 8})))
    CharTokenizer.train(["abc"]).save(tmp_path / "tokenizer")
    (tmp_path / "tokenizer/tokenizer_config.json").write_text(
        json.dumps({"kind": "char", "lowercase": False, "vocab_size": 7}))
    out = llmjax_cli("generate", f"--workdir={tmp_path}", "--prompt=ab", check=False)
    assert out.returncode == 2
    assert out.stderr.strip().splitlines()[-1].startswith(
        f"llmjax: error: {tmp_path}/tokenizer/tokenizer_config.json describes another id layout")
    CharTokenizer.train(["abc"]).save(tmp_path / "tokenizer")  # a good tokenizer, no checkpoint
    with pytest.raises(FileNotFoundError, match="no checkpoint in .*saved at least one") as e:
        llmjax.load(tmp_path)
    assert "init.workdir" not in str(e.value)  # the message fits load/eval/generate too


def test_generate_is_reproducible_and_greedy_follows_the_logits(trained):
    args = ["generate", f"--workdir={trained}", "--prompt=abc", "--max_new_tokens=12"]
    first = llmjax_cli(*args, "--seed=3").stdout
    assert first == llmjax_cli(*args, "--seed=3").stdout
    assert first.startswith("abc")
    run = llmjax.load(trained)
    greedy = run.generate("abc", max_new_tokens=5, temperature=0.0)
    expected = ""
    for _ in range(5):
        logits = run.logits(["abc" + expected])[0, -1]
        token = int(logits.argmax())
        if token == run.tokenizer.eos_id:
            break
        expected += run.tokenizer.decode([token])
    assert greedy == expected


@pytest.mark.parametrize("option,expected", [
    (dict(temperature=-1.0), "temperature=-1.0 must be >= 0"),
    (dict(top_k=-3), "top_k=-3 must be >= 0"),
    (dict(top_p=0.0), "top_p=0.0 must be in"),
    (dict(beam_size=0), "beam_size=0 must be at least 1"),
    (dict(max_new_tokens=0), "max_new_tokens=0 must be at least 1"),
    (dict(min_p=1.0), r"min_p=1.0 must be in \[0, 1\)"),
    (dict(repetition_penalty=0.0), "repetition_penalty=0.0 must be > 0"),
    (dict(beam_size=2, repetition_penalty=1.2), "beam search .* ranks by log-probability"),
])
def test_decoding_options_out_of_range_are_refused(trained, option, expected):
    with pytest.raises(ConfigError, match=expected):
        llmjax.load(trained).generate("abc", **option)


def test_a_text_over_max_len_is_refused_but_a_long_prompt_keeps_its_end(trained):
    run = llmjax.load(trained)  # model.max_len = 64
    with pytest.raises(ConfigError, match="a text is 65 tokens long .* over model.max_len=64"):
        run.logits(["a" * 64])  # <bos> + 64
    # generate keeps the prompt's last max_len - max_new_tokens tokens
    long_prompt = "cab" * 40
    assert (run.generate(long_prompt, max_new_tokens=8, temperature=0.0)
            == run.generate(long_prompt[-56:], max_new_tokens=8, temperature=0.0))


def test_a_bad_generate_flag_is_one_cli_line(trained):
    out = llmjax_cli("generate", f"--workdir={trained}", "--prompt=ab", "--top_p=1.5",
                     check=False)
    assert out.returncode == 2
    assert out.stderr.strip().splitlines()[-1] == (
        "llmjax: error: top_p=1.5 must be in (0, 1] (1 = no nucleus filter)")


def test_a_prompt_the_tokenizer_does_not_know_is_warned_about(trained, capsys):
    import types
    from unittest import mock

    from llmjax import commands

    run = llmjax.load(trained)  # a char tokenizer of the generated letters a, b, ...
    flags = types.SimpleNamespace(workdir=str(trained), step=None, config=run.config,
                                  prompt="abxyz", messages=None, max_new_tokens=1,
                                  temperature=0.0, top_k=None, top_p=None, seed=None,
                                  beam_size=None)
    with mock.patch.object(commands.logging, "warning") as warning:
        commands.generate(flags)  # what `llmjax generate --prompt=abxyz` runs
    assert capsys.readouterr().out.startswith("abxyz")
    assert [call.args[1] for call in warning.call_args_list] == [3]  # x, y and z
    with mock.patch.object(commands.logging, "warning") as warning:
        commands.generate(types.SimpleNamespace(**{**vars(flags), "prompt": "abc"}))
    assert not warning.called


def test_a_batch_of_prompts_decodes_as_each_prompt_alone(trained):
    from llmjax.train import state as state_lib

    run = llmjax.load(trained)
    # freshly initialised weights: the 20-step model continues every prompt with one letter
    run.model = state_lib.build_model(run.config)
    prompts = ["abc", "cabbage dab"]  # left-padded to one batch
    for options in (dict(temperature=0.0), dict(beam_size=3)):
        batch = run.generate(prompts, max_new_tokens=10, **options)
        assert batch == [run.generate(p, max_new_tokens=10, **options) for p in prompts]
        assert len(set(batch)) == 2  # different continuations
    assert run.generate([]) == []


def test_log_likelihood_follows_the_logits_and_the_chain_rule(trained):
    import jax

    run = llmjax.load(trained)
    texts = ["abcab", "ca"]
    ll = run.log_likelihood(texts)
    np.testing.assert_allclose(ll, [run.log_likelihood([t])[0] for t in texts], atol=1e-5)
    logprobs = np.asarray(jax.nn.log_softmax(run.logits(["ca"])[0]))  # <bos> c a
    ids = run.tokenizer.encode("ca")
    assert ll[1] == pytest.approx(logprobs[0, ids[0]] + logprobs[1, ids[1]], abs=1e-5)
    # char tokens split exactly: log p("abcab") = log p("abc") + log p("ab" | "abc")
    after = run.log_likelihood(["abc"], ["ab"])
    assert ll[0] == pytest.approx(run.log_likelihood(["abc"])[0] + after[0], abs=1e-4)


def test_python_api_shapes(trained):
    run = llmjax.load(trained)
    h = run.hidden_states(["abc", "abcdef"])
    assert h.shape == (2, 7, 32) and (h[0, 4:] == 0).all()
    assert run.logits(["ab"]).shape == (1, 3, run.config.model.vocab_size)
    assert run.config.model.vocab_size == run.tokenizer.vocab_size
    # an empty list (say, the last chunk of a dataset) gives empty results
    assert run.hidden_states([]).shape == (0, 0, 32) and run.generate([]) == []
    assert run.logits([]).shape == (0, 0, run.config.model.vocab_size)
    assert run.log_likelihood([]).shape == (0,)


@pytest.mark.parametrize("signal_name", ["SIGTERM", pytest.param("SIGINT", marks=pytest.mark.slow)])
def test_a_signal_saves_a_checkpoint_and_the_resumed_run_equals_an_uninterrupted_one(
        tmp_path, signal_name):
    import signal
    import time


    c = tiny_config(**{"num_train_steps": 100000, "checkpoint_every_steps": 100000,
                       "log_every_steps": 1, "eval_every_steps": 100000})
    config_file = write_config_file(c, tmp_path / "cfg.py")
    workdir = tmp_path / "run"
    env = {**os.environ, "XLA_FLAGS": TEST_XLA_FLAGS}
    proc = subprocess.Popen([sys.executable, "-m", "llmjax", "train", f"--config={config_file}",
                             f"--workdir={workdir}"], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and len(read_metrics(workdir)) < 3:
        time.sleep(0.2)
    proc.send_signal(getattr(signal, signal_name))
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-2000:]
    saved = sorted(int(p.name) for p in (workdir / "checkpoints").iterdir())
    assert len(saved) == 1 and saved[0] >= 3
    assert f"saved a checkpoint at step {saved[0]}" in err
    logged = max(r["step"] for r in read_metrics(workdir))
    assert logged == saved[0]  # the step it stopped at was finished and logged
    # resumed to a few steps past the signal, it equals a run that was never stopped
    train_and_evaluate(c, workdir, stop_at_step=saved[0] + 4)
    train_and_evaluate(c, tmp_path / "full", stop_at_step=saved[0] + 4)
    losses = {d: {r["step"]: r["train/loss"] for r in read_metrics(tmp_path / d)
                  if "train/loss" in r} for d in ("run", "full")}
    assert sorted(losses["run"]) == list(range(1, saved[0] + 5))
    assert losses["run"] == losses["full"]
