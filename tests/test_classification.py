"""Sequence classification: TSV data, labels, metrics, predict, fine-tuning from MLM."""

import json

import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds
from conftest import optimised, tiny_config
from flax import nnx
from test_cli import llmjax_cli

import llmjax
from llmjax.data import pipeline
from llmjax.data.text_builder import DataError
from llmjax.data.tokenizers import ByteTokenizer
from llmjax.objectives import get_objective
from llmjax.objectives.classification import encode_pair
from llmjax.train import state as state_lib
from llmjax.train.checkpoint import ShapeMismatchError
from llmjax.train.loop import train_and_evaluate
from llmjax.train.start import initial_params

GOOD, BAD = ["good", "great", "fine", "superb"], ["bad", "awful", "dull", "poor"]
FILLER = ["the", "movie", "plot", "was", "and", "cast", "a", "very", "story", "it"]


def write_sentiment_tsv(path, rows, seed):
    rng = np.random.default_rng(seed)
    lines = ["sentence\tlabel"]
    for _ in range(rows):
        label = int(rng.integers(2))
        words = list(rng.choice(FILLER, 6)) + [rng.choice(GOOD if label else BAD)]
        rng.shuffle(words)
        lines.append(" ".join(words) + f" \t{label}")
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def tsv(tmp_path_factory):
    d = tmp_path_factory.mktemp("sentiment")
    return write_sentiment_tsv(d / "train.tsv", 600, 0), write_sentiment_tsv(d / "dev.tsv", 100, 1)


def classify_config(tsv, **overrides):
    train, dev = tsv
    return tiny_config(**{"model.arch": "encoder", "objective": "classification",
                          "model.norm_position": "post", "data.source": f"tsv:{train}",
                          "data.eval_source": f"tsv:{dev}", "data.text_column": "sentence",
                          "tokenizer.kind": "bpe", "tokenizer.vocab_size": 300,
                          "seq_len": 48, "batch_size": 16, "num_train_steps": 150,
                          "eval_every_steps": 150, "checkpoint_every_steps": 150,
                          "log_every_steps": 50, **overrides})


def test_pair_encoding_truncates_the_longer_part_first():
    tok = ByteTokenizer()
    tokens, types = encode_pair(tok, "abcdefgh", "xy", 9)
    assert tok.decode(tokens) == "abcdxy" and len(tokens) == 9
    assert types.tolist() == [0] * 6 + [1] * 3


def test_examples_are_encoded_as_predict_encodes_each_text_pair(tmp_path):
    """Training examples are tokenized a block at a time; each must equal encode_pair, which
    predict uses on one text (pair)."""
    from llmjax.data import sources

    n = sources.READ_BLOCK + 5  # two blocks
    rows = [f"a film {'very ' * (i % 9)}fine\tand a plot {'quite ' * (i % 7)}dull\t{i % 3}"
            for i in range(n)]
    (tmp_path / "pairs.tsv").write_text("s1\ts2\tlabel\n" + "\n".join(rows) + "\n")
    c = tiny_config(**{"model.arch": "encoder", "objective": "classification",
                       "data.source": f"tsv:{tmp_path}/pairs.tsv", "data.text_column": "s1",
                       "data.text_pair_column": "s2", "data.validation_fraction": 0.0,
                       "tokenizer.kind": "wordpiece", "tokenizer.vocab_size": 60,
                       "seq_len": 12})
    objective = get_objective("classification")
    objective.resolve_config(c)
    tok, _ = pipeline.get_tokenizer(c, None)
    examples = pipeline.load_examples(c, tok, objective, c.data.source, "train", train=True,
                                      shard=pipeline.HostShard())
    batch = examples[np.arange(n)]
    for i, row in enumerate(rows):
        text, pair, label = row.split("\t")
        tokens, types = encode_pair(tok, text, pair, c.seq_len)
        assert batch["tokens"][i, :len(tokens)].tolist() == tokens.tolist()
        assert batch["token_types"][i, :len(types)].tolist() == types.tolist()
        assert batch["segment_ids"][i].sum() == len(tokens)
        assert batch["label"][i] == int(label)


@pytest.mark.slow
def test_classifier_trains_from_scratch_and_reports_all_metrics(tsv, tmp_path):
    """~15 s. Measured: dev accuracy 1.0 after 150 steps (one word decides the label)."""
    metrics = train_and_evaluate(classify_config(tsv), tmp_path)
    assert set(metrics) == {"eval/loss", "eval/perplexity", "eval/accuracy", "eval/precision",
                            "eval/recall", "eval/f1", "eval/mcc"}
    assert metrics["eval/accuracy"] > 0.9 and metrics["eval/mcc"] > 0.8
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["data"]["labels"] == "0,1" and saved["model"]["num_classes"] == 2
    out = json.loads(llmjax_cli("predict", f"--workdir={tmp_path}",
                                "--text=the plot was superb").stdout)
    assert out["label"] == "1" and sum(out["probabilities"].values()) == pytest.approx(1.0)
    evaluated = json.loads(llmjax_cli("eval", f"--workdir={tmp_path}").stdout)
    assert evaluated["eval/accuracy"] == pytest.approx(metrics["eval/accuracy"])
    # any labelled source and split evaluates; an unlabelled one is a clear error
    on_train = json.loads(llmjax_cli("eval", f"--workdir={tmp_path}", "--split=all",
                                     f"--config.data.eval_source=tsv:{tsv[0]}").stdout)
    assert on_train["all/accuracy"] > 0.9
    unlabelled = tmp_path / "unlabelled.tsv"
    unlabelled.write_text("sentence\nthe plot was superb\n")
    out = llmjax_cli("eval", f"--workdir={tmp_path}",
                     f"--config.data.eval_source=tsv:{unlabelled}", check=False)
    assert out.returncode != 0 and "records have no column 'label'" in out.stderr


