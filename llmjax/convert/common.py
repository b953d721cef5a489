"""What the name-map modules share: checking that an llmjax model fits a family, reading
checkpoint tensors by name, and the tensor layouts several families use (LayerNorms, separate
or per-head fused attention projections, BLOOM's and GPT-NeoX's block)."""

from __future__ import annotations

import ml_collections
import numpy as np


def settings_problems(model: ml_collections.ConfigDict, wanted: dict, family: str,
                      whole_heads: bool = True, llama_like: bool = False,
                      neox_like: bool = False, activations: tuple[str, ...] | None = None
                      ) -> list[str]:
    """The model.* settings that differ from what `family` requires (empty: none); with
    `whole_heads`, heads must split emb_dim exactly (fused or reshaped projections). Only
    `llama_like` families have grouped key/value heads, query/key/value-only biases, rope
    scaling and sliding-window attention; only `neox_like` ones parallel attention and MLP
    and partial rotary positions. `activations`: the MLP activations the family can name."""
    problems = [f"model.{k}={model[k]!r} ({family} has {v!r})" for k, v in wanted.items()
                if model[k] != v]
    if activations is not None and model.activation not in activations:
        problems.append(f"model.activation={model.activation!r} ({family} has one of "
                        f"{', '.join(activations)})")
    if model.lm_head_bias and "lm_head_bias" not in wanted:
        problems.append(f"model.lm_head_bias=True ({family}'s output projection has no bias)")
    if not neox_like:
        if model.parallel_residual:
            problems.append(f"model.parallel_residual=True ({family} adds attention and MLP "
                            "one after the other)")
        if model.parallel_shared_norm:
            problems.append(f"model.parallel_shared_norm=True ({family} has no parallel blocks)")
        if model.rotary_fraction != 1.0:
            problems.append(f"model.rotary_fraction={model.rotary_fraction} ({family} rotates "
                            "whole heads, if any)")
    if whole_heads and (model.head_dim or model.emb_dim // model.num_heads) * \
            model.num_heads != model.emb_dim:
        problems.append("model.head_dim x num_heads != emb_dim")
    if not llama_like:
        if model.num_kv_heads not in (None, model.num_heads):
            problems.append(f"model.num_kv_heads={model.num_kv_heads} ({family} has a key/value "
                            "head per query head)")
        if model.qkv_bias not in (None, model.use_bias):
            problems.append(f"model.qkv_bias={model.qkv_bias} ({family} has biases on every "
                            "projection or on none)")
        if model.attention_window is not None:
            problems.append(f"model.attention_window={model.attention_window} ({family} "
                            "attends to every earlier token)")
        if model.qk_norm:
            problems.append(f"model.qk_norm=True ({family} has no norm on queries and keys)")
        if model.rope_scaling != "none":
            problems.append(f"model.rope_scaling={model.rope_scaling!r} ({family} has none)")
    return problems


class TensorReader:
    """`read(name)`: a checkpoint tensor by its name without an optional prefix (`bert.`,
    `transformer.`, `model.`), recording the full names used (`.used`)."""

    def __init__(self, tensors: dict, prefix: str = ""):
        self.tensors = tensors
        self.full_name = {n.removeprefix(prefix): n for n in tensors}
        self.used: set[str] = set()

    def __contains__(self, name: str) -> bool:
        return name in self.full_name

    def __call__(self, name: str):
        full = self.full_name[name]  # KeyError names the missing tensor
        self.used.add(full)
        return self.tensors[full]


def read_attention(get: TensorReader, theirs: str, ours: str, names: dict[str, str],
                   head_dim: int) -> dict[str, np.ndarray]:
    """Separate query / key / value / out Linear layers with biases (`names`: llmjax's name ->
    the family's, under `theirs`) as llmjax's attention `ours`: kernels [D, heads, K] and
    [heads, K, D], biases [heads, K] and [D]."""
    out = {}
    for name, their_name in names.items():
        w, b = get(f"{theirs}{their_name}.weight"), get(f"{theirs}{their_name}.bias")
        if name == "out":
            out[f"{ours}out/kernel"], out[f"{ours}out/bias"] = w.T.reshape(-1, head_dim,
                                                                           w.shape[0]), b
        else:
            out[f"{ours}{name}/kernel"] = w.T.reshape(w.shape[1], -1, head_dim)
            out[f"{ours}{name}/bias"] = b.reshape(-1, head_dim)
    return out


def read_layer_norm(get: TensorReader, theirs: str, ours: str) -> dict[str, np.ndarray]:
    """A PyTorch LayerNorm `theirs` (.weight, .bias) as llmjax's Norm `ours` (/scale, /bias)."""
    return {f"{ours}/scale": get(f"{theirs}.weight"), f"{ours}/bias": get(f"{theirs}.bias")}


def write_layer_norm(flat: dict[str, np.ndarray], ours: str, theirs: str
                     ) -> dict[str, np.ndarray]:
    """read_layer_norm's inverse."""
    return {f"{theirs}.weight": flat[f"{ours}/scale"], f"{theirs}.bias": flat[f"{ours}/bias"]}


# Hugging Face `hidden_act` / `activation_function` -> llmjax model.activation
HF_ACTIVATIONS = {"gelu_new": "gelu", "gelu_pytorch_tanh": "gelu", "gelu_fast": "gelu",
                  "gelu": "gelu_exact", "relu": "relu", "silu": "silu", "swish": "silu"}
# ... and back: the name each llmjax activation is written under
ACTIVATION_NAMES = {"gelu": "gelu_new", "gelu_exact": "gelu", "relu": "relu", "silu": "silu"}

_QKV = ("query", "key", "value")
_FUSED_BLOCK_NORMS = (("attention_norm", "input_layernorm"),
                      ("mlp_norm", "post_attention_layernorm"))


def import_fused_block(get: TensorReader, theirs: str, ours: str, attention: str, heads: int,
                       head_dim: int) -> dict[str, np.ndarray]:
    """A BLOOM / GPT-NeoX block (`theirs` = its prefix, `attention` = its attention module's
    name): per-head fused query_key_value, dense out projection, input_layernorm and
    post_attention_layernorm, mlp.dense_h_to_4h / dense_4h_to_h, all with biases."""
    a = f"{theirs}{attention}."
    out = split_head_fused_qkv(get(a + "query_key_value.weight"), get(a + "query_key_value.bias"),
                               heads, head_dim, ours + "attention/")
    out[ours + "attention/out/kernel"] = get(a + "dense.weight").T.reshape(heads, head_dim, -1)
    out[ours + "attention/out/bias"] = get(a + "dense.bias")
    for norm, name in _FUSED_BLOCK_NORMS:
        out.update(read_layer_norm(get, theirs + name, ours + norm))
    for dense, name in (("wi", "dense_h_to_4h"), ("wo", "dense_4h_to_h")):
        out[ours + f"mlp/{dense}/kernel"] = get(f"{theirs}mlp.{name}.weight").T
        out[ours + f"mlp/{dense}/bias"] = get(f"{theirs}mlp.{name}.bias")
    return out


def export_fused_block(flat: dict[str, np.ndarray], ours: str, theirs: str, attention: str
                       ) -> dict[str, np.ndarray]:
    """import_fused_block's inverse: the block's tensors under their Hugging Face names."""
    a = f"{theirs}{attention}."
    t = {}
    t[a + "query_key_value.weight"], t[a + "query_key_value.bias"] = fuse_head_qkv(
        flat, ours + "attention/")
    out_kernel = flat[ours + "attention/out/kernel"]
    t[a + "dense.weight"] = out_kernel.reshape(-1, out_kernel.shape[-1]).T
    t[a + "dense.bias"] = flat[ours + "attention/out/bias"]
    for norm, name in _FUSED_BLOCK_NORMS:
        t.update(write_layer_norm(flat, ours + norm, theirs + name))
    for dense, name in (("wi", "dense_h_to_4h"), ("wo", "dense_4h_to_h")):
        t[f"{theirs}mlp.{name}.weight"] = flat[ours + f"mlp/{dense}/kernel"].T
        t[f"{theirs}mlp.{name}.bias"] = flat[ours + f"mlp/{dense}/bias"]
    return t


def split_head_fused_qkv(weight: np.ndarray, bias: np.ndarray, heads: int, head_dim: int,
                         prefix: str) -> dict[str, np.ndarray]:
    """A PyTorch query_key_value Linear laid out per head ([H * 3 * K, D], BLOOM's and
    GPT-NeoX's) -> `prefix` + query/key/value kernels [D, H, K] and biases [H, K]."""
    w, b = weight.reshape(heads, 3, head_dim, -1), bias.reshape(heads, 3, head_dim)
    out = {}
    for j, name in enumerate(_QKV):
        out[prefix + f"{name}/kernel"] = w[:, j].transpose(2, 0, 1)
        out[prefix + f"{name}/bias"] = b[:, j]
    return out


def fuse_head_qkv(flat: dict[str, np.ndarray], prefix: str) -> tuple[np.ndarray, np.ndarray]:
    """split_head_fused_qkv's inverse: (weight [H * 3 * K, D], bias [H * 3 * K])."""
    w = np.stack([flat[prefix + f"{n}/kernel"].transpose(1, 2, 0) for n in _QKV], axis=1)
    b = np.stack([flat[prefix + f"{n}/bias"] for n in _QKV], axis=1).reshape(-1)
    return w.reshape(-1, w.shape[-1]), b
