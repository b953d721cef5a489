"""Hugging Face checkpoint folders <-> llmjax runs.

A folder holds `config.json`, the weights (`model.safetensors`, read with safetensors' numpy
API and no PyTorch; or `pytorch_model.bin`, which needs torch) and tokenizer files
(`tokenizer.json`, `vocab.txt` or `spiece.model`). Each model family has a module with an
explicit name map (FAMILIES); this file does what they share: reading and writing folders,
filling the llmjax parameters with a shape check per tensor, and refusing tensors that are
left unused or parameters that are missing (naming them).
"""

from __future__ import annotations

import json
import os
import re
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging
from etils import epath
from flax import nnx

from llmjax import configs
from llmjax.configs import ConfigError
from llmjax.convert import (
    bart,
    bert,
    bloom,
    deepseek,
    distilbert,
    gemma,
    gpt2,
    gpt_neox,
    llama,
    mixtral,
    opt,
    phi,
    roberta,
    t5,
)
from llmjax.data.tokenizers import SPECIAL_ROLES
from llmjax.train.checkpoint import param_path_name

# HF model_type -> its name map module
FAMILIES = {"gpt2": gpt2, "bert": bert, "t5": t5, "bart": bart, "bloom": bloom,
            "gpt_neox": gpt_neox, "distilbert": distilbert, "phi": phi,
            "opt": opt,
            **dict.fromkeys(llama.MODEL_TYPES, llama), **dict.fromkeys(gemma.MODEL_TYPES, gemma),
            **dict.fromkeys(mixtral.MODEL_TYPES, mixtral),
            **dict.fromkeys(deepseek.MODEL_TYPES, deepseek),
            **dict.fromkeys(roberta.MODEL_TYPES, roberta)}


def export_family(config: ml_collections.ConfigDict):
    """The Hugging Face family an llmjax model is written as."""
    m = config.model
    if m.arch == "encoder_decoder":  # post-norm with learned positions: BART; else T5
        return bart if m.norm_position == "post" else t5
    if m.arch == "decoder":
        if m.kv_lora_rank:  # latent attention: only DeepSeek's layout has it
            return deepseek
        if m.num_experts:
            return mixtral
        if m.scale_embeddings or m.post_norms:  # only Gemma's layout has these
            return gemma
        if m.parallel_shared_norm:  # one norm under parallel attention and MLP
            return phi
        if m.parallel_residual or (m.position_embedding == "rotary" and m.norm == "layernorm"):
            return gpt_neox
        return {"alibi": bloom, "rotary": llama}.get(m.position_embedding, gpt2)
    return {0: distilbert, 1: roberta}.get(m.num_token_types, bert)


class ConversionError(ValueError):
    """A checkpoint that cannot be converted; the message names the tensors or settings."""


def read_folder(path: str | epath.Path) -> tuple[dict, dict[str, np.ndarray]]:
    """(config.json as a dict, {tensor name: float32/int array}) of a Hugging Face folder."""
    path = epath.Path(path)
    config_file = path / "config.json"
    if not config_file.exists():
        hub_hint = ("; llmjax reads local folders only (no downloads): fetch a Hub model first, "
                    f"e.g. `hf download {path} --local-dir DIR` (huggingface_hub)"
                    if not path.exists() and re.fullmatch(r"[\w.-]+(/[\w.-]+)?", str(path))
                    else "")
        raise FileNotFoundError(f"{config_file} does not exist: point at a Hugging Face model "
                                "folder (config.json + model.safetensors or pytorch_model.bin)"
                                f"{hub_hint}")
    hf_config = json.loads(config_file.read_text())
    safetensors_file, bin_file = path / "model.safetensors", path / "pytorch_model.bin"
    index_file = path / "model.safetensors.index.json"  # a checkpoint sharded over files
    if safetensors_file.exists():
        tensors = _read_safetensors([safetensors_file])
    elif index_file.exists():
        shards = sorted(set(json.loads(index_file.read_text())["weight_map"].values()))
        tensors = _read_safetensors([path / name for name in shards])
    elif bin_file.exists():
        try:
            import torch
        except ImportError:
            raise ConversionError(f"{bin_file} is a PyTorch file: install torch to read it, or "
                                  "save the model as model.safetensors") from None
        state = torch.load(os.fspath(bin_file), map_location="cpu", weights_only=True)
        tensors = {k: v.float().numpy() if v.is_floating_point() else v.numpy()
                   for k, v in state.items()}
    else:
        raise FileNotFoundError(f"{path} has no model.safetensors (or its shards' "
                                "model.safetensors.index.json) or pytorch_model.bin")
    if hf_config.get("model_type") == gemma.MULTIMODAL_TYPE:  # its language model alone
        return gemma.text_model(hf_config, tensors)
    return hf_config, tensors


