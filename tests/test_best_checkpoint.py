"""checkpoint_best_metric: WORKDIR/best keeps the parameters of the best eval, readable like a
run; it follows a resumed run exactly (here after a failed write; tests/test_determinism.py
after --stop_at_step); a parameters-only workdir is not resumed."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import tiny_config

import llmjax
from llmjax.configs import ConfigError
from llmjax.data import pipeline
from llmjax.objectives import get_objective
from llmjax.train import best as best_lib
from llmjax.train.loop import train_and_evaluate
from llmjax.train.writer import read_metrics

SETTINGS = {"num_train_steps": 20, "eval_every_steps": 4, "checkpoint_every_steps": 4,
            "max_checkpoints_to_keep": 1, "checkpoint_best_metric": "token_accuracy"}


def _evals(workdir, key):
    return {r["step"]: r[key] for r in read_metrics(workdir) if key in r}


def _saved_steps(workdir):
    return sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("best") / "run"
    train_and_evaluate(tiny_config(**SETTINGS), workdir)
    return workdir


def test_best_holds_the_best_evals_parameters_past_max_to_keep(run):
    accuracy = _evals(run, "eval/token_accuracy")
    best_step = max(accuracy, key=lambda s: (accuracy[s], -s))  # the first of equal values
    assert 4 < best_step < 20  # it improved, then did not (measured: step 8)
    assert _saved_steps(run / "best") == [best_step]
    assert _saved_steps(run) == [20]  # max_checkpoints_to_keep=1 pruned the rest
    # best/ loads like a run and scores what the run recorded at that step
    loaded = llmjax.load(run / "best")
    assert loaded.step == best_step
    objective = get_objective("causal_lm")
    sums = [objective.loss(loaded.model, jax.tree.map(jnp.asarray, b), None)["token_accuracy"]
            for b in pipeline.eval_batches(loaded.config, loaded.tokenizer, objective)]
    correct, count = np.sum(np.asarray(sums, np.float64), axis=0)
    assert correct / count == pytest.approx(accuracy[best_step], abs=1e-6)
    assert (run / "best/tokenizer/vocab.json").read_text() == \
        (run / "tokenizer/vocab.json").read_text()


def test_a_best_step_past_the_resumed_checkpoint_is_redone(tmp_path):
    """A run killed after saving best/ at step 8 but before its step-8 checkpoint resumes from
    step 4: best/ drops step 8 (the re-run recomputes it), and the best value so far is the one
    metrics.jsonl records at the step best/ keeps."""
    (tmp_path / "metrics.jsonl").write_text('{"step": 4, "eval/loss": 2.0}\n')
    params = {"w": np.ones((2, 3), np.float32)}
    first = best_lib.BestCheckpoint(tmp_path, "eval/loss", True, 0, tiny_config(), _NoTokenizer())
    assert first.update(4, {"eval/loss": 2.0}, params)
    assert first.update(8, {"eval/loss": 1.5}, params)
    assert not first.update(12, {"eval/loss": 1.7}, params)
    first.close()
    assert _saved_steps(tmp_path / "best") == [8]
    second = best_lib.BestCheckpoint(tmp_path, "eval/loss", True, 4, tiny_config(),
                                     _NoTokenizer())
    assert _saved_steps(tmp_path / "best") == [] and second.best is None  # 4 was pruned by 8
    assert second.update(8, {"eval/loss": 1.5}, params)
    second.close()
    third = best_lib.BestCheckpoint(tmp_path, "eval/loss", True, 8, tiny_config(),
                                    _NoTokenizer())
    (tmp_path / "metrics.jsonl").write_text('{"step": 8, "eval/loss": 1.5}\n')
    assert third._recorded_value(8) == 1.5
    assert not third.update(12, {"eval/loss": float("nan")}, params)


class _NoTokenizer:
    def save(self, directory):
        directory.mkdir(parents=True)


def test_modes():
    assert best_lib.lower_is_better("eval/loss", "auto")
    assert best_lib.lower_is_better("eval/perplexity", "auto")
    assert best_lib.lower_is_better("eval/mlm_loss", "auto")
    assert not best_lib.lower_is_better("eval/bleu", "auto")
    assert best_lib.lower_is_better("eval/accuracy", "min")


def test_parameters_only_workdirs_are_not_resumed(run):
    with pytest.raises(ConfigError, match="holds parameters only .* --config.init.workdir="):
        train_and_evaluate(tiny_config(**SETTINGS), run / "best")


def test_an_unreported_metric_is_refused_before_anything_is_written(tmp_path):
    with pytest.raises(ConfigError, match="'accuracy' is not reported by this run's eval; use "
                                          "one of eval/best_achievable_loss, eval/loss"):
        train_and_evaluate(tiny_config(**{"checkpoint_best_metric": "accuracy"}),
                           tmp_path / "new")
    assert not (tmp_path / "new").exists()


def test_classification_reports_its_confusion_metrics():
    c = tiny_config(**{"model.arch": "encoder", "objective": "classification"})
    objective = get_objective("classification")
    from llmjax.train.state import abstract_model
    from llmjax.train.step import make_eval_step

    c.model.num_classes, c.model.vocab_size, c.data.labels = 2, 20, "neg,pos"
    graphdef, params = abstract_model(c)
    batch = {k: np.stack([v] * 2) for k, v in objective.padding_example(c.seq_len).items()}
    names = best_lib.eval_metric_names(make_eval_step(graphdef, objective), params, batch,
                                       ("loss",))
    assert names == ["eval/accuracy", "eval/f1", "eval/loss", "eval/mcc", "eval/perplexity",
                     "eval/precision", "eval/recall"]


def test_early_stopping_stops_after_n_evals_without_improvement(run, tmp_path):
    """The same run with early_stopping_evals=2 stops two evals after its best one, with a
    checkpoint; training it again has nothing to do, until the patience is raised."""
    accuracy = _evals(run, "eval/token_accuracy")
    best_step = max(accuracy, key=lambda s: (accuracy[s], -s))
    stop_step = best_step + 2 * SETTINGS["eval_every_steps"]
    assert stop_step < SETTINGS["num_train_steps"]  # measured: best at 8, stop at 16
    early = tmp_path / "early"
    c = tiny_config(**SETTINGS, early_stopping_evals=2)
    train_and_evaluate(c, early)
    assert _saved_steps(early) == [stop_step]
    assert _saved_steps(early / "best") == [best_step]
    assert max(r["step"] for r in read_metrics(early)) == stop_step
    train_and_evaluate(c, early)  # nothing to do
    assert max(r["step"] for r in read_metrics(early)) == stop_step
    train_and_evaluate(tiny_config(**SETTINGS, early_stopping_evals=5), early)
    assert _saved_steps(early) == [SETTINGS["num_train_steps"]]
    assert _evals(early, "eval/token_accuracy") == accuracy  # the same trajectory throughout


def test_a_full_disk_while_saving_the_best_loses_nothing(run, tmp_path, monkeypatch):
    from llmjax.train.checkpoint import CheckpointWriteError

    monkeypatch.setenv("LLMJAX_FAULTS", "disk_full_at_step=8")  # best improves at step 8
    with pytest.raises(CheckpointWriteError, match=r"best checkpoint of step 8 .*No space left on "
                                                   r"device\); the best before it \(step 4\)"):
        train_and_evaluate(tiny_config(**SETTINGS), tmp_path / "full")
    assert _saved_steps(tmp_path / "full/best") == [4]
    assert _saved_steps(tmp_path / "full") == [4]
    monkeypatch.delenv("LLMJAX_FAULTS")
    train_and_evaluate(tiny_config(**SETTINGS), tmp_path / "full")  # resumes from step 4
    assert _saved_steps(tmp_path / "full/best") == _saved_steps(run / "best")
    assert _evals(tmp_path / "full", "eval/token_accuracy") == _evals(run, "eval/token_accuracy")
