"""What each CLI command does, given parsed flags (kept apart from flag parsing in cli.py)."""

from __future__ import annotations

import json

from absl import flags, logging
from etils import epath

from llmjax import configs
from llmjax.configs import ConfigError
from llmjax.train.writer import MetricWriter


def train(FLAGS: flags.FlagValues) -> None:
    from llmjax.train.loop import train_and_evaluate

    if FLAGS.config is None:
        raise ConfigError("train needs --config=configs/FILE.py")
    train_and_evaluate(FLAGS.config, FLAGS.workdir, stop_at_step=FLAGS.stop_at_step)


def eval(FLAGS: flags.FlagValues) -> None:  # noqa: A001 (the command's name)
    from flax import nnx

    from llmjax import api
    from llmjax.data import pipeline
    from llmjax.evaluation.suite import EvalSuite
    from llmjax.objectives import get_objective
    from llmjax.train.parallel import Parallel

    config = FLAGS.config
    run = api.load(FLAGS.workdir, FLAGS.step, config)
    objective = get_objective(config.objective)
    if hasattr(objective, "resolve_config"):  # the run's label set (token tags' scheme)
        objective.resolve_config(config)
    source, default_split = pipeline.eval_source_and_split(config)
    split = FLAGS.split or default_split
    batches = pipeline.eval_batches(config, run.tokenizer, objective, source, split)
    graphdef, params = nnx.split(run.model)
    parallel = Parallel("single", graphdef, objective, None, None,
                        compiler_options=configs.resolve_compiler_options(config))
    # the default eval is training's: the named extra and multiple-choice sets too
    suite = EvalSuite(config, run.tokenizer, objective, batches, split=split,
                      prefix="eval" if split == default_split else split,
                      named_sets=not FLAGS.split)
    suite.attach_model(graphdef)
    row = suite(parallel, params, run.step)
    from llmjax.convert.hf import is_hf_folder

    if not is_hf_folder(FLAGS.workdir):  # a Hugging Face folder is read, never written to
        MetricWriter(epath.Path(FLAGS.workdir)).write(run.step, row)
    logging.info("evaluated step %d on %s (%s)", run.step, source, split)
    print(json.dumps({"step": run.step, **row}, indent=2))


def generate(FLAGS: flags.FlagValues) -> None:
    from llmjax import api

    if (FLAGS.prompt is None) == (FLAGS.messages is None):
        raise ConfigError("generate needs --prompt=TEXT, or --messages=JSON (a conversation to "
                          "reply to), not both")
    run = api.load(FLAGS.workdir, FLAGS.step, FLAGS.config)
    sampling = {name: getattr(FLAGS, name, None) for name in (
        "max_new_tokens", "temperature", "top_k", "top_p", "min_p", "repetition_penalty",
        "seed", "beam_size", "draft", "draft_tokens")}
    if FLAGS.messages is not None:
        print(run.chat(_conversation(FLAGS.messages), **sampling))
        return
    _warn_unknown(run, FLAGS.prompt)
    text = run.generate(FLAGS.prompt, **sampling)
    # a decoder continues the prompt; an encoder-decoder's output replaces it (translation)
    print(text if run.answers_prompts else FLAGS.prompt + text)


def _conversation(value: str) -> list[dict]:
    """--messages: inline JSON, or the path of a JSON file; a list of {role, content}."""
    text = value
    if not value.lstrip().startswith("["):
        path = epath.Path(value)
        if not path.exists():
            raise ConfigError(f"--messages={value!r} is neither a JSON list nor a file")
        text = path.read_text()
    try:
        messages = json.loads(text)
    except json.JSONDecodeError as e:
        raise ConfigError(f"--messages: not JSON ({e.msg}, column {e.colno})") from None
    if not (isinstance(messages, list) and messages and all(
            isinstance(m, dict) and {"role", "content"} <= set(m) for m in messages)):
        raise ConfigError('--messages: give a JSON list of {"role": ..., "content": ...}')
    return messages


