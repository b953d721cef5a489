"""data.extra_eval_sources: more eval sets beside the main one, each reported as
eval_NAME/<metric> in training and by `llmjax eval`, and usable as the best-checkpoint metric."""

import json

import numpy as np
import pytest
from conftest import run_command, tiny_config

from llmjax import configs, validation
from llmjax.train.loop import train_and_evaluate
from llmjax.train.writer import read_metrics


def test_extra_eval_sets_are_reported_by_name_in_training_and_eval(tmp_path, capsys):
    rng = np.random.default_rng(0)
    a = tmp_path / "a.txt"
    a.write_text("\n".join("".join(rng.choice(list("abc"), 60)) for _ in range(200)))
    b = tmp_path / "b.txt"
    b.write_text("abcabcabc\n" * 60)
    c = tiny_config(**{"data.source": f"text:{a}", "data.eval_source": f"text:{b}",
                       "data.extra_eval_sources": f"a=text:{a}; b=text:{b}",
                       "checkpoint_best_metric": "eval_a/loss", "seq_len": 16})
    final = train_and_evaluate(c, tmp_path / "run")
    # b is read whole (a file apart from the training one), as the main eval source is
    assert final["eval_b/loss"] == final["eval/loss"]
    # a is the training file: its validation split, which the model fits far better than b
    assert final["eval_a/loss"] < final["eval_b/loss"] - 0.1
    assert {k for k in final if k.startswith("eval_a/")} == {
        "eval_a/loss", "eval_a/perplexity", "eval_a/token_accuracy"}
    rows = [r for r in read_metrics(tmp_path / "run") if "eval_a/loss" in r]
    best_step = min(rows, key=lambda r: r["eval_a/loss"])["step"]
    assert (tmp_path / "run" / "best" / "checkpoints" / str(best_step)).exists()
    printed = run_command("eval", tmp_path / "run", capsys)
    for key in ("eval_a/loss", "eval_b/token_accuracy", "eval/loss"):
        assert printed[key] == pytest.approx(final[key], abs=1e-5)


@pytest.mark.parametrize("spec,message", [
    ("wiki", "write NAME=SOURCE;NAME=SOURCE"),
    ("wiki=", "write NAME=SOURCE;NAME=SOURCE"),
    ("wi ki=text:a.txt", "write NAME=SOURCE;NAME=SOURCE"),
    ("w=text:a.txt;w=text:b.txt", "names 'w' twice"),
    ("w=text:a.txt=0,text:b.txt", "the weight of 'text:a.txt' is 0"),
])
def test_malformed_extra_eval_sources_are_config_errors(spec, message):
    with pytest.raises(configs.ConfigError, match=message):
        validation.validate(tiny_config(**{"data.extra_eval_sources": spec}))


def test_a_best_metric_of_an_unknown_eval_set_lists_the_reported_names(tmp_path):
    c = tiny_config(**{"data.extra_eval_sources": "gen=generated",
                       "checkpoint_best_metric": "eval_other/loss"})
    with pytest.raises(configs.ConfigError, match=r"eval_other/loss.*eval_gen/loss"):
        train_and_evaluate(c, tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_multiple_choice_sets_score_choices_by_likelihood(tmp_path, capsys):
    """A decoder trained on the cycle abcabc... picks the choice that continues it (accuracy 1),
    in training and in `llmjax eval`; the scores are Run.log_likelihood's, per choice and per
    character for the normalised accuracy."""
    import llmjax
    from llmjax.evaluation.choices import ChoiceEval

    (tmp_path / "cycle.txt").write_text("abcabcabcabcabcabc\n" * 200)
    items = [{"context": "abcab", "choices": ["c", "a", "bb"], "label": 0},
             {"context": "bcabca", "choices": ["bcab", "b", "cc"], "label": "b"},
             {"context": "cab", "choices": ["ca", "ab", "b"], "label": 0}]
    (tmp_path / "mc.jsonl").write_text("".join(json.dumps(i) + "\n" for i in items))
    c = tiny_config(**{"data.source": f"text:{tmp_path}/cycle.txt", "seq_len": 16,
                       "num_train_steps": 120, "eval_every_steps": 120,
                       "log_every_steps": 40, "checkpoint_every_steps": 120,
                       "optimizer.learning_rate": 1e-2,
                       "data.choice_eval_sources": f"mc=jsonl:{tmp_path}/mc.jsonl",
                       "data.choice_delimiter": ""})
    final = train_and_evaluate(c, tmp_path / "run")
    assert final["eval_mc/choice_accuracy"] == 1.0
    run = llmjax.load(tmp_path / "run")
    scores = [run.log_likelihood([i["context"]] * 3, i["choices"]) for i in items]
    norm = np.mean([np.argmax(s / [len(x) for x in i["choices"]]) == [0, 1, 0][k]
                    for k, (s, i) in enumerate(zip(scores, items, strict=True))])
    assert final["eval_mc/choice_accuracy_norm"] == norm
    ours = ChoiceEval(run.config, f"jsonl:{tmp_path}/mc.jsonl", "all")(run)
    assert ours == {"choice_accuracy": 1.0, "choice_accuracy_norm": norm}
    printed = run_command("eval", tmp_path / "run", capsys)
    assert printed["eval_mc/choice_accuracy"] == 1.0


@pytest.mark.parametrize("record,message", [
    ({"context": "a", "choices": "not a list", "label": 0}, "not a list of at least two"),
    ({"context": "a", "choices": ["x", "y"], "label": 2}, "neither the index"),
    ({"question": "a", "choices": ["x", "y"], "label": 0}, "no column 'context'"),
])
def test_malformed_multiple_choice_records_name_the_problem(record, message):
    from llmjax.data.text_builder import DataError
    from llmjax.evaluation.choices import record_choices

    with pytest.raises(DataError, match=message):
        record_choices({k: json.dumps(v) if not isinstance(v, str) else v
                        for k, v in record.items()}, tiny_config(), 0)
