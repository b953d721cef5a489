"""Mixtral, Qwen2-MoE, Qwen3-MoE and OLMoE (their ForCausalLM / Model) <-> llmjax Decoder with
mixture-of-experts feed-forward layers (models/moe.py).

All three are LLaMA (convert/llama.py: pre-RMSNorm, rotary positions, grouped-query attention,
no biases) with each MLP replaced by a router (`gate`, a bias-free Linear [E, D]) over E SwiGLU
experts, each token through its top-k. Mixtral names its block `block_sparse_moe` and its
expert Linears w1 (gate), w3 (up) and w2 (down), and always rescales the chosen experts'
weights to sum 1; Qwen3-MoE and OLMoE name them as LLaMA's MLP under `mlp.experts.J` and
rescale only with norm_topk_prob. Qwen2-MoE adds Qwen2's query/key/value biases and a shared
expert beside the routed ones (`shared_expert`, an MLP every token runs through, scaled by
sigmoid(`shared_expert_gate`): model.moe_shared_mlp_dim). Qwen2- and Qwen3-MoE may keep dense
MLPs on some layers (decoder_sparse_step: llmjax's model.moe_every; mlp_only_layers of the
first k: model.moe_first_dense), wider than an expert (model.mlp_dim beside model.moe_mlp_dim);
Qwen3-MoE adds Qwen3's per-head QK-norm, OLMoE OLMo 2's norm over all heads' queries and keys,
on pre-norm blocks. Checkpoints hold one tensor per expert
(transformers >= 5 fuses them in memory, as `experts.gate_up_proj` and `experts.down_proj`,
and writes them back apart); both layouts import, exports write the per-expert one.

Hugging Face trains these models dropless: an imported model runs dropless in evaluation and
decoding as llmjax's always do; its training follows the run's model.moe_capacity_factor.
"""

from __future__ import annotations

import ml_collections
import numpy as np

from llmjax.convert import llama
from llmjax.convert.common import TensorReader, settings_problems

MODEL_TYPE = "mixtral"
MODEL_TYPES = ("mixtral", "qwen2_moe", "qwen3_moe", "olmoe")
HEADS = llama.HEADS
IGNORED = llama.IGNORED
# the LLaMA-family type whose attention each one shares (what llama.configure reads)
_ATTENTION_TYPE = {"mixtral": "mistral", "qwen2_moe": "qwen2", "qwen3_moe": "qwen3",
                   "olmoe": "llama"}
# model_type -> (the mixture block's name, its experts' Linears as llmjax's wi, wg, wo)
_EXPERT_NAMES = {"mixtral": ("block_sparse_moe", ("w1", "w3", "w2")),
                 "qwen2_moe": ("mlp", ("gate_proj", "up_proj", "down_proj")),
                 "qwen3_moe": ("mlp", ("gate_proj", "up_proj", "down_proj")),
                 "olmoe": ("mlp", ("gate_proj", "up_proj", "down_proj"))}


def _sparse_layers(hf: dict) -> list[bool]:
    """Which layers have a mixture (Qwen3-MoE's rule: not in mlp_only_layers, and every
    decoder_sparse_step-th)."""
    step, dense = hf.get("decoder_sparse_step") or 1, set(hf.get("mlp_only_layers") or [])
    return [i not in dense and (i + 1) % step == 0 for i in range(hf["num_hidden_layers"])]


def configure(config: ml_collections.ConfigDict, hf: dict, tensors: dict, objective: str | None
              ) -> None:
    from llmjax.convert.hf import ConversionError
    from llmjax.models.config import ModelConfig
    from llmjax.models.moe import is_moe_layer

    kind = hf["model_type"]
    if hf.get("clip_qkv") is not None:
        raise ConversionError(f"clip_qkv={hf['clip_qkv']} (OLMoE's clamped projections) has no "
                              "llmjax match")
    if hf.get("shared_expert_intermediate_size") and kind != "qwen2_moe":
        raise ConversionError(f"shared experts in a {kind} model have no llmjax match")
    llama.configure(config, {**hf, "model_type": _ATTENTION_TYPE[kind]}, tensors, objective)
    m = config.model
    if kind == "qwen2_moe":
        m.qkv_bias = True if hf.get("qkv_bias", True) else None
        m.moe_shared_mlp_dim = hf.get("shared_expert_intermediate_size") or 0
    m.num_experts = hf.get("num_local_experts") or hf["num_experts"]
    m.num_experts_per_token = hf["num_experts_per_tok"]
    m.moe_normalize_top_k = True if kind == "mixtral" else bool(hf.get("norm_topk_prob"))
    sparse = _sparse_layers(hf)
    expert_dim = hf.get("moe_intermediate_size") or hf["intermediate_size"]
    # the dense layers keep intermediate_size, the experts moe_intermediate_size
    m.mlp_dim = expert_dim if all(sparse) else hf["intermediate_size"]
    m.moe_mlp_dim = expert_dim if expert_dim != m.mlp_dim else None
    m.moe_every = hf.get("decoder_sparse_step") or 1
    dense = sorted(hf.get("mlp_only_layers") or [])
    if dense == list(range(len(dense))):  # the first k layers: llmjax's model.moe_first_dense
        m.moe_first_dense = len(dense)
    cfg = ModelConfig.from_config(m, vocab_size=m.vocab_size)
    if sparse != [is_moe_layer(cfg, i) for i in range(m.num_layers)]:
        raise ConversionError(f"mlp_only_layers={hf.get('mlp_only_layers')} has no llmjax "
                              "match (llmjax's dense layers are the first "
                              "model.moe_first_dense and those between every "
                              "model.moe_every-th)")
    if kind == "olmoe":
        m.qk_norm, m.qk_norm_scope = True, "all"


