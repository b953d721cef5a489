"""Next-sentence prediction: balanced pairs, negatives from other documents, learning."""

import numpy as np
from conftest import shared_file, tiny_config

from llmjax.data import pipeline
from llmjax.data.tokenizers import ByteTokenizer
from llmjax.objectives import get_objective
from llmjax.objectives.nsp import IS_NEXT, SegmentPairs, draw_second
from llmjax.train.loop import train_and_evaluate


def test_pairs_are_balanced_and_negatives_come_from_other_documents():
    rng = np.random.default_rng(0)
    docs = [[np.array([d, s]) for s in range(30)] for d in range(60)]
    labels = []
    for d in range(60):
        for i in range(29):
            b, label = draw_second(docs, d, i, rng)
            labels.append(label)
            if label == IS_NEXT:
                assert b[0] == d and b[1] == i + 1
            else:
                assert b[0] != d, "a negative never comes from the same document"
    assert abs((np.array(labels) == IS_NEXT).mean() - 0.5) < 0.05  # 4 standard deviations


def test_pairs_are_drawn_afresh_each_batch_and_fixed_for_eval(tmp_path):
    docs = [[np.array([10 + d, 20 + s]) for s in range(5)] for d in range(8)]
    examples = SegmentPairs(docs, 16, ByteTokenizer())
    assert len(examples) == 8 * 4
    batch = examples[np.arange(len(examples))]
    first = examples.corrupt(batch, np.random.default_rng(0))
    again = examples.corrupt(batch, np.random.default_rng(0))
    other = examples.corrupt(batch, np.random.default_rng(1))
    np.testing.assert_array_equal(first["tokens"], again["tokens"])
    assert (first["label"] != other["label"]).any()  # another epoch, other pairs
    # [<bos>] A [<eos>] B [<eos>]: A is the example's own segment in every draw
    np.testing.assert_array_equal(first["tokens"][:, 1:3], other["tokens"][:, 1:3])
    padded = examples.corrupt({"first": np.zeros((1, 2), np.int32),
                               "weights": np.zeros(1, np.float32)}, np.random.default_rng(0))
    assert padded["segment_ids"].sum() == 0 and padded["weights"][0] == 0


def _wiki_text(path, docs=40, rng_seed=0):
    """Documents whose segments continue each other: each line shares a topic word."""
    rng = np.random.default_rng(rng_seed)
    topics = [f"topic{i}" for i in range(docs)]
    lines = []
    for t in topics:
        lines += [f" = {t.title()} = ", ""]
        for _ in range(6):
            lines.append(f" {t} {' '.join(rng.choice(['a', 'b', 'c', 'd'], 5))} {t} .")
    path.write_text("\n".join(lines) + "\n")
    return path


def test_nsp_trains_end_to_end_on_balanced_eval_pairs(tmp_path):
    """NSP alone: runs and reports its metrics. (Learning it is tested with MLM + NSP: from
    scratch on freshly drawn pairs a tiny encoder sits at chance for thousands of steps, since
    no single token predicts the label; see test_mlm_nsp.)"""
    train = _wiki_text(tmp_path / "train.txt", 60, 0)
    dev = _wiki_text(tmp_path / "dev.txt", 20, 1)
    c = tiny_config(**{"model.arch": "encoder", "objective": "nsp", "model.norm_position": "post",
                       "data.source": f"text:{train}", "data.eval_source": f"text:{dev}",
                       "data.validation_fraction": 0.0, "tokenizer.kind": "wordpiece",
                       "tokenizer.vocab_size": 200, "seq_len": 32, "batch_size": 16,
                       "num_train_steps": 20, "eval_every_steps": 20,
                       "checkpoint_every_steps": 20, "log_every_steps": 10})
    metrics = train_and_evaluate(c, tmp_path / "run")
    assert set(metrics) == {"eval/loss", "eval/perplexity", "eval/nsp_accuracy"}
    assert abs(metrics["eval/loss"] - np.log(2)) < 0.1  # near chance after 20 steps
    tok, _ = pipeline.get_tokenizer(c, str(tmp_path / "run"))
    labels = np.concatenate([b["label"][b["weights"] > 0] for b in
                             pipeline.eval_batches(c, tok, get_objective("nsp"))])
    assert len(labels) == 20 * 5 and 0.35 < labels.mean() < 0.65


def test_wikitext_gives_balanced_pairs():
    path = shared_file("wikitext-2", "test.txt")
    c = tiny_config(**{"objective": "nsp", "model.arch": "encoder", "tokenizer.kind": "byte",
                       "data.source": f"text:{path}", "seq_len": 128})
    tok, _ = pipeline.get_tokenizer(c, None)
    examples = pipeline.load_examples(c, tok, get_objective("nsp"), c.data.source, "all",
                                      train=True, shard=pipeline.HostShard())
    labels = examples.corrupt(examples[np.arange(len(examples))],
                              np.random.default_rng(0))["label"]
    assert len(labels) > 1000 and abs(labels.mean() - 0.5) < 0.03
