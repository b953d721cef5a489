"""The `llmjax` command: train | eval | generate | predict | convert.

A thin absl app: it parses flags and the ml_collections config (locked, so a misspelt key is an
error), then calls library functions. eval/generate/predict read the run's config.json from
--workdir; `--config.x=v` flags override it for that command only.
"""

from __future__ import annotations

import errno
import os
import re
import sys

from absl import app, flags
from ml_collections import config_flags

from llmjax.log_filter import quiet_library_logs

COMMANDS = ("train", "eval", "generate", "predict", "convert")
WORKDIR_CONFIG = os.path.join(os.path.dirname(__file__), "workdir_config.py")

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Config file: configs/FILE.py[:k=v,k=v].",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Run directory (local path or gs://).")
flags.DEFINE_integer("stop_at_step", None, "train: save a checkpoint at this step and exit.")
flags.DEFINE_integer("step", None, "eval/generate/predict: checkpoint step (default: latest).")
flags.DEFINE_string("split", None, "eval: split to evaluate (default: data.eval_split); "
                    "predict --input: the split to predict (default: as eval's).")
flags.DEFINE_string("prompt", None, "generate: the prompt text.")
flags.DEFINE_string("messages", None, "generate: a conversation to reply to, as the chat "
                    "template lays it out: a JSON list of {role, content}, or a file holding one.")
flags.DEFINE_integer("max_new_tokens", None, "generate: tokens to sample.")
flags.DEFINE_float("temperature", None, "generate: 0 = greedy.")
flags.DEFINE_integer("top_k", None, "generate: keep the k most likely tokens (0 = all).")
flags.DEFINE_float("top_p", None, "generate: nucleus sampling mass (1 = all).")
flags.DEFINE_float("min_p", None, "generate: drop tokens below min_p x the most likely "
                   "token's probability (0 = none).")
flags.DEFINE_float("repetition_penalty", None, "generate: > 1 makes tokens already in the "
                   "text less likely (1 = none).")
flags.DEFINE_integer("beam_size", None, "generate: beam search width (encoder-decoder).")
flags.DEFINE_integer("seed", None, "generate: sampling seed.")
flags.DEFINE_string("draft", None, "generate: speculative decoding with this smaller run (a "
                    "workdir or Hugging Face folder with the same tokenizer) as the draft model; "
                    "mtp: the run's own multi-token-prediction module.")
flags.DEFINE_integer("draft_tokens", None, "generate: tokens the draft proposes per call of the "
                     "model (speculative decoding).")
flags.DEFINE_string("text", None, "predict: the text to classify (tag; the question to "
                    "answer).")
flags.DEFINE_string("text_pair", None, "predict: the second text of a pair task (the context "
                    "that holds the answer).")
flags.DEFINE_enum("from", None, ["hf"], "convert: import from this format (--path, --out).")
flags.DEFINE_enum("to", None, ["hf"], "convert: export --workdir to this format (--out).")
flags.DEFINE_string("path", None, "convert --from=hf: the Hugging Face model folder.")
flags.DEFINE_string("out", None, "convert: the folder to write (a workdir, or a HF folder); "
                    "predict --input: the JSON Lines file of predictions.")
flags.DEFINE_string("input", None, "predict: a data source (tsv:, jsonl:, parquet:, tfds:, ...) "
                    "whose every record is predicted, into --out.")
flags.DEFINE_string("coordinator_address", None,
                    "multi-host: HOST:PORT of process 0 (jax.distributed), same on every host.")
flags.DEFINE_integer("num_processes", None, "multi-host: how many processes (hosts) in all.")
flags.DEFINE_integer("process_id", None, "multi-host: this process's index, 0 .. N-1.")
flags.DEFINE_bool("distributed", None,
                  "multi-host: join jax.distributed with the cluster's auto-detected settings "
                  "(TPU pods, SLURM, MPI); default: only when --coordinator_address, "
                  "$JAX_COORDINATOR_ADDRESS or a multi-task SLURM step says so.")


def _argv_with_workdir_config(argv: list[str]) -> list[str]:
    """eval/generate/predict: load the config from the workdir unless --config is given."""
    if len(argv) < 2 or argv[1] not in ("eval", "generate", "predict"):
        return argv
    if any(a == "--config" or a.startswith("--config=") for a in argv):
        return argv
    workdir = None
    for i, a in enumerate(argv):
        if a.startswith("--workdir="):
            workdir = a.split("=", 1)[1]
        elif a == "--workdir" and i + 1 < len(argv):
            workdir = argv[i + 1]
    if workdir is None:
        return argv  # main() reports the missing flag
    return [*argv[:2], f"--config={WORKDIR_CONFIG}:{workdir}", *argv[2:]]