def fine_tuning_start(c, pre):
    """(the parameters a fine-tuning run of `c` starts from, the fresh ones they replace, the
    parameters of the pretraining run `pre`), resolved as `train` resolves them."""
    tok, _ = pipeline.get_tokenizer(c, None)  # the pretraining run's tokenizer
    c.model.vocab_size = tok.vocab_size
    get_objective(c.objective).resolve_config(c)
    _, fresh = nnx.split(state_lib.build_model(c))
    return initial_params(c, fresh), fresh, nnx.state(llmjax.load(pre).model)


def test_finetuning_from_mlm_restores_the_encoder_and_starts_a_fresh_head(tsv, tmp_path):
    pre = tmp_path / "mlm"
    train_and_evaluate(classify_config(tsv, **{"objective": "mlm", "num_train_steps": 20}), pre)
    c = classify_config(tsv, **{"init.workdir": str(pre), "num_train_steps": 2})
    params, fresh, pretrained = fine_tuning_start(c, pre)
    same = jax.tree.map(np.array_equal, params["encoder"], pretrained["encoder"])
    assert all(jax.tree.leaves(same)), "encoder weights are restored bit-identically"
    assert all(jax.tree.leaves(jax.tree.map(np.array_equal, params["classifier"],
                                            fresh["classifier"]))), "the head stays fresh"
    train_and_evaluate(optimised(c), tmp_path / "fine")
    assert (tmp_path / "fine/tokenizer/tokenizer.json").read_text() == \
        (pre / "tokenizer/tokenizer.json").read_text()
    wrong = classify_config(tsv, **{"init.workdir": str(pre), "model.emb_dim": 48})
    with pytest.raises(ShapeMismatchError, match="encoder/embed/embedding has shape"):
        train_and_evaluate(wrong, tmp_path / "wrong")


def test_bad_tsv_rows_and_unknown_labels_are_clear_errors(tsv, tmp_path):
    bad = tmp_path / "bad.tsv"
    bad.write_text("sentence\tlabel\nfine movie \t1\nno label here\n")
    with pytest.raises(DataError, match=r"bad.tsv:3: 1 tab-separated fields, the header has 2"):
        train_and_evaluate(classify_config(tsv, **{"data.source": f"tsv:{bad}"}), tmp_path / "a")
    odd = tmp_path / "odd.tsv"
    odd.write_text("sentence\tlabel\nfine movie \t7\n")
    with pytest.raises(DataError, match=r"label '7' \(record 0\) is not in the label set"):
        train_and_evaluate(classify_config(tsv, **{"data.eval_source": f"tsv:{odd}"}),
                           tmp_path / "b")


def test_glue_sst2_catalog_name_through_mock_data():
    c = tiny_config(**{"model.arch": "encoder", "objective": "classification",
                       "data.source": "tfds:glue/sst2", "data.text_column": "sentence",
                       "tokenizer.kind": "byte", "data.labels": "0,1", "seq_len": 32})
    with tfds.testing.mock_data(num_examples=16,
                                as_data_source_fn=lambda *a, **k: [
                                    {"sentence": b"a fine film", "label": i % 2, "idx": i}
                                    for i in range(16)]):
        tok, _ = pipeline.get_tokenizer(c, None)
        examples = pipeline.load_examples(c, tok, get_objective("classification"),
                                          "tfds:glue/sst2", "train", train=True,
                                          shard=pipeline.HostShard())
    batch = examples[np.arange(4)]
    assert batch["label"].tolist() == [0, 1, 0, 1]
    assert tok.decode(batch["tokens"][0]) == "a fine film"


def test_glue_mrpc_sentence_pairs_through_mock_data():
    c = tiny_config(**{"model.arch": "encoder", "objective": "classification",
                       "data.source": "tfds:glue/mrpc", "data.text_column": "sentence1",
                       "data.text_pair_column": "sentence2", "tokenizer.kind": "byte",
                       "seq_len": 32})
    rows = [{"sentence1": f"first {i}".encode(), "sentence2": f"second {i}".encode(),
             "label": i % 2, "idx": i} for i in range(16)]
    with tfds.testing.mock_data(num_examples=16, as_data_source_fn=lambda *a, **k: rows):
        get_objective("classification").resolve_config(c)  # label set from the train split
        tok, _ = pipeline.get_tokenizer(c, None)
        examples = pipeline.load_examples(c, tok, get_objective("classification"),
                                          "tfds:glue/mrpc", "validation", train=False,
                                          shard=pipeline.HostShard())
    assert c.data.labels == "0,1"
    batch = examples[np.arange(3)]
    tokens, types = batch["tokens"][2], batch["token_types"][2]
    real = batch["segment_ids"][2] > 0
    assert tok.decode(tokens[real & (types == 0)]) == "first 2"
    assert tok.decode(tokens[real & (types == 1)]) == "second 2"
    assert batch["label"].tolist() == [0, 1, 0]