def _read_safetensors(files: list[epath.Path]) -> dict[str, np.ndarray]:
    """Every tensor of these safetensors files, floating-point ones as float32. Read through
    safetensors' flax API, one tensor at a time: its numpy API cannot hold the bfloat16 that
    most LLaMA-family checkpoints are stored in."""
    from safetensors import safe_open

    tensors = {}
    for file in files:
        if not file.exists():
            raise FileNotFoundError(f"{file} is missing: the checkpoint's "
                                    "model.safetensors.index.json lists it")
        with safe_open(os.fspath(file), framework="flax") as f:
            for name in f.keys():
                x = f.get_tensor(name)
                tensors[name] = np.asarray(x.astype(np.float32) if jax.numpy.issubdtype(
                    x.dtype, jax.numpy.floating) else x)
    return tensors


def is_hf_folder(path: str | epath.Path) -> bool:
    """Whether `path` is a Hugging Face model folder (its config.json names a model_type)
    rather than an llmjax workdir."""
    config_file = epath.Path(path) / "config.json"
    if not config_file.exists():
        return False
    try:
        return "model_type" in json.loads(config_file.read_text())
    except json.JSONDecodeError:
        return False


def family_of(hf_config: dict):
    model_type = hf_config.get("model_type")
    if model_type not in FAMILIES:
        raise ConversionError(f"model_type {model_type!r} cannot be converted yet; llmjax reads "
                              f"{sorted(FAMILIES)} and {gemma.MULTIMODAL_TYPE!r}'s language model")
    return FAMILIES[model_type]


def _flat(params: nnx.State) -> dict[str, Any]:
    return {param_path_name(p): x for p, x in jax.tree_util.tree_flatten_with_path(params)[0]}


def fill_params(params: nnx.State, named: dict[str, np.ndarray], fresh: tuple[str, ...] = ()
                ) -> nnx.State:
    """`params` with every value taken from `named` (llmjax name -> array), shapes checked.
    Parameters under a top-level module in `fresh` keep their new values when absent."""
    wanted = _flat(params)
    problems = [f"{k} has shape {named[k].shape}, the model wants {tuple(wanted[k].shape)}"
                for k in named if k in wanted and tuple(named[k].shape) != tuple(wanted[k].shape)]
    missing = [k for k in wanted if k not in named and k.split("/")[0] not in fresh]
    unused = [k for k in named if k not in wanted]
    if problems or missing or unused:
        parts = problems + [f"{k} is missing" for k in missing] + [
            f"{k} has no place in the model" for k in unused]
        raise ConversionError("the checkpoint does not fit the model: " + "; ".join(parts[:8])
                              + (f"; and {len(parts) - 8} more" if len(parts) > 8 else ""))

    def take(path, value):
        name = param_path_name(path)
        if name not in named:
            return value
        return np.asarray(named[name], np.dtype(value.dtype))

    return jax.tree_util.tree_map_with_path(take, params)


def check_all_used(tensors: dict[str, np.ndarray], used: set[str], ignored: tuple[str, ...]
                   ) -> None:
    """Every checkpoint tensor is either mapped or a known non-parameter buffer."""
    left = sorted(k for k in tensors if k not in used
                  and not any(re.fullmatch(p, k) for p in ignored))
    if left:
        raise ConversionError(f"{len(left)} checkpoint tensors have no place in the llmjax model:"
                              f" {', '.join(left[:8])}{' ...' if len(left) > 8 else ''}")


