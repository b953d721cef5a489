"""Sequence classification and regression with a decoder, as GPT-1 fine-tunes and Hugging Face's
ForSequenceClassification classifies: a bias-free head on the last token's state, fine-tuned
from a causal-LM run's parameters and tokenizer."""

import json
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import jitted, tiny_config
from flax import nnx
from test_classification import fine_tuning_start, write_sentiment_tsv
from test_cli import llmjax_cli

import llmjax
from llmjax import commands, configs, validation
from llmjax.models import Decoder
from llmjax.train import state as state_lib
from llmjax.train.loop import train_and_evaluate
from llmjax.train.writer import read_metrics


def test_the_decoder_classifies_from_the_last_real_token():
    c = tiny_config(**{"model.tie_embeddings": False, "model.vocab_size": 16})
    model = Decoder(state_lib.model_config(c), rngs=nnx.Rngs(params=0), heads=("classifier",),
                    num_classes=3)
    assert not hasattr(model, "lm_head")  # a classifier carries no vocabulary projection
    assert "bias" not in nnx.state(model)["classifier"]["dense"]  # Hugging Face's `score`
    classify, hidden_states = jitted(model, "classify"), jitted(model, "hidden_states")
    real = np.array([[5, 9, 3, 7, 2]], np.int32)

    def padded(tokens, length, pad=0):
        row = np.full((1, length), pad, np.int32)
        row[0, : tokens.shape[1]] = tokens
        return jnp.asarray(row), jnp.asarray((np.arange(length) < tokens.shape[1])[None]
                                             .astype(np.int32))

    logits = classify(*padded(real, 8)[:1], segment_ids=padded(real, 8)[1])
    hidden = hidden_states(real, segment_ids=jnp.ones_like(real))[:, -1]
    kernel = nnx.state(model)["classifier"]["dense"]["kernel"][...]
    np.testing.assert_allclose(logits, hidden @ kernel, rtol=1e-5, atol=1e-6)
    for length, pad in ((5, 0), (12, 0), (12, 11)):  # padding, of any length or id, is unread
        tokens, segments = padded(real, length, pad)
        np.testing.assert_allclose(classify(tokens, segment_ids=segments), logits, atol=1e-6)
    for position in (0, 4):  # the first token is read through attention, the last directly
        changed = real.copy()
        changed[0, position] = 1
        tokens, segments = padded(changed, 8)
        assert not np.allclose(classify(tokens, segment_ids=segments), logits, atol=1e-4)


@pytest.fixture(scope="module")
def sentiment(tmp_path_factory):
    """A causal-LM run (untied lm_head) pretrained on the sentences, and the TSV splits."""
    d = tmp_path_factory.mktemp("gpt_sentiment")
    train = write_sentiment_tsv(d / "train.tsv", 600, 0)
    dev = write_sentiment_tsv(d / "dev.tsv", 100, 1)
    (d / "text.txt").write_text("\n".join(line.split("\t")[0] for line in
                                          train.read_text().splitlines()[1:]))
    pre = d / "pre"
    train_and_evaluate(tiny_config(**{"data.source": f"text:{d}/text.txt",
                                      "tokenizer.kind": "bpe", "tokenizer.vocab_size": 300,
                                      "model.tie_embeddings": False, "num_train_steps": 20}), pre)
    return d, train, dev, pre


def gpt_classify_config(sentiment, **overrides):
    d, train, dev, pre = sentiment
    return tiny_config(**{"objective": "classification", "init.workdir": str(pre),
                          "model.tie_embeddings": False, "data.source": f"tsv:{train}",
                          "data.eval_source": f"tsv:{dev}", "data.text_column": "sentence",
                          "seq_len": 48, "batch_size": 16, "num_train_steps": 100,
                          "eval_every_steps": 100, "checkpoint_every_steps": 100,
                          "log_every_steps": 50, **overrides})


