"""End to end on ../shared/data (slow): BERT MLM + NSP pretraining on WikiText-2, then SST-2
fine-tuning from that checkpoint. The full-size figures are in experiments/bert_sst2."""

import numpy as np
import pytest
from conftest import apply_overrides, shared_file

import llmjax
from llmjax.data import pipeline
from llmjax.objectives import get_objective
from llmjax.train.loop import train_and_evaluate

pytestmark = pytest.mark.slow


def _config(name, arg, **overrides):
    import importlib

    return apply_overrides(importlib.import_module(f"configs.{name}").get_config(arg), overrides)


def test_wikitext_pretraining_then_sst2_finetuning(tmp_path):
    """~5 min. A short version of experiments/bert_sst2: both pretraining metrics beat their
    baselines, and the fine-tuned classifier beats the majority class on SST-2 dev."""
    shared_file("wikitext-2", "valid.txt")
    shared_file("sst2", "dev.tsv")
    pre = tmp_path / "pre"
    metrics = train_and_evaluate(_config("bert", "size=tiny", **{
        "num_train_steps": 600, "eval_every_steps": 600, "checkpoint_every_steps": 600,
        "log_every_steps": 100, "seq_len": 64, "tokenizer.vocab_size": 2048,
        "optimizer.warmup_steps": 100, "eval_steps": 30, "progress_bar": False}), pre)
    run = llmjax.load(pre)
    batches = pipeline.eval_batches(run.config, run.tokenizer, get_objective("mlm_nsp"))
    targets = np.concatenate([b["targets"][b["mlm_weights"] > 0] for b in batches])
    assert metrics["eval/mlm_accuracy"] > 1.5 * np.bincount(targets).max() / len(targets)
    assert metrics["eval/nsp_accuracy"] > 0.5
    fine = train_and_evaluate(_config("bert_classify", "size=tiny", **{
        "init.workdir": str(pre), "num_train_steps": 300, "eval_every_steps": 300,
        "checkpoint_every_steps": 300, "log_every_steps": 100, "progress_bar": False}),
        tmp_path / "fine")
    assert fine["eval/accuracy"] > 0.6  # SST-2 dev is 51% positive