def expert_kernels(get: TensorReader, m: ml_collections.ConfigDict, block: str,
                   names: tuple[str, str, str]) -> dict[str, np.ndarray]:
    """The experts of the mixture block `block` (its prefix) as llmjax's [E, D, F] wi / wg and
    [E, F, D] wo kernels, from one Linear per expert or transformers' fused tensors."""
    if f"{block}experts.gate_up_proj" in get:  # [E, 2F, D] (gate rows, then up) and [E, D, F]
        gate_up = get(f"{block}experts.gate_up_proj")
        f = m.moe_mlp_dim or m.mlp_dim
        return {"wi": gate_up[:, :f].transpose(0, 2, 1), "wg": gate_up[:, f:].transpose(0, 2, 1),
                "wo": get(f"{block}experts.down_proj").transpose(0, 2, 1)}
    return {ours: np.stack([get(f"{block}experts.{j}.{theirs}.weight").T
                            for j in range(m.num_experts)])
            for ours, theirs in zip(("wi", "wg", "wo"), names, strict=True)}


def import_mixture(get: TensorReader, m: ml_collections.ConfigDict, ours: str, block: str,
                   names: tuple[str, str, str]) -> dict[str, np.ndarray]:
    """A mixture block's router and experts under llmjax prefix `ours` ('layers/1/mlp/'),
    from its Hugging Face prefix `block` (its `gate` and `experts`)."""
    out = {ours + "router": get(block + "gate.weight").T}  # [D, E]
    for name, kernel in expert_kernels(get, m, block, names).items():
        out[ours + f"experts/{name}/kernel"] = kernel
    return out


def export_mixture(flat: dict[str, np.ndarray], m: ml_collections.ConfigDict, ours: str,
                   block: str, names: tuple[str, str, str]) -> dict[str, np.ndarray]:
    """import_mixture's inverse, one Linear per expert (as checkpoints hold them)."""
    t = {block + "gate.weight": flat[ours + "router"].T}
    for name, theirs in zip(("wi", "wg", "wo"), names, strict=True):
        kernels = flat[ours + f"experts/{name}/kernel"]
        for j in range(m.num_experts):
            t[f"{block}experts.{j}.{theirs}.weight"] = kernels[j].T
    return t


def import_tensors(hf: dict, tensors: dict[str, np.ndarray], config: ml_collections.ConfigDict
                   ) -> tuple[dict[str, np.ndarray], set[str]]:
    """({llmjax parameter name: array}, the HF names used)."""
    m = config.model
    block_name, expert_names = _EXPERT_NAMES[hf["model_type"]]
    get = TensorReader(tensors, "model.")
    out = llama.import_ends(get, m)
    for i, sparse in enumerate(_sparse_layers(hf)):
        p, q = f"layers.{i}.", f"layers/{i}/"
        out.update(llama.import_attention(get, m, i))
        out.update(llama.import_qk_norms(get, m, i))
        out[q + "attention_norm/scale"] = get(p + "input_layernorm.weight")
        out[q + "mlp_norm/scale"] = get(p + "post_attention_layernorm.weight")
        if not sparse:
            out.update(llama.import_gated_mlp(get, p + "mlp.", q + "mlp/"))
            continue
        block = f"{p}{block_name}."
        out.update(import_mixture(get, m, q + "mlp/", block, expert_names))
        if m.moe_shared_mlp_dim:
            out.update(llama.import_gated_mlp(get, block + "shared_expert.", q + "mlp/shared/"))
            out[q + "mlp/shared_gate/kernel"] = get(block + "shared_expert_gate.weight").T
    return out, get.used


def _export_type(m: ml_collections.ConfigDict) -> str:
    if m.moe_shared_mlp_dim:
        return "qwen2_moe"
    if m.qk_norm:
        return "olmoe" if m.qk_norm_scope == "all" else "qwen3_moe"
    return "mixtral"


