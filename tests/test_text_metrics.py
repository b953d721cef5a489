"""The decoded-text metrics of `eval_decode_metrics` (evaluation/text_metrics.py): ROUGE against
values counted by hand, the sentence split ROUGE-Lsum depends on, BLEU and chrF at their
extremes, and the names a selection reports; then end to end, a seq2seq run that reports and
keeps its best checkpoint by ROUGE-L."""

import json

import pytest
from conftest import tiny_config

from llmjax import configs, validation
from llmjax.evaluation.text_metrics import reported_names, sentence_lines, text_metrics
from llmjax.train.loop import train_and_evaluate


def test_rouge_counts_unigrams_bigrams_and_the_longest_common_subsequence():
    # hypothesis "the cat sat on the mat" vs reference "the cat lay on the mat": 5 of 6 words
    # shared both ways; bigrams the-cat, on-the, the-mat of 5; the LCS "the cat on the mat"
    metrics = text_metrics("rouge", ["the cat sat on the mat"], ["the cat lay on the mat"])
    assert metrics == pytest.approx({"rouge1": 500 / 6, "rouge2": 60.0, "rougeL": 500 / 6,
                                     "rougeLsum": 500 / 6})


def test_rouge_stems_lowercases_and_averages_over_examples():
    # Porter stems: cats -> cat, running / runs -> run; 2 of 3 words each side, no bigram
    one = text_metrics("rouge", ["Cats are RUNNING"], ["the cat runs"])
    assert one == pytest.approx({"rouge1": 200 / 3, "rouge2": 0.0, "rougeL": 200 / 3,
                                 "rougeLsum": 200 / 3})
    two = text_metrics("rouge", ["Cats are RUNNING", "same text"], ["the cat runs", "same text"])
    assert two["rouge1"] == pytest.approx((200 / 3 + 100) / 2)  # a mean of F-measures


def test_rouge_lsum_matches_sentence_by_sentence():
    # the same two sentences in the other order: one LCS over the whole text finds half the
    # words; summary-level LCS matches each reference sentence whole
    metrics = text_metrics("rouge", ["c d. a b."], ["a b. c d."])
    assert metrics["rougeL"] == pytest.approx(50.0)
    assert metrics["rougeLsum"] == pytest.approx(100.0)
    assert sentence_lines("One. Two!  Three?\nFour e.g. five") == (
        "One.\nTwo!\nThree?\nFour e.g.\nfive")  # an abbreviation ends a sentence too


def test_bleu_chrf_and_exact_match_at_their_extremes():
    same = text_metrics("bleu,chrf,exact_match", ["a small house here", "ok"],
                        ["a small house here", " ok "])
    assert same == pytest.approx({"bleu": 100.0, "chrf": 100.0, "exact_match": 1.0})
    disjoint = text_metrics("bleu,chrf,exact_match", ["xyz qqq"], ["abc def"])
    assert disjoint == pytest.approx({"bleu": 0.0, "chrf": 0.0, "exact_match": 0.0})


def test_a_selection_reports_its_names_in_order_and_bad_ones_are_config_errors():
    assert reported_names("chrf,rouge") == ("chrf", "rouge1", "rouge2", "rougeL", "rougeLsum")
    assert reported_names(configs.base_config().eval_decode_metrics) == ("bleu", "exact_match")
    for bad in ("bleu,meteor", "bleu,bleu", "bleu,", ""):
        with pytest.raises(configs.ConfigError, match="names from bleu, chrf, rouge, exact_match"):
            validation.validate(tiny_config(eval_decode_metrics=bad))


@pytest.mark.slow
def test_a_seq2seq_run_reports_rouge_and_keeps_its_best_checkpoint_by_it(tmp_path):
    """~11 s (the default suite's `llmjax eval` of the reversal run reports ROUGE too)."""
    c = tiny_config(**{"model.arch": "encoder_decoder", "objective": "seq2seq",
                       "data.source": "generated:reverse", "model.position_embedding": "relative",
                       "seq_len": 16, "target_seq_len": 16, "model.max_len": 16,
                       "tokenizer.extra_ids": 0, "data.generated.max_pair_length": 8,
                       "num_train_steps": 4, "eval_every_steps": 2, "eval_decode_examples": 8,
                       "eval_decode_metrics": "rouge,chrf",
                       "checkpoint_best_metric": "rougeL"})
    metrics = train_and_evaluate(c, tmp_path / "run")
    names = {"eval/rouge1", "eval/rouge2", "eval/rougeL", "eval/rougeLsum", "eval/chrf"}
    assert names <= set(metrics) and "eval/bleu" not in metrics
    assert all(0.0 <= metrics[n] <= 100.0 for n in names)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text()
            .splitlines()]
    evals = [r for r in rows if "eval/rougeL" in r]
    assert [r["step"] for r in evals] == [2, 4]
    best = max(evals, key=lambda r: (r["eval/rougeL"], -r["step"]))  # the first of equals
    saved = [p.name for p in (tmp_path / "run" / "best" / "checkpoints").iterdir()
             if p.name.isdigit()]
    assert saved == [str(best["step"])]
