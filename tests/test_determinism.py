"""Same config and seed -> bit-identical metrics (all but the timing keys), and stopping +
resuming equals not stopping, for every objective (and for the causal LM with Adafactor, the
rsqrt schedule, label smoothing, z-loss and a best checkpoint; and with Muon)."""

import pytest
from conftest import tiny_config
from test_classification import classify_config, write_sentiment_tsv
from test_mlm import mlm_config
from test_mlm_nsp import bert_config
from test_regression import regression_config

from llmjax.objectives import OBJECTIVES
from llmjax.train.loop import train_and_evaluate
from llmjax.train.writer import read_metrics

TIMING = ("train/tokens_per_sec", "train/mfu")
SHORT = {"num_train_steps": 8, "log_every_steps": 2, "eval_every_steps": 4,
         "checkpoint_every_steps": 4}


# The training options that carry state or change the loss, together on the causal LM.
OPTIONS = {"optimizer.name": "adafactor", "optimizer.schedule": "rsqrt", "label_smoothing": 0.1,
           "z_loss": 1e-4, "checkpoint_best_metric": "loss"}


def config_for(objective, tmp_path):
    if objective == "causal_lm":
        return tiny_config(**SHORT)
    if objective == "causal_lm+options":
        return tiny_config(**SHORT, **OPTIONS)
    if objective == "causal_lm+muon":  # its state: momenta, and AdamW's beside them
        return tiny_config(**SHORT, **{"optimizer.name": "muon"})
    if objective == "mlm":
        return mlm_config(**SHORT)
    if objective in ("nsp", "mlm_nsp"):
        return bert_config(tmp_path, objective=objective, **SHORT)
    if objective == "classification":
        tsv = (write_sentiment_tsv(tmp_path / "train.tsv", 200, 0),
               write_sentiment_tsv(tmp_path / "dev.tsv", 40, 1))
        return classify_config(tsv, **SHORT)
    if objective == "regression":
        return regression_config(tmp_path, **SHORT)
    if objective == "token_classification":
        from test_token_classification import ner_sentences, tagger_config, write_jsonl

        return tagger_config(write_jsonl(tmp_path / "train.jsonl", ner_sentences(100, 0)),
                             write_jsonl(tmp_path / "dev.jsonl", ner_sentences(20, 1)),
                             **SHORT, checkpoint_best_metric=None)
    if objective == "question_answering":
        from test_question_answering import qa_config, qa_records
        from test_token_classification import write_jsonl

        data = write_jsonl(tmp_path / "qa.jsonl", qa_records(100, 0))
        return qa_config(**{"data.source": f"jsonl:{data}", "seq_len": 64,
                            "qa.doc_stride": 16}, **SHORT)
    if objective == "dpo":
        from test_dpo import preference_setup

        return preference_setup(tmp_path, **SHORT)[0]
    encoder_decoder = {"model.arch": "encoder_decoder", "objective": objective,
                       "model.position_embedding": "relative", "tokenizer.extra_ids": 8,
                       "seq_len": 24, "target_seq_len": 8}
    if objective == "span_corruption":
        return tiny_config(**encoder_decoder, **SHORT)
    if objective == "seq2seq":
        return tiny_config(**encoder_decoder, **SHORT, **{
            "data.source": "generated:reverse", "eval_decode_examples": 8,
            "generate.beam_size": 2})
    raise AssertionError(f"no determinism case for objective {objective!r}: add one")


def rows_without_timing(workdir):
    return [{k: v for k, v in row.items() if k not in TIMING} for row in read_metrics(workdir)]


# A two-term objective and the causal LM with its stateful options run by default (the plain
# causal LM's AdamW path runs in mlm_nsp); every other case is marked slow (the default suite's
# time budget).
CASES = [pytest.param(o, marks=() if o == "mlm_nsp" else pytest.mark.slow)
         for o in sorted(OBJECTIVES)] + ["causal_lm+options",
                                         pytest.param("causal_lm+muon", marks=pytest.mark.slow)]


@pytest.mark.parametrize("objective", CASES)
def test_reruns_and_resumes_give_bit_identical_metrics(tmp_path, objective):
    c = config_for(objective, tmp_path)
    train_and_evaluate(c, tmp_path / "once")
    train_and_evaluate(c, tmp_path / "twice", stop_at_step=4)  # a second run, stopped ...
    train_and_evaluate(c, tmp_path / "twice")  # ... and resumed
    once, twice = rows_without_timing(tmp_path / "once"), rows_without_timing(tmp_path / "twice")
    assert [r["step"] for r in once] == [2, 4, 4, 6, 8, 8]
    assert once == twice  # exact equality: the same floats, not approximately
    if c.checkpoint_best_metric:
        assert [p.name for p in (tmp_path / "once/best/checkpoints").iterdir()] == \
            [p.name for p in (tmp_path / "twice/best/checkpoints").iterdir()]
