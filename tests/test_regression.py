"""Sentence regression (STS-B-style scores): Pearson from summed moments, training end to end,
predict's score, bad labels."""

import json
import types

import numpy as np
import pytest
from conftest import optimised, run_command, tiny_config

import llmjax
from llmjax import api, commands
from llmjax.configs import ConfigError
from llmjax.data.text_builder import DataError
from llmjax.evaluation.metrics import pearson_from_moments
from llmjax.train.loop import train_and_evaluate

GOOD = ["good", "great", "fine", "superb"]
FILLER = ["the", "movie", "plot", "was", "and", "cast", "a", "very", "story", "it"]


def moments(x, y, w):
    return np.array([w.sum(), w @ x, w @ y, w @ x**2, w @ y**2, w @ (x * y)])


def test_pearson_from_moments_matches_numpy_and_adds_up():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=50), rng.normal(size=50)
    y = 0.6 * x + y
    w = (rng.random(50) > 0.2).astype(float)  # weight 0 drops an example
    expected = np.corrcoef(x[w > 0], y[w > 0])[0, 1]
    assert pearson_from_moments(moments(x, y, w)) == pytest.approx(expected, abs=1e-12)
    halves = moments(x[:20], y[:20], w[:20]) + moments(x[20:], y[20:], w[20:])
    assert pearson_from_moments(halves) == pytest.approx(expected, abs=1e-12)
    assert pearson_from_moments(moments(np.ones(5), np.arange(5.0), np.ones(5))) == 0.0


def write_scores_tsv(path, rows, seed):
    """Score = how many praising words the sentence holds (0..3)."""
    rng = np.random.default_rng(seed)
    lines = ["sentence\tscore"]
    for _ in range(rows):
        k = int(rng.integers(4))
        words = list(rng.choice(FILLER, 6 - k)) + list(rng.choice(GOOD, k))
        rng.shuffle(words)
        lines.append(" ".join(words) + f"\t{k:.1f}")
    path.write_text("\n".join(lines) + "\n")
    return path


def regression_config(tmp_path, **overrides):
    train = write_scores_tsv(tmp_path / "train.tsv", 600, 0)
    dev = write_scores_tsv(tmp_path / "dev.tsv", 100, 1)
    return tiny_config(**{"model.arch": "encoder", "objective": "regression",
                          "model.norm_position": "post", "data.source": f"tsv:{train}",
                          "data.eval_source": f"tsv:{dev}", "data.text_column": "sentence",
                          "data.label_column": "score", "tokenizer.kind": "wordpiece",
                          "tokenizer.vocab_size": 100, "seq_len": 16, "batch_size": 16,
                          "num_train_steps": 300, "eval_every_steps": 300,
                          "checkpoint_every_steps": 300, "log_every_steps": 100, **overrides})


def test_regression_learns_scores_and_predicts_them(tmp_path, capsys):
    """Measured: dev Pearson 0.9995, MSE 0.0018 and Spearman 0.967 (from every dev prediction,
    as `llmjax eval` reports it too) after these 150 steps."""
    c = regression_config(tmp_path, **{"num_train_steps": 150, "eval_every_steps": 150,
                                       "checkpoint_every_steps": 150, "log_every_steps": 50})
    metrics = train_and_evaluate(optimised(c), tmp_path / "run")
    assert set(metrics) == {"eval/loss", "eval/pearson", "eval/spearman"}
    assert metrics["eval/pearson"] > 0.9 and metrics["eval/loss"] < 0.25  # label variance 1.25
    assert metrics["eval/spearman"] > 0.8
    high = run_command("predict", tmp_path / "run", capsys,
                       text="superb great fine story")["score"]
    run = llmjax.load(tmp_path / "run")
    low = run.score("the plot was a movie")
    assert high == pytest.approx(3.0, abs=0.6) and low == pytest.approx(0.0, abs=0.6)
    texts = ["the plot was a movie", "superb great fine story", "fine"]  # one padded batch
    np.testing.assert_allclose(run.score(texts), [run.score(t) for t in texts], atol=1e-5)
    compiled = api._jitted_apply._cache_size()
    pairs = texts[::-1]
    np.testing.assert_allclose(run.score(texts, pairs), [
        run.score(a, b) for a, b in zip(texts, pairs, strict=True)], atol=1e-5)
    # inputs are padded to bucket sizes: other lengths and batch sizes reuse those programs
    assert api._jitted_apply._cache_size() == compiled
    assert run.score([]) == []
    with pytest.raises(ConfigError, match="3 texts but 2 text pairs"):
        run.score(texts, pairs[:2])
    run.config.data.text_pair_column = "sentence2"  # as if trained on pairs
    with pytest.raises(ConfigError, match="this run classifies text pairs .* give text_pair"):
        run.score(texts)
    run.config.data.text_pair_column = None
    capsys.readouterr()
    commands.eval(types.SimpleNamespace(workdir=str(tmp_path / "run"), step=None,
                                        config=run.config, split=None))  # `llmjax eval`
    out = capsys.readouterr().out
    evaluated = json.loads(out[out.index("{"):])
    assert evaluated["eval/pearson"] == pytest.approx(metrics["eval/pearson"], abs=1e-6)
    assert evaluated["eval/spearman"] == pytest.approx(metrics["eval/spearman"], abs=1e-6)


def test_spearman_ranks_ties_by_their_mean_and_is_zero_for_constant_scores():
    from llmjax.evaluation.ranks import spearman

    assert spearman(np.array([1.0, 2, 3, 4]), np.array([10.0, 30, 20, 40])) == pytest.approx(
        1 - 6 * 2 / (4 * 15))  # rank differences 0, 1, 1, 0
    # ranks (1.5, 1.5, 3, 4) against (1, 2, 3, 4): Pearson's r of the ranks, 4.5 / sqrt(4.5 * 5)
    assert spearman(np.array([1.0, 1, 2, 3]), np.array([1.0, 2, 3, 4])) == pytest.approx(
        4.5 / np.sqrt(4.5 * 5))
    assert spearman(np.array([2.0, 2, 2]), np.array([1.0, 2, 3])) == 0.0


def test_a_label_that_is_not_a_number_is_a_clear_error(tmp_path):
    bad = tmp_path / "bad.tsv"
    bad.write_text("sentence\tscore\nfine movie\t2.5\ndull movie\tlow\n")
    c = regression_config(tmp_path, **{"data.eval_source": f"tsv:{bad}"})
    with pytest.raises(DataError, match=r"record 1: score='low' is not a number"):
        train_and_evaluate(c, tmp_path / "run")