def _parse_flags(argv: list[str]) -> list[str]:
    """absl flag parsing that turns config errors into one line, not a 50-line traceback."""
    from llmjax import configs

    argv = _argv_with_workdir_config(argv)
    try:
        remaining = FLAGS(argv)
        if FLAGS.config is not None:  # config files load lazily: surface their errors here
            FLAGS.config.keys()
        return remaining
    except (flags.Error, KeyError, AttributeError, ValueError, TypeError, OSError) as e:
        base = dict(configs.flatten(configs.base_config()))
        for arg in argv:
            m = re.match(r"--config\.([\w.]+)", arg)
            if m and m.group(1) not in base:
                _fail(configs.unknown_key_message(m.group(1)))
        lines = [line.strip() for line in str(e).splitlines() if line.strip()]
        message = lines[-1] if lines else type(e).__name__
        # "llmjax.configs.ConfigError: msg" / "[Errno 2] msg" -> "msg"
        message = re.sub(r"^(\[Errno \d+\] |[\w.]+(Error|Exception): )+", "", message)
        _fail(message)


def _fail(message: str) -> None:
    print(f"llmjax: error: {message}", file=sys.stderr)
    sys.exit(2)


def main(argv: list[str]) -> None:
    if len(argv) < 2 or argv[1] not in COMMANDS:
        _fail(f"usage: llmjax {{{'|'.join(COMMANDS)}}} --workdir=DIR [flags]; got {argv[1:2]} "
              "(llmjax --help lists the commands and flags)")
    command = argv[1]
    if len(argv) > 2:
        _fail(f"unexpected arguments {argv[2:]}: flags take the form --name=value")
    if not FLAGS.workdir and command != "convert":
        _fail(f"{command} needs --workdir=DIR")
    quiet_library_logs()
    from llmjax.train import distributed

    if FLAGS.config is not None and "parallel" in FLAGS.config:
        distributed.use_cpu_devices(FLAGS.config.parallel.get("cpu_devices", 0))
    distributed.initialize(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id,
                           FLAGS.distributed)
    try:
        from llmjax import commands

        getattr(commands, command)(FLAGS)
    except Exception as e:
        message = _user_error(e)
        if message is None:  # a bug, not bad input: keep the traceback
            raise
        _fail(message)


def _user_error(e: Exception) -> str | None:
    """The one-line message of an error a user can fix (bad input, a full disk, a diverged
    run); None for anything else."""
    import jax

    from llmjax import configs
    from llmjax.data.text_builder import DataError
    from llmjax.data.tokenizers import TokenizerFileError
    from llmjax.train.checkpoint import CheckpointWriteError, ShapeMismatchError
    from llmjax.train.loop import NonFiniteLossError

    if isinstance(e, configs.ConfigError | DataError | ShapeMismatchError |
                  TokenizerFileError | FileNotFoundError | CheckpointWriteError |
                  NonFiniteLossError):
        return str(e)
    if isinstance(e, jax.errors.JaxRuntimeError) and "RESOURCE_EXHAUSTED" in str(e):
        reason = str(e).strip().splitlines()[0].removeprefix("RESOURCE_EXHAUSTED: ")
        return (f"the device ran out of memory ({reason}): lower batch_size or seq_len, raise "
                "optimizer.accumulation_steps (the same batch in smaller pieces), set "
                "model.remat=full, or shard the state over more devices (parallel.mode=mesh, "
                "parallel.mesh.fsdp)")
    if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
        return (f"{e.strerror} while writing {e.filename or 'a file'}: free disk space and run "
                "the same command again (train resumes from its newest complete checkpoint, "
                "which a failed write never touches)")
    return None


USAGE = """llmjax: train, evaluate, sample from and convert Transformer language models.

  llmjax train    --config=configs/FILE.py[:k=v,k=v] --workdir=DIR [--config.a.b=v ...] [--stop_at_step=N]
  llmjax eval     --workdir=DIR [--step=N] [--split=NAME] [--config.data.eval_source=...]
  llmjax generate --workdir=DIR --prompt="..." [--max_new_tokens=N --temperature=T --top_k=K --top_p=P --min_p=M --repetition_penalty=R --beam_size=B --seed=S] [--draft=DIR --draft_tokens=K]
  llmjax generate --workdir=DIR --messages='[{"role": "user", "content": "..."}]' (or FILE.json) [sampling flags]
  llmjax predict  --workdir=DIR --text="..." [--text_pair="..."]
  llmjax predict  --workdir=DIR --input=SOURCE --out=FILE.jsonl [--split=NAME]
  llmjax convert  --from=hf --path=HF_DIR --out=WORKDIR | --to=hf --workdir=DIR --out=HF_DIR [--step=N]

Every config key and its meaning: README.md, "Config reference".
"""  # noqa: E501 (command lines read best unbroken)


def _help_text() -> str:
    """USAGE and this module's flags, as `--help` prints them (absl shows the __main__
    module's docstring, then that module's flags: a console script has neither)."""
    return f"{USAGE}\nflags:\n{FLAGS.module_help(sys.modules[__name__])}"


def run() -> None:
    """Console-script entry point."""
    # absl formats the docstring with %: escape the literal ones
    sys.modules["__main__"].__doc__ = _help_text().replace("%", "%%")
    app.run(main, flags_parser=_parse_flags)


if __name__ == "__main__":
    run()
