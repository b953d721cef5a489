"""Next-sentence prediction: balanced pairs, negatives from other documents, learning."""

import numpy as np
from conftest import shared_file, tiny_config

from llmjax.data import pipeline
from llmjax.objectives import get_objective
from llmjax.objectives.nsp import IS_NEXT, make_pairs
from llmjax.train.loop import train_and_evaluate


def test_pairs_are_balanced_and_negatives_come_from_other_documents():
    rng = np.random.default_rng(0)
    docs = [[np.array([d, s]) for s in range(30)] for d in range(60)]
    pairs = make_pairs(docs, rng)
    assert len(pairs) == 60 * 29
    labels = np.array([label for _, _, label in pairs])
    assert abs((labels == IS_NEXT).mean() - 0.5) < 0.05  # 4 standard deviations
    for a, b, label in pairs:
        if label == IS_NEXT:
            assert a[0] == b[0] and b[1] == a[1] + 1
        else:
            assert a[0] != b[0], "a negative never comes from the same document"


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


def test_nsp_learns_document_membership(tmp_path):
    """~17 s. Segments of one document share a topic word, so NotNext is detectable."""
    train = _wiki_text(tmp_path / "train.txt", 60, 0)
    dev = _wiki_text(tmp_path / "dev.txt", 20, 1)
    c = tiny_config(**{"model.arch": "encoder", "objective": "nsp", "model.norm_position": "post",
                       "data.source": f"text:{train}", "data.eval_source": f"text:{dev}",
                       "data.validation_fraction": 0.0, "tokenizer.kind": "wordpiece",
                       "tokenizer.vocab_size": 200, "seq_len": 32, "batch_size": 16,
                       "num_train_steps": 600, "eval_every_steps": 600,
                       "checkpoint_every_steps": 600, "log_every_steps": 100,
                       "optimizer.learning_rate": 1e-3})
    metrics = train_and_evaluate(c, tmp_path / "run")
    assert set(metrics) == {"eval/loss", "eval/perplexity", "eval/nsp_accuracy"}
    assert metrics["eval/nsp_accuracy"] > 0.65  # measured 0.73; chance is 0.5


def test_wikitext_gives_balanced_pairs():
    path = shared_file("wikitext-2", "test.txt")
    c = tiny_config(**{"objective": "nsp", "model.arch": "encoder", "tokenizer.kind": "byte",
                       "data.source": f"text:{path}", "seq_len": 128})
    tok, _ = pipeline.get_tokenizer(c, None)
    examples = pipeline.load_examples(c, tok, get_objective("nsp"), c.data.source, "all",
                                      train=True, shard=pipeline.HostShard())
    labels = examples[np.arange(len(examples))]["label"]
    assert len(labels) > 1000 and abs(labels.mean() - 0.5) < 0.03
