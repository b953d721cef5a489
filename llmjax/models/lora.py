"""LoRA (Hu et al. 2021): low-rank adapters on chosen dense layers, for fine-tuning a large
model by training few parameters.

A targeted Dense computes y = x W + (x A) B · alpha / rank with A [in, rank] and B [rank, out];
B starts at zero, so the adapted model starts as the base model. Training updates A and B
(and a fine-tuning task head) only (optim.make_optimizer's `trainable`); `merge` folds them
into W for an export.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import jax
import ml_collections
import numpy as np
from flax import nnx

from llmjax.models.layers import Dense

ADAPTER_NAMES = ("lora_a", "lora_b")


def is_adapter(name: str) -> bool:
    """Is the parameter at this path ('layers/0/attention/query/lora_a') an adapter?"""
    return name.rsplit("/", 1)[-1] in ADAPTER_NAMES


def trainable(objective) -> Callable[[str], bool]:
    """What a LoRA run trains: the adapters, and the task head a fine-tuning objective adds
    (a classifier and its pooler start fresh, so they must learn; PEFT's modules_to_save)."""
    heads = (*getattr(objective, "fresh_modules", ()), *getattr(objective, "optional_modules", ()))
    return lambda name: is_adapter(name) or name.split("/")[0] in heads


def dense_layers(model: nnx.Module) -> dict[str, Dense]:
    """{path: Dense} of every dense layer of `model` ('layers/0/attention/query', ...)."""
    return {"/".join(map(str, path)): module for path, module in nnx.iter_graph(model)
            if isinstance(module, Dense)}


def attach(model: nnx.Module, lora: ml_collections.ConfigDict, seed: int) -> None:
    """Adds adapters of `lora.rank` to the dense layers whose path matches `lora.targets` (a
    regular expression searched in e.g. 'layers/3/attention/query'); A ~ N(0, 1 / in), B = 0."""
    from llmjax.configs import ConfigError

    layers = dense_layers(model)
    chosen = {path: dense for path, dense in layers.items() if re.search(lora.targets, path)}
    if not chosen:
        examples = sorted({re.sub(r"\d+/", "", p) for p in layers})
        raise ConfigError(f"lora.targets={lora.targets!r} matches none of the model's dense "
                          f"layers ({', '.join(examples)}): e.g. lora.targets='query|value'")
    key = jax.random.PRNGKey(seed)
    for i, (_, dense) in enumerate(sorted(chosen.items())):
        dense.add_adapter(lora.rank, lora.alpha, jax.random.fold_in(key, i))


def merge(flat: dict[str, np.ndarray], lora: ml_collections.ConfigDict
          ) -> dict[str, np.ndarray]:
    """Flat parameters (name -> array) with every adapter folded into its kernel:
    W + A B · alpha / rank, reshaped to W's shape; the adapters themselves dropped."""
    out = {k: v for k, v in flat.items() if not is_adapter(k)}
    scale = lora.alpha / lora.rank if lora.rank else 0.0
    for name in flat:
        if name.endswith("/lora_a"):
            layer = name.removesuffix("/lora_a")
            kernel = out[f"{layer}/kernel"]
            delta = (flat[name] @ flat[f"{layer}/lora_b"]) * scale
            out[f"{layer}/kernel"] = kernel + delta.reshape(kernel.shape).astype(kernel.dtype)
    return out
