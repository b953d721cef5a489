"""A knowledge-distillation teacher (config keys distill.*): its tokenizer, which the student
run takes, and its model, loaded once and checked against the run before anything is written.
The loss is objectives/distillation.py's; the train step runs the teacher (train/step.py)."""

from __future__ import annotations

import ml_collections
from etils import epath
from flax import nnx

from llmjax.configs import ConfigError
from llmjax.data.tokenizers import Tokenizer, load_tokenizer, same_vocabulary


def _path(config: ml_collections.ConfigDict) -> epath.Path:
    path = epath.Path(config.distill.teacher_workdir)
    if not path.exists():
        raise FileNotFoundError(f"distill.teacher_workdir={path} does not exist: point it at "
                                "the workdir of a trained causal-LM run or a Hugging Face model "
                                "folder")
    return path


def teacher_tokenizer(config: ml_collections.ConfigDict) -> Tokenizer:
    """The teacher's tokenizer (a run's tokenizer/ directory, or a Hugging Face folder's)."""
    from llmjax.convert import hf

    path = _path(config)
    if hf.is_hf_folder(path):
        from llmjax.data.hf_tokenizer import load_hf_tokenizer

        return load_hf_tokenizer(str(path), config.tokenizer.lowercase)
    if not (path / "tokenizer" / "tokenizer_config.json").exists():
        raise FileNotFoundError(f"distill.teacher_workdir={path} has no tokenizer/ directory "
                                "(nor is it a Hugging Face folder): point it at the workdir of "
                                "a finished llmjax run")
    return load_tokenizer(path / "tokenizer")


def load_teacher(config: ml_collections.ConfigDict, tokenizer: Tokenizer
                 ) -> tuple[nnx.GraphDef, nnx.State, ml_collections.ConfigDict]:
    """(graphdef, parameters, config) of the teacher: a decoder language model over the run's
    vocabulary."""
    from llmjax import api

    path = _path(config)
    run = api.load(path)
    if not run.is_decoder_lm:
        raise ConfigError(f"distill.teacher_workdir={path} is a model.arch="
                          f"{run.config.model.arch!r} run with objective="
                          f"{run.config.objective!r}: a teacher is a decoder language model "
                          "(a causal-LM run or folder)")
    if not same_vocabulary(tokenizer, run.tokenizer):
        raise ConfigError(f"distill.teacher_workdir={path} has another tokenizer than this run "
                          f"({run.tokenizer.kind}, {run.tokenizer.vocab_size} tokens vs "
                          f"{tokenizer.kind}, {tokenizer.vocab_size}): the student predicts the "
                          "teacher's tokens, so it must use the teacher's tokenizer (leave "
                          "tokenizer.path unset, or set it to the teacher's)")
    if run.config.model.vocab_size < tokenizer.vocab_size:
        raise ConfigError(f"distill.teacher_workdir={path} scores {run.config.model.vocab_size} "
                          f"ids, fewer than the tokenizer's {tokenizer.vocab_size}")
    graphdef, params = nnx.split(run.model)
    return graphdef, params, run.config