def predict(FLAGS: flags.FlagValues) -> None:
    from llmjax import api

    if getattr(FLAGS, "input", None) is not None:  # (tests pass namespaces of a few flags)
        _predict_source(FLAGS)
        return
    if FLAGS.text is None:
        raise ConfigError("predict needs --text=TEXT (and --text_pair=TEXT for pair tasks), or "
                          "--input=SOURCE --out=FILE for every record of a data source")
    run = api.load(FLAGS.workdir, FLAGS.step, FLAGS.config)
    _warn_unknown(run, FLAGS.text, FLAGS.text_pair)
    if run.prediction == "tags":
        print(json.dumps({"tags": run.tag(FLAGS.text)}, ensure_ascii=False))
        return
    if run.prediction == "answer":
        if FLAGS.text_pair is None:
            raise ConfigError("a question answering run answers --text=QUESTION from "
                              "--text_pair=CONTEXT: give the context")
        print(json.dumps({"answer": run.answer(FLAGS.text, FLAGS.text_pair)},
                         ensure_ascii=False))
        return
    if run.predicts_scores:
        print(json.dumps({"score": run.score(FLAGS.text, FLAGS.text_pair)}))
        return
    label, probabilities = run.predict(FLAGS.text, FLAGS.text_pair)
    print(json.dumps({"label": label, "probabilities": probabilities}, indent=2))


def _predict_source(FLAGS: flags.FlagValues) -> None:
    """predict --input=SOURCE --out=FILE: every record's prediction, one JSON line each."""
    from llmjax import api
    from llmjax.data import pipeline
    from llmjax.evaluation.predictions import write_predictions

    if FLAGS.text is not None or FLAGS.out is None:
        raise ConfigError("predict --input=SOURCE writes every record's prediction to "
                          "--out=FILE (JSON Lines): give --out, and no --text")
    run = api.load(FLAGS.workdir, FLAGS.step, FLAGS.config)
    split = FLAGS.split or pipeline.eval_split_of(FLAGS.input, run.config)
    count = write_predictions(run, FLAGS.input, split, FLAGS.out)
    logging.info("wrote %d predictions of %s (%s) to %s", count, FLAGS.input, split, FLAGS.out)


def _warn_unknown(run, *texts: str | None) -> None:
    """Text the tokenizer has never seen (e.g. a character outside a char vocabulary) reads as
    <unk>, so the output answers another input than the one typed: say so."""
    tokenizer = run.tokenizer
    unknown = sum(int((tokenizer.encode_array(t) == tokenizer.unk_id).sum()) for t in texts if t)
    if unknown:
        logging.warning("%d token(s) of the input are unknown to the tokenizer and read as "
                        "<unk>: the output is for that text", unknown)


def convert(FLAGS: flags.FlagValues) -> None:
    from llmjax.convert import hf

    source, target = FLAGS["from"].value, FLAGS["to"].value
    if (source is None) == (target is None):
        raise ConfigError("convert needs --from=hf --path=HF_DIR --out=WORKDIR, or --to=hf "
                          "--workdir=WORKDIR --out=HF_DIR")
    if FLAGS.out is None:
        raise ConfigError("convert needs --out=DIR (the folder to write)")
    if source == "hf":
        if FLAGS.path is None:
            raise ConfigError("convert --from=hf needs --path=HF_DIR")
        config = hf.import_to_workdir(FLAGS.path, FLAGS.out)
        print(f"wrote llmjax workdir {FLAGS.out} ({config.model.arch}, objective "
              f"{config.objective}) from {FLAGS.path}")
    else:
        if FLAGS.workdir is None:
            raise ConfigError("convert --to=hf needs --workdir=WORKDIR")
        hf.export_workdir(FLAGS.workdir, FLAGS.out, FLAGS.step)
        print(f"wrote Hugging Face folder {FLAGS.out} from {FLAGS.workdir}")