def import_folder(path: str | epath.Path, objective: str | None = None
                  ) -> tuple[ml_collections.ConfigDict, nnx.State]:
    """(llmjax config, parameters) of a Hugging Face folder. `objective` picks the heads (default:
    the checkpoint's own: causal_lm, mlm_nsp / mlm / classification, seq2seq)."""
    from llmjax.train import state as state_lib

    hf_config, tensors = read_folder(path)
    family = family_of(hf_config)
    config = configs.base_config()
    tensors, score, objective = _decoder_classifier_head(hf_config, tensors, objective)
    family.configure(config, hf_config, tensors, objective)
    try:
        named, used = family.import_tensors(hf_config, tensors, config)
    except KeyError as e:
        raise ConversionError(f"{path}: the checkpoint has no tensor {e} that a "
                              f"{hf_config['model_type']} model of this config needs") from None
    check_all_used(tensors, used, family.IGNORED)
    if score is not None and config.objective in ("classification", "regression"):
        named["classifier/dense/kernel"] = score.T
        if config.objective == "classification":
            labels = hf_config.get("id2label") or {str(i): f"LABEL_{i}"
                                                   for i in range(score.shape[0])}
            config.data.labels = ",".join(labels[str(i)] for i in range(len(labels)))
            config.model.num_classes = len(labels)
    _, params = nnx.split(state_lib.build_model(config))
    from llmjax.objectives import get_objective

    fresh = getattr(get_objective(config.objective), "fresh_modules", ())
    read, built = _top_modules(named), _top_modules(_flat(params))
    absent = [h for h in family.HEADS if h in built and h not in read and h not in fresh]
    if absent:  # a bare body (LlamaModel, GPTNeoXModel, ...): as from_pretrained, new heads
        logging.warning("%s has no weights for %s: they start from random values, as in a new "
                        "model; fine-tune before using their outputs", path, ", ".join(absent))
    return config, fill_params(params, named, fresh=(*fresh, *absent))


def _top_modules(flat: dict) -> set[str]:
    return {name.split("/")[0] for name in flat}


def folder_tokenizer(path: str | epath.Path, config: ml_collections.ConfigDict):
    """The folder's tokenizer, checked against the model's vocabulary; sets
    config.tokenizer.kind to match it."""
    from llmjax.data.hf_tokenizer import load_hf_tokenizer

    tokenizer = load_hf_tokenizer(path)
    if tokenizer.vocab_size > config.model.vocab_size:
        raise ConversionError(f"the tokenizer in {path} has {tokenizer.vocab_size} tokens, more "
                              f"than the model's {config.model.vocab_size}")
    config.tokenizer.kind = tokenizer.kind or "bpe"
    return tokenizer


def import_config(path: str | epath.Path, objective: str | None = None
                  ) -> ml_collections.ConfigDict:
    """The llmjax config of a Hugging Face folder (what `load_folder` and a converted
    workdir's config.json hold)."""
    hf_config, tensors = read_folder(path)
    config = configs.base_config()
    family_of(hf_config).configure(config, hf_config, tensors, objective)
    folder_tokenizer(path, config)
    return config


def load_folder(path: str | epath.Path, config: ml_collections.ConfigDict | None = None):
    """(config, tokenizer, parameters) of a Hugging Face folder, read in memory: what
    `llmjax.load` gives for one. `config` (e.g. with command-line overrides) replaces the
    imported one; its objective picks the heads."""
    imported, params = import_folder(path, config.objective if config is not None else None)
    tokenizer = folder_tokenizer(path, imported)
    return (imported if config is None else config), tokenizer, params


def export_params(config: ml_collections.ConfigDict, params: nnx.State,
                  pad_id: int | None = None) -> tuple[dict, dict[str, np.ndarray]]:
    """(config.json dict, tensors) of an llmjax model in its Hugging Face family's format;
    `pad_id`: the tokenizer's, for the families that count positions from it (RoBERTa)."""
    from llmjax.objectives import get_objective

    family = export_family(config)
    objective = get_objective(config.objective)
    classifier = (config.model.arch == "decoder"
                  and not getattr(objective, "predicts_tokens", True))
    if classifier and getattr(objective, "prediction", None) not in ("label", "score"):
        raise ConfigError(f"objective={config.objective} on a decoder has no Hugging Face "
                          "export (a decoder is written as a causal LM, or with a "
                          "classification or regression head as ForSequenceClassification): "
                          "use the run through llmjax (predict, eval, llmjax.load)")
    problems = family.inexpressible(config)
    if problems:
        raise ConfigError(f"this run cannot be written as a Hugging Face {family.MODEL_TYPE} "
                          f"model: {'; '.join(problems)}")
    flat = {k: np.asarray(v, np.float32) for k, v in _flat(params).items()}
    if config.model.mtp_depth:  # training-only modules: the export predicts the next token
        logging.info("the multi-token-prediction modules (mtp/) are training-only and are not "
                     "exported")
        flat = {k: v for k, v in flat.items() if not k.startswith("mtp/")}
    if config.lora.rank:  # Hugging Face models have no adapters: fold them into the kernels
        from llmjax.models import lora

        flat = lora.merge(flat, config.lora)
    # a classifier: the body as the causal LM's (without an lm_head), then `score`
    score = flat.pop("classifier/dense/kernel") if classifier else None
    if getattr(family, "POSITIONS_AFTER_PAD", False):
        hf_config, tensors = family.export_tensors(config, flat, pad_id=pad_id)
    else:
        hf_config, tensors = family.export_tensors(config, flat)
    if score is not None:
        hf_config, tensors = _sequence_classifier(config, hf_config, tensors, score, pad_id)
    return hf_config, tensors


