"""Where a run starts: the workdir prepared, the vocabulary size resolved, a resumed workdir and
a fine-tuning source checked against the config, and the initial parameters (fresh, or a
pretraining run's or a Hugging Face folder's)."""

from __future__ import annotations

import jax
import ml_collections
from absl import logging
from etils import epath
from flax import nnx

from llmjax import configs
from llmjax.models import lora
from llmjax.objectives import get_objective
from llmjax.train import checkpoint


def prepare_workdir(workdir: epath.Path) -> None:
    """Creates the workdir and checks that it is writable and not a Hugging Face folder."""
    from llmjax.convert.hf import is_hf_folder

    if is_hf_folder(workdir):  # training would replace its config.json with the run's
        raise configs.ConfigError(
            f"--workdir={workdir} is a Hugging Face model folder: train into a new directory "
            f"(to fine-tune from it, set --config.init.hf_path={workdir})")
    try:
        workdir.mkdir(parents=True, exist_ok=True)
        probe = workdir / f".write_test.{jax.process_index()}"  # hosts may share the workdir
        probe.write_text("ok")
        probe.unlink()
    except OSError as e:
        raise configs.ConfigError(f"workdir {workdir} is not writable ({e.strerror or e}); "
                                  "choose another --workdir") from None


def resolve_vocab(config: ml_collections.ConfigDict, vocab_size: int) -> None:
    """model.vocab_size: the tokenizer's size (plus tokenizer.extra_ids for encoder-decoders)."""
    from llmjax.models import MODELS

    appends = getattr(MODELS.get(config.model.arch), "appends_extra_ids", False)
    extra = config.tokenizer.extra_ids if appends else 0
    needed = vocab_size + extra
    if config.model.vocab_size is None:
        config.model.vocab_size = needed
    elif config.model.vocab_size < needed:
        extra_note = f" + {extra} tokenizer.extra_ids" if extra else ""
        raise configs.ConfigError(
            f"the tokenizer has {vocab_size} tokens{extra_note} but model.vocab_size="
            f"{config.model.vocab_size}: raise model.vocab_size or leave it unset to use the "
            "tokenizer's size")


def check_resume_compatible(config: ml_collections.ConfigDict, workdir: epath.Path) -> None:
    """A workdir with checkpoints resumes only with the model it was trained with."""
    saved_file = workdir / "config.json"
    if not saved_file.exists() or not (workdir / "checkpoints").exists():
        return
    saved = dict(configs.flatten(configs.from_json(saved_file.read_text())))
    changed = [(k, f"{k}: {saved.get(k)!r} -> {v!r}") for k, v in configs.flatten(config)
               if saved.get(k) != v]
    model = [text for k, text in changed
             if k.startswith(("model.", "lora.")) or k in ("objective", "optimizer.name")]
    if model:
        raise configs.ConfigError(
            f"{workdir} holds checkpoints of another model or optimizer ({'; '.join(model)}): "
            "use a new --workdir, or the original settings to resume")
    # Anything else may change on resume (e.g. num_train_steps, to train further); config.json
    # will hold the new values, so the log keeps the old ones.
    if changed:
        logging.warning("resuming %s with changed settings (the run continues under the new "
                        "ones): %s", workdir, "; ".join(text for _, text in changed))


def check_init_compatible(config: ml_collections.ConfigDict) -> None:
    """A fine-tuning source must be a finished llmjax run of the same architecture."""
    if not config.init.workdir:
        return
    source = epath.Path(config.init.workdir) / "config.json"
    if not source.exists():
        raise configs.ConfigError(f"init.workdir={config.init.workdir} has no config.json; point "
                                  "it at the workdir of an llmjax training run")
    saved = configs.from_json(source.read_text())
    if saved.model.arch != config.model.arch:
        raise configs.ConfigError(
            f"init.workdir={config.init.workdir} is a model.arch={saved.model.arch!r} run, and "
            f"this config trains model.arch={config.model.arch!r}: fine-tune from a run of the "
            "same architecture (or change model.arch)")
    if saved.lora.rank:  # from_json fills keys an older config.json lacks
        raise configs.ConfigError(
            f"init.workdir={config.init.workdir} is a LoRA run: its adapters would not carry "
            f"over. Fold them into its weights with `llmjax convert --to=hf "
            f"--workdir={config.init.workdir} --out=DIR` and fine-tune with "
            "--config.init.hf_path=DIR")


def initial_params(config: ml_collections.ConfigDict, params: nnx.State) -> nnx.State:
    """Fresh parameters, or those of `init.workdir` / `init.hf_path` (fine-tuning); LoRA
    adapters always start fresh (their base layers restored)."""
    if not config.lora.rank:
        return _restored_params(config, params)

    def adapter(path, _) -> bool:
        return lora.is_adapter(checkpoint.param_path_name(path))

    base = _restored_params(config, nnx.filter_state(params, lambda p, v: not adapter(p, v)))
    return nnx.merge_state(base, nnx.filter_state(params, adapter))


def _restored_params(config: ml_collections.ConfigDict, params: nnx.State) -> nnx.State:
    objective = get_objective(config.objective)
    if config.init.hf_path:
        from llmjax.convert.hf import hf_initial_params

        logging.info("initialised parameters from the Hugging Face folder %s",
                     config.init.hf_path)
        return hf_initial_params(config, params, getattr(objective, "fresh_modules", ()),
                                 getattr(objective, "optional_modules", ()))
    if not config.init.workdir:
        return params
    try:
        restored, step = checkpoint.restore_params(
            config.init.workdir, params, config.init.step,
            fresh=getattr(objective, "fresh_modules", ()),
            optional=getattr(objective, "optional_modules", ()))
    except FileNotFoundError as e:  # say which setting pointed there
        raise FileNotFoundError(f"init.workdir={config.init.workdir}: {e}") from e
    logging.info("initialised parameters from %s step %d", config.init.workdir, step)
    return restored
