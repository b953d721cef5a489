"""What the name-map modules share: checking that an llmjax model fits a family."""

from __future__ import annotations

import ml_collections


def settings_problems(model: ml_collections.ConfigDict, wanted: dict, family: str,
                      whole_heads: bool = True, llama_like: bool = False) -> list[str]:
    """The model.* settings that differ from what `family` requires (empty: none); with
    `whole_heads`, heads must split emb_dim exactly (fused or reshaped projections). Only
    `llama_like` families have grouped key/value heads, query/key/value-only biases, rope
    scaling and sliding-window attention."""
    problems = [f"model.{k}={model[k]!r} ({family} has {v!r})" for k, v in wanted.items()
                if model[k] != v]
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