def inexpressible(config: ml_collections.ConfigDict) -> list[str]:
    m = config.model
    kind = _export_type(m)
    wanted = {"position_embedding": "rotary", "norm": "rmsnorm", "norm_position": "pre",
              "use_bias": False, "gated_mlp": True, "activation": "silu", "embed_norm": False,
              "scale_attention": True, "qkv_bias": True if kind == "qwen2_moe" else None}
    if kind == "qwen2_moe":
        wanted["qk_norm"] = False
    family = {"mixtral": "Mixtral", "qwen2_moe": "Qwen2-MoE", "qwen3_moe": "Qwen3-MoE",
              "olmoe": "OLMoE"}[kind]
    problems = settings_problems(m, wanted, family, whole_heads=False, llama_like=True)
    if kind == "mixtral" and not m.moe_normalize_top_k:
        problems.append("model.moe_normalize_top_k=False without QK-norm (Mixtral rescales "
                        "the chosen experts' weights; Qwen3-MoE and OLMoE, with QK-norm, may "
                        "not)")
    if kind == "olmoe" and m.moe_normalize_top_k:
        problems.append("model.moe_normalize_top_k=True with model.qk_norm_scope=all (OLMoE "
                        "never rescales)")
    if (m.moe_every > 1 or m.moe_first_dense) and kind not in ("qwen2_moe", "qwen3_moe"):
        problems.append(f"model.moe_every={m.moe_every}, model.moe_first_dense="
                        f"{m.moe_first_dense} ({family} has a mixture on every layer; Qwen2- "
                        "and Qwen3-MoE may keep dense layers)")
    deepseek = {"moe_router": "softmax", "moe_router_bias": False, "moe_groups": 0,
                "moe_routed_scale": 1.0, "moe_shared_gated": True}
    problems += [f"model.{key}={m[key]!r} (DeepSeek's routing; {family} routes by softmax "
                 f"alone)" for key, value in deepseek.items() if m[key] != value]
    if m.attention_window and kind != "mixtral":
        problems.append(f"model.attention_window with QK-norm ({family} attends to every "
                        "earlier token)")
    return problems


def export_tensors(config: ml_collections.ConfigDict, flat: dict[str, np.ndarray]
                   ) -> tuple[dict, dict[str, np.ndarray]]:
    from llmjax.models.config import ModelConfig
    from llmjax.models.moe import is_moe_layer

    m = config.model
    kind = _export_type(m)
    block_name, expert_names = _EXPERT_NAMES[kind]
    cfg = ModelConfig.from_config(m)
    expert_dim = m.moe_mlp_dim or m.mlp_dim
    t = llama.export_ends(flat)
    for i in range(m.num_layers):
        p, q = f"model.layers.{i}.", f"layers/{i}/"
        t.update(llama.export_attention(flat, m, i))
        t.update(llama.export_qk_norms(flat, m, i))
        t[p + "input_layernorm.weight"] = flat[q + "attention_norm/scale"]
        t[p + "post_attention_layernorm.weight"] = flat[q + "mlp_norm/scale"]
        if not is_moe_layer(cfg, i):
            t.update(llama.export_gated_mlp(flat, q + "mlp/", p + "mlp."))
            continue
        block = f"{p}{block_name}."
        t.update(export_mixture(flat, m, q + "mlp/", block, expert_names))
        if m.moe_shared_mlp_dim:
            t.update(llama.export_gated_mlp(flat, q + "mlp/shared/", block + "shared_expert."))
            t[block + "shared_expert_gate.weight"] = flat[q + "mlp/shared_gate/kernel"].T
    rope = llama.rope_parameters(m)
    architecture = {"mixtral": "MixtralForCausalLM", "qwen2_moe": "Qwen2MoeForCausalLM",
                    "qwen3_moe": "Qwen3MoeForCausalLM", "olmoe": "OlmoeForCausalLM"}[kind]
    hf = {"model_type": kind, "architectures": [architecture], "vocab_size": m.vocab_size,
          "hidden_size": m.emb_dim,
          "intermediate_size": m.mlp_dim if kind in ("qwen2_moe", "qwen3_moe") else expert_dim,
          "num_hidden_layers": m.num_layers, "num_attention_heads": m.num_heads,
          "num_key_value_heads": m.num_kv_heads or m.num_heads,
          "head_dim": m.head_dim or m.emb_dim // m.num_heads,
          "max_position_embeddings": m.max_len, "rms_norm_eps": m.norm_epsilon,
          "rope_theta": m.rotary_base, "rope_scaling": None if m.rope_scaling == "none" else rope,
          "rope_parameters": rope, "hidden_act": "silu", "attention_bias": False,
          "tie_word_embeddings": bool(m.tie_embeddings), "attention_dropout": 0.0,
          "num_experts_per_tok": m.num_experts_per_token}
    if kind == "mixtral":
        hf.update(num_local_experts=m.num_experts, sliding_window=m.attention_window,
                  router_jitter_noise=0.0)
    else:
        hf.update(num_experts=m.num_experts, norm_topk_prob=bool(m.moe_normalize_top_k))
    if kind in ("qwen2_moe", "qwen3_moe"):
        hf.update(moe_intermediate_size=expert_dim, decoder_sparse_step=m.moe_every,
                  mlp_only_layers=list(range(m.moe_first_dense)), use_sliding_window=False,
                  sliding_window=None)
    if kind == "qwen2_moe":
        hf.update(shared_expert_intermediate_size=m.moe_shared_mlp_dim, qkv_bias=True)
    if kind == "olmoe":
        hf.update(clip_qkv=None)
    return hf, t