def _sequence_classifier(config: ml_collections.ConfigDict, hf_config: dict,
                         tensors: dict[str, np.ndarray], score_DxC: np.ndarray,
                         pad_id: int | None) -> tuple[dict, dict[str, np.ndarray]]:
    """A decoder's causal-LM export turned into its family's ForSequenceClassification: no
    lm_head, `score.weight` [C, D] (no bias) on the state of each row's last token before
    the padding, which transformers finds by `pad_token_id`."""
    tensors = {**tensors, "score.weight": score_DxC.T}
    (architecture,) = hf_config["architectures"]
    body = re.sub(r"(ForCausalLM|LMHeadModel)$", "", architecture)
    regression = score_DxC.shape[1] == 1 and config.objective == "regression"
    labels = ["LABEL_0"] if regression else config.data.labels.split(",")
    hf_config = {**hf_config, "architectures": [body + "ForSequenceClassification"],
                 "num_labels": len(labels), "pad_token_id": pad_id,
                 "problem_type": ("regression" if regression
                                  else "single_label_classification"),
                 "id2label": {str(i): name for i, name in enumerate(labels)},
                 "label2id": {name: i for i, name in enumerate(labels)}}
    return hf_config, tensors


def _decoder_classifier_head(hf_config: dict, tensors: dict[str, np.ndarray],
                             objective: str | None
                             ) -> tuple[dict[str, np.ndarray], np.ndarray | None, str | None]:
    """(tensors without `score.weight`, that head [C, D] or None, objective) of a decoder
    family's ForSequenceClassification folder: classification, or regression where its
    problem_type says so."""
    architectures = hf_config.get("architectures") or [""]
    if not (architectures[0].endswith("ForSequenceClassification")
            and "score.weight" in tensors):
        return tensors, None, objective
    tensors = dict(tensors)
    score = tensors.pop("score.weight")
    if objective is None:
        objective = ("regression" if hf_config.get("problem_type") == "regression"
                     else "classification")
    return tensors, score, objective


def write_folder(out: str | epath.Path, hf_config: dict, tensors: dict[str, np.ndarray]) -> None:
    from safetensors.numpy import save_file

    out = epath.Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(hf_config, indent=2, sort_keys=True))
    save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()},
              os.fspath(out / "model.safetensors"), metadata={"format": "pt"})


def import_to_workdir(path: str | epath.Path, out: str | epath.Path,
                      objective: str | None = None) -> ml_collections.ConfigDict:
    """Writes an llmjax workdir (config.json, tokenizer/, checkpoints/0 with the parameters)
    that `llmjax.load`, eval / generate and `init.workdir` accept. Returns its config."""
    from llmjax.train.checkpoint import Checkpointer

    out = epath.Path(out)
    occupied = _occupied(out)
    if occupied:
        raise ConfigError(f"--out={out} {occupied}: convert into a new (or empty) directory")
    config, params = import_folder(path, objective)
    tokenizer = folder_tokenizer(path, config)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer.save(out / "tokenizer")
    (out / "config.json").write_text(configs.to_json(config))
    ckpt = Checkpointer(out, async_save=False)
    ckpt.save(0, {"step": np.zeros((), np.int32), "params": jax.device_get(params)}, None,
              force=True)
    ckpt.wait()
    ckpt.close()
    return config


