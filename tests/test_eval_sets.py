"""data.extra_eval_sources: more eval sets beside the main one, each reported as
eval_NAME/<metric> in training and by `llmjax eval`, and usable as the best-checkpoint metric."""

import json

import numpy as np
import pytest
from conftest import tiny_config
from test_cli import llmjax_cli

from llmjax import configs
from llmjax.train.loop import train_and_evaluate
from llmjax.train.writer import read_metrics


def test_extra_eval_sets_are_reported_by_name_in_training_and_eval(tmp_path):
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
    printed = json.loads(llmjax_cli("eval", f"--workdir={tmp_path / 'run'}").stdout)
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
        configs.validate(tiny_config(**{"data.extra_eval_sources": spec}))


def test_a_best_metric_of_an_unknown_eval_set_lists_the_reported_names(tmp_path):
    c = tiny_config(**{"data.extra_eval_sources": "gen=generated",
                       "checkpoint_best_metric": "eval_other/loss"})
    with pytest.raises(configs.ConfigError, match=r"eval_other/loss.*eval_gen/loss"):
        train_and_evaluate(c, tmp_path / "run")
    assert not (tmp_path / "run").exists()