def test_a_gpt_fine_tunes_for_classification_from_a_causal_lm_run(sentiment):
    d, train, dev, pre = sentiment
    c = gpt_classify_config(sentiment)
    params, fresh, pretrained = fine_tuning_start(c, pre)
    for name in ("embed", "position_embed", "layers", "final_norm"):  # the body, bit for bit
        assert all(jax.tree.leaves(jax.tree.map(np.array_equal, params[name],
                                                pretrained[name]))), name
    assert "lm_head" in pretrained and "lm_head" not in params  # the LM head is left behind
    assert all(jax.tree.leaves(jax.tree.map(np.array_equal, params["classifier"],
                                            fresh["classifier"]))), "the head starts fresh"

    metrics = train_and_evaluate(c, d / "fine")  # measured: dev accuracy 1.0 at step 100
    assert metrics["eval/accuracy"] > 0.9 and metrics["eval/mcc"] > 0.8, metrics
    run = llmjax.load(d / "fine")
    assert (d / "fine/tokenizer/tokenizer.json").read_text() == (
        pre / "tokenizer/tokenizer.json").read_text()
    label, probabilities = run.predict("the plot was superb")
    assert label == "1" and sum(probabilities.values()) == pytest.approx(1.0)
    assert run.predict(["a dull story", "a fine cast"])[0][0] == "0"
    logits = run.logits(["the plot was superb", "a dull story"])  # class logits, as predict's
    assert logits.shape == (2, 2)
    np.testing.assert_allclose(np.exp(logits[0]) / np.exp(logits[0]).sum(),
                               list(probabilities.values()), rtol=1e-5)
    with pytest.raises(configs.ConfigError, match="objective=classification .use predict"):
        run.generate("the plot")


def test_predict_writes_every_records_prediction_of_a_data_source(sentiment):
    """`llmjax predict --input=tsv:dev.tsv --out=FILE`: one line per record, in order, each
    Run.predict's; their accuracy is eval's (the fine-tuning test's run, or a fresh one)."""
    d, train, dev, pre = sentiment
    workdir = d / "fine"
    if not (workdir / "checkpoints").exists():  # this test alone: train the run it reads
        train_and_evaluate(gpt_classify_config(sentiment), workdir)
    out = d / "predictions.jsonl"
    llmjax_cli("predict", f"--workdir={workdir}", f"--input=tsv:{dev}", f"--out={out}")
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    records = [line.split("\t") for line in dev.read_text().splitlines()[1:]]
    assert [r["index"] for r in rows] == list(range(len(records))) == list(range(100))
    run = llmjax.load(workdir)
    expected = run.predict([text for text, _ in records[:20]])
    assert [(r["label"], r["probabilities"]) for r in rows[:20]] == pytest.approx(expected)
    accuracy = np.mean([r["label"] == label.strip() for r, (_, label) in
                        zip(rows, records, strict=True)])
    evaluated = [r for r in read_metrics(workdir) if "eval/accuracy" in r][-1]
    assert accuracy == pytest.approx(evaluated["eval/accuracy"])  # the run's eval of dev.tsv
    assert not list(d.glob(".predictions.jsonl.partial"))
    flags = types.SimpleNamespace(workdir=str(workdir), step=None, config=run.config,
                                  input=f"tsv:{dev}", out=None, text=None, split=None)
    with pytest.raises(configs.ConfigError, match="give --out, and no --text"):
        commands.predict(flags)


@pytest.mark.slow
def test_a_gpt_regresses_scores(sentiment):
    d, train, dev, pre = sentiment
    c = gpt_classify_config(sentiment, **{"objective": "regression", "num_train_steps": 60,
                                          "eval_every_steps": 60, "eval_decode_examples": 50})
    metrics = train_and_evaluate(c, d / "regress")  # measured: Pearson 0.999 at step 60
    # Spearman 0.866, the most 0 / 1 labels allow (their ranks tie): the scores rank right
    assert metrics["eval/pearson"] > 0.8 and metrics["eval/spearman"] > 0.8, metrics
    run = llmjax.load(d / "regress")
    assert run.score("the plot was superb") > run.score("the plot was awful")


def test_decoder_heads_without_a_language_model_refuse_likelihood_evals():
    with pytest.raises(configs.ConfigError, match="objective=classification trains a head"):
        validation.validate(tiny_config(**{"objective": "classification",
                                           "data.choice_eval_sources": "a=jsonl:x.jsonl"}))


@pytest.mark.slow
def test_pmap_and_meshes_give_one_devices_losses(tmp_path):
    """~35 s: the classifier's kernel sharded by the generic rules, as the encoder's."""
    from test_mesh import MESHES, family_setup, run_steps

    train = write_sentiment_tsv(tmp_path / "train.tsv", 100, 0)
    c, objective, batches = family_setup(tmp_path, "decoder", **{
        "objective": "classification", "data.source": f"tsv:{train}",
        "data.text_column": "sentence", "data.labels": "0,1", "model.tie_embeddings": False})
    single, _, _ = run_steps(c, objective, batches, "single")
    assert len(set(single)) == 3  # training moves: three different losses
    np.testing.assert_allclose(run_steps(c, objective, batches, "pmap")[0], single, atol=1e-5)
    for name, mesh in MESHES.items():
        losses, _, _ = run_steps(c, objective, batches, "mesh", mesh)
        np.testing.assert_allclose(losses, single, atol=1e-5, err_msg=f"mesh {name}")