def export_workdir(workdir: str | epath.Path, out: str | epath.Path,
                   step: int | None = None) -> None:
    """Writes a run's parameters (latest checkpoint or `step`) as a Hugging Face folder that
    `transformers.AutoModel*.from_pretrained` loads, with its tokenizer when Hugging Face can
    read it (tokenizer.json, spiece.model). An existing Hugging Face folder at `out` is
    overwritten (as save_pretrained does); anything else there is refused, so an export never
    writes over a run."""
    from llmjax import api

    _check_export_target(epath.Path(out))
    run = api.load(workdir, step)
    tok = run.tokenizer
    pad_id = tok.pad_id
    classifier = getattr(run.model, "classifier", None) is not None
    if classifier and run.config.model.arch == "decoder" and pad_id == tok.eos_id:
        # ForSequenceClassification pools the last token that is not the pad id, and <eos>
        # ends every input of llmjax's layout: the folder pads with another special token
        pad_id = next(i for i in (tok.bos_id, tok.unk_id, 0, 1)
                      if i is not None and i != tok.eos_id)
        logging.info("the tokenizer pads with its <eos> id; the exported classifier pads with "
                     "id %d, so that transformers pools the <eos>", pad_id)
    hf_config, tensors = export_params(run.config, nnx.state(run.model, nnx.Param),
                                       pad_id=pad_id)
    for role in ("pad", "bos", "eos", "unk"):
        hf_config.setdefault(f"{role}_token_id", getattr(tok, f"{role}_id"))
    write_folder(out, hf_config, tensors)
    out = epath.Path(out)
    if hasattr(tok, "hf"):
        (out / "tokenizer.json").write_text(tok.hf.to_str())
        # names the special tokens, for AutoTokenizer and for importing the folder again
        ids = {role: getattr(tok, f"{role}_id") for role in SPECIAL_ROLES} | {"pad": pad_id}
        named = {f"{role}_token": tok.hf.id_to_token(i) for role, i in ids.items()
                 if i is not None}
        chat = {"chat_template": tok.chat_template} if tok.chat_template else {}
        (out / "tokenizer_config.json").write_text(json.dumps(
            {"tokenizer_class": "PreTrainedTokenizerFast", **named, **chat}, indent=2))
    elif hasattr(tok, "proto"):
        (out / "spiece.model").write_bytes(tok.proto)


def _occupied(out: epath.Path) -> str | None:
    """Why `out` cannot take new files ('is a file', 'already holds [...]'); None if it is
    absent or an empty directory."""
    if not out.exists():
        return None
    if not out.is_dir():
        return "is a file"
    names = sorted(p.name for p in out.iterdir())
    return f"already holds {names[:4]}" if names else None


def _check_export_target(out: epath.Path) -> None:
    occupied = None if is_hf_folder(out) else _occupied(out)
    if occupied:
        raise ConfigError(f"--out={out} {occupied} and is not a Hugging Face model folder (an "
                          "llmjax run?): export into a new directory")


# Model settings a fine-tuning config keeps when `init.hf_path` supplies the rest: how the
# run trains and computes, not the architecture it reads.
_KEPT_MODEL_KEYS = ("dropout_rate", "attention_dropout_rate", "dtype", "param_dtype",
                    "num_classes", "remat", "scan_layers", "logits_chunks", "attention_impl",
                    "attention_block_size", "float32_matmul_outputs", "moe_capacity_factor",
                    "moe_balance_loss_weight", "moe_z_loss_weight", "moe_bias_update_rate",
                    "mtp_depth", "mtp_loss_weight")


def apply_hf_model_config(config: ml_collections.ConfigDict) -> None:
    """Sets config.model (architecture and sizes) from the `init.hf_path` folder, keeping the
    run's objective and _KEPT_MODEL_KEYS (dropout, dtypes, memory levers, mixture training)."""
    hf_config, tensors = read_folder(config.init.hf_path)
    family = family_of(hf_config)
    imported = configs.base_config()
    family.configure(imported, hf_config, tensors, config.objective)
    for key in imported.model.keys():
        if key not in _KEPT_MODEL_KEYS:
            config.model[key] = imported.model[key]
    config.tokenizer.extra_ids = imported.tokenizer.extra_ids


def hf_initial_params(config: ml_collections.ConfigDict, params: nnx.State,
                      fresh: tuple[str, ...] = (), optional: tuple[str, ...] = ()
                      ) -> nnx.State:
    """`params` filled from the `init.hf_path` folder: the shared body always; heads the run
    has (and the checkpoint too) restored, other checkpoint heads dropped, `fresh` heads new,
    `optional` modules (multi-token prediction) new where the folder has none."""
    hf_config, tensors = read_folder(config.init.hf_path)
    family = family_of(hf_config)
    named, used = family.import_tensors(hf_config, tensors, config)
    check_all_used(tensors, used, family.IGNORED)
    present = {name.split("/")[0] for name in _flat(params)}
    named = {k: v for k, v in named.items()
             if k.split("/")[0] in present or k.split("/")[0] not in family.HEADS}
    named = {k: v for k, v in named.items() if k.split("/")[0] not in fresh}
    fresh = fresh + tuple(m for m in optional if not any(k.startswith(m + "/") for k in named))
    return fill_params(params, named, fresh=fresh + tuple(
        h for h in family.HEADS if not any(k.startswith(h + "/") for k in named)))
