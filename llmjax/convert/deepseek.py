"""DeepSeek-V2 and DeepSeek-V3 (their ForCausalLM / Model) <-> llmjax Decoder with multi-head
latent attention (models/latent_attention.py) and DeepSeek's mixture of experts (models/moe.py).

Both are LLaMA's pre-RMSNorm decoder (convert/llama.py) with MLA in place of grouped-query
attention: `q_proj` (or `q_a_proj` -> `q_a_layernorm` -> `q_b_proj` with q_lora_rank) gives
each head qk_nope_head_dim + qk_rope_head_dim query dims; `kv_a_proj_with_mqa` the latent
(kv_lora_rank, normalised by `kv_a_layernorm`) and one rotary key part for all heads;
`kv_b_proj` [H * (nope + v), r] the per-head keys and values (llmjax's key_up and value_up).
Their rotary dims rotate in interleaved pairs (x0, x1), (x2, x3), ... where llmjax rotates
halves: import permutes those projection columns to halves, export back (V3's
rope_interleave=false folders are already in halves). The first first_k_dense_replace layers
keep a dense MLP of intermediate_size (model.mlp_dim); the others are a router (`gate`) over
n_routed_experts SwiGLU experts of moe_intermediate_size (model.moe_mlp_dim) plus
n_shared_experts always-on ones, fused into one ungated shared MLP (model.moe_shared_mlp_dim,
moe_shared_gated=False), the chosen weights times routed_scaling_factor.

V2 routes by softmax, among the topk_group best of n_group groups (by their best expert) with
topk_method=group_limited_greedy, and never rescales the chosen weights (Hugging Face's V2
ignores norm_topk_prob). V3 routes by sigmoid scores, chosen through `e_score_correction_bias`
(model.moe_router_bias) among the topk_group best groups by their best two experts' sum,
rescaled with norm_topk_prob. YaRN's mscale_all_dim scales the attention logits
(model.rope_mscale_all_dim). V3's multi-token-prediction layers (model.layers.N and on, past
num_hidden_layers: enorm, hnorm, eh_proj, a decoder layer, shared_head.norm) import as
llmjax's (models/mtp.py, model.mtp_depth) for causal language modelling; exports leave them
out, as transformers' DeepSeek-V3 runs without them. FP8 checkpoints
(DeepSeek's own release: weights with weight_scale_inv) are refused: dequantize them first.
"""

from __future__ import annotations

import re

import ml_collections
import numpy as np

from llmjax.convert import llama, mixtral
from llmjax.convert.common import TensorReader, settings_problems

MODEL_TYPE = "deepseek_v3"
MODEL_TYPES = ("deepseek_v2", "deepseek_v3")
HEADS = llama.HEADS
IGNORED = llama.IGNORED
_EXPERT_NAMES = ("gate_proj", "up_proj", "down_proj")  # llmjax's wi, wg, wo


def _interleaved(hf: dict) -> bool:
    """Whether the folder's rotary dims rotate in interleaved pairs (V2 always; V3 unless
    rope_interleave is false)."""
    return hf["model_type"] == "deepseek_v2" or hf.get("rope_interleave", True)


def _halves(rope_dim: int) -> np.ndarray:
    """The column order taking interleaved pairs to llmjax's halves: [0, 2, 4, ..., 1, 3, ...]."""
    return np.concatenate([np.arange(0, rope_dim, 2), np.arange(1, rope_dim, 2)])


def configure(config: ml_collections.ConfigDict, hf: dict, tensors: dict, objective: str | None
              ) -> None:
    from llmjax.convert.hf import ConversionError

    scaled = sorted(k for k in tensors if k.endswith("weight_scale_inv"))
    if scaled:
        raise ConversionError(f"{scaled[0]}: an FP8 block-quantised checkpoint (DeepSeek's own "
                              "release) has no llmjax match: dequantize it to bfloat16 first "
                              "(e.g. DeepSeek-V3's inference/fp8_cast_bf16.py)")
    kind = hf["model_type"]
    llama.configure(config, {**hf, "model_type": "llama", "head_dim": None}, tensors, objective)
    m = config.model
    m.num_kv_heads = None
    m.head_dim, m.qk_rope_head_dim = hf["qk_nope_head_dim"], hf["qk_rope_head_dim"]
    m.kv_lora_rank, m.q_lora_rank = hf["kv_lora_rank"], hf.get("q_lora_rank") or 0
    m.v_head_dim = hf["v_head_dim"]
    scaling = llama.rope_settings(hf)[1] or {}
    if m.rope_scaling == "yarn":
        m.rope_mscale_all_dim = float(scaling.get("mscale_all_dim") or 0.0)
    # V3's multi-token-prediction layers, kept where the run models language
    mtp = [k for k in range(hf.get("num_nextn_predict_layers") or 0)
           if f"model.layers.{m.num_layers + k}.eh_proj.weight" in tensors]
    if config.objective == "causal_lm":
        m.mtp_depth = len(mtp)
    experts = hf.get("n_routed_experts") or hf.get("num_experts") or 0
    first_dense = hf.get("first_k_dense_replace") or 0
    if not experts or first_dense >= m.num_layers:
        return  # every layer dense
    if (hf.get("moe_layer_freq") or 1) != 1:
        raise ConversionError(f"moe_layer_freq={hf['moe_layer_freq']} has no llmjax match "
                              "(Hugging Face's DeepSeek puts a mixture on every layer from "
                              "first_k_dense_replace on)")
    m.num_experts, m.num_experts_per_token = experts, hf["num_experts_per_tok"]
    m.moe_first_dense, m.moe_mlp_dim = first_dense, hf["moe_intermediate_size"]
    m.moe_shared_mlp_dim = hf["moe_intermediate_size"] * (hf.get("n_shared_experts") or 0)
    m.moe_shared_gated = False
    m.moe_routed_scale = float(hf.get("routed_scaling_factor") or 1.0)
    groups = hf.get("n_group") or 0
    if kind == "deepseek_v3":
        m.moe_router, m.moe_router_bias = "sigmoid", True
        m.moe_normalize_top_k = bool(hf.get("norm_topk_prob"))
    else:
        m.moe_normalize_top_k = False
        if hf.get("topk_method", "greedy") == "greedy":
            groups = 0
        elif hf["topk_method"] != "group_limited_greedy":
            raise ConversionError(f"topk_method={hf['topk_method']!r} has no llmjax match "
                                  "(greedy, group_limited_greedy)")
    if groups > 1:
        m.moe_groups, m.moe_group_top_k = groups, hf["topk_group"]


def _import_attention(get: TensorReader, m: ml_collections.ConfigDict, i: int,
                      interleaved: bool, ours: str) -> dict[str, np.ndarray]:
    """Layer i's attention under llmjax prefix `ours` ('layers/0/')."""
    p, q = f"layers.{i}.self_attn.", f"{ours}attention/"
    d, h, n, rope = m.emb_dim, m.num_heads, m.head_dim, m.qk_rope_head_dim
    r, v = m.kv_lora_rank, m.v_head_dim
    order = _halves(rope) if interleaved else np.arange(rope)
    out = {}
    if m.q_lora_rank:
        out[q + "query_down/kernel"] = get(p + "q_a_proj.weight").T
        out[q + "query_norm/scale"] = get(p + "q_a_layernorm.weight")
        query = get(p + "q_b_proj.weight").T.reshape(m.q_lora_rank, h, n + rope)
    else:
        query = get(p + "q_proj.weight").T.reshape(d, h, n + rope)
    out[q + "query/kernel"] = np.concatenate([query[..., :n], query[..., n:][..., order]], -1)
    kv_down = get(p + "kv_a_proj_with_mqa.weight").T  # [D, r + rope]
    out[q + "kv_down/kernel"] = np.concatenate([kv_down[:, :r], kv_down[:, r:][:, order]], -1)
    out[q + "kv_norm/scale"] = get(p + "kv_a_layernorm.weight")
    kv_up = get(p + "kv_b_proj.weight").T.reshape(r, h, n + v)
    out[q + "key_up/kernel"], out[q + "value_up/kernel"] = kv_up[..., :n], kv_up[..., n:]
    out[q + "out/kernel"] = get(p + "o_proj.weight").T.reshape(h, v, d)
    return out


def _export_attention(flat: dict[str, np.ndarray], m: ml_collections.ConfigDict, i: int
                      ) -> dict[str, np.ndarray]:
    """_import_attention's inverse, writing interleaved rotary columns."""
    p, q = f"model.layers.{i}.self_attn.", f"layers/{i}/attention/"
    d, h, n, rope = m.emb_dim, m.num_heads, m.head_dim, m.qk_rope_head_dim
    r, v = m.kv_lora_rank, m.v_head_dim or m.head_dim
    back = np.argsort(_halves(rope))
    t = {}
    query = flat[q + "query/kernel"]  # [in, H, n + rope]
    query = np.concatenate([query[..., :n], query[..., n:][..., back]], -1)
    if m.q_lora_rank:
        t[p + "q_a_proj.weight"] = flat[q + "query_down/kernel"].T
        t[p + "q_a_layernorm.weight"] = flat[q + "query_norm/scale"]
        t[p + "q_b_proj.weight"] = query.reshape(m.q_lora_rank, -1).T
    else:
        t[p + "q_proj.weight"] = query.reshape(d, -1).T
    kv_down = flat[q + "kv_down/kernel"]
    t[p + "kv_a_proj_with_mqa.weight"] = np.concatenate(
        [kv_down[:, :r], kv_down[:, r:][:, back]], -1).T
    t[p + "kv_a_layernorm.weight"] = flat[q + "kv_norm/scale"]
    kv_up = np.concatenate([flat[q + "key_up/kernel"], flat[q + "value_up/kernel"]], -1)
    t[p + "kv_b_proj.weight"] = kv_up.reshape(r, h * (n + v)).T
    t[p + "o_proj.weight"] = flat[q + "out/kernel"].reshape(h * v, d).T
    return t


def import_tensors(hf: dict, tensors: dict[str, np.ndarray], config: ml_collections.ConfigDict
                   ) -> tuple[dict[str, np.ndarray], set[str]]:
    """({llmjax parameter name: array}, the HF names used)."""

    m = config.model
    get = TensorReader(tensors, "model.")
    out = llama.import_ends(get, m)
    for i in range(m.num_layers):
        out.update(_import_block(get, hf, m, i, f"layers/{i}/"))
    for k in range(m.mtp_depth):  # DeepSeek-V3's MTP layers follow the last one
        p, q = f"layers.{m.num_layers + k}.", f"mtp/{k}/"
        if p + "eh_proj.weight" not in get:  # none in the folder: the run's start new
            break
        out.update(_import_block(get, hf, m, m.num_layers + k, q + "block/"))
        out[q + "embed_norm/scale"] = get(p + "enorm.weight")
        out[q + "hidden_norm/scale"] = get(p + "hnorm.weight")
        out[q + "proj/kernel"] = get(p + "eh_proj.weight").T  # [2D, D]: embedding, then states
        out[q + "output_norm/scale"] = get(p + "shared_head.norm.weight")
    # the rest of any layer past the last (V3 keeps copies of the token table and output
    # head there; MTP layers when the run predicts the next token only): read, not imported
    past = re.compile(r"model\.layers\.(\d+)\.")
    extra = {k for k in tensors
             if (match := past.match(k)) and int(match.group(1)) >= m.num_layers}
    return out, get.used | extra


def _import_block(get: TensorReader, hf: dict, m: ml_collections.ConfigDict, i: int, ours: str
                  ) -> dict[str, np.ndarray]:
    """Decoder layer i (a mixture from first_k_dense_replace on) under llmjax prefix `ours`."""
    from llmjax.models.config import ModelConfig
    from llmjax.models.moe import is_moe_layer

    p = f"layers.{i}."
    out = _import_attention(get, m, i, _interleaved(hf), ours)
    out[ours + "attention_norm/scale"] = get(p + "input_layernorm.weight")
    out[ours + "mlp_norm/scale"] = get(p + "post_attention_layernorm.weight")
    if not is_moe_layer(ModelConfig.from_config(m), i):
        return {**out, **llama.import_gated_mlp(get, p + "mlp.", ours + "mlp/")}
    block = p + "mlp."
    out.update(mixtral.import_mixture(get, m, ours + "mlp/", block, _EXPERT_NAMES))
    if m.moe_router_bias:
        out[ours + "mlp/router_bias"] = get(block + "gate.e_score_correction_bias")
    if m.moe_shared_mlp_dim:
        out.update(llama.import_gated_mlp(get, block + "shared_experts.", ours + "mlp/shared/"))
    return out


def inexpressible(config: ml_collections.ConfigDict) -> list[str]:
    m = config.model
    v3 = m.moe_router == "sigmoid" or not m.num_experts
    family = "DeepSeek-V3" if v3 else "DeepSeek-V2"
    wanted = {"position_embedding": "rotary", "norm": "rmsnorm", "norm_position": "pre",
              "use_bias": False, "gated_mlp": True, "activation": "silu", "embed_norm": False,
              "scale_attention": True, "qk_norm": False, "qkv_bias": None,
              "attention_window": None}
    problems = settings_problems(m, wanted, family, whole_heads=False, llama_like=True)
    if not m.kv_lora_rank:
        problems.append("model.kv_lora_rank=0 (DeepSeek's attention is latent attention)")
    if not m.num_experts:
        return problems
    routing = {"moe_every": 1, "moe_shared_gated": False,
               "moe_router_bias": v3}
    if not v3:
        routing["moe_normalize_top_k"] = False
    problems += [f"model.{key}={m[key]!r} ({family} has {value!r})"
                 for key, value in routing.items() if m[key] != value]
    if m.moe_shared_mlp_dim % (m.moe_mlp_dim or m.mlp_dim):
        problems.append(f"model.moe_shared_mlp_dim={m.moe_shared_mlp_dim} (DeepSeek's shared "
                        "experts are whole experts' widths: a multiple of the experts')")
    return problems


def export_tensors(config: ml_collections.ConfigDict, flat: dict[str, np.ndarray]
                   ) -> tuple[dict, dict[str, np.ndarray]]:
    from llmjax.models.config import ModelConfig
    from llmjax.models.moe import is_moe_layer

    m = config.model
    cfg = ModelConfig.from_config(m)
    kind = "deepseek_v3" if m.moe_router == "sigmoid" or not m.num_experts else "deepseek_v2"
    expert_dim = m.moe_mlp_dim or m.mlp_dim
    t = llama.export_ends(flat)
    for i in range(m.num_layers):
        p, q = f"model.layers.{i}.", f"layers/{i}/"
        t.update(_export_attention(flat, m, i))
        t[p + "input_layernorm.weight"] = flat[q + "attention_norm/scale"]
        t[p + "post_attention_layernorm.weight"] = flat[q + "mlp_norm/scale"]
        if not is_moe_layer(cfg, i):
            t.update(llama.export_gated_mlp(flat, q + "mlp/", p + "mlp."))
            continue
        block = p + "mlp."
        t.update(mixtral.export_mixture(flat, m, q + "mlp/", block, _EXPERT_NAMES))
        if m.moe_router_bias:
            t[block + "gate.e_score_correction_bias"] = flat[q + "mlp/router_bias"]
        if m.moe_shared_mlp_dim:
            t.update(llama.export_gated_mlp(flat, q + "mlp/shared/", block + "shared_experts."))
    rope = llama.rope_parameters(m)
    if m.rope_scaling == "yarn" and m.rope_mscale_all_dim:
        rope["mscale_all_dim"] = m.rope_mscale_all_dim
    architecture = {"deepseek_v3": "DeepseekV3ForCausalLM",
                    "deepseek_v2": "DeepseekV2ForCausalLM"}[kind]
    hf = {"model_type": kind, "architectures": [architecture], "vocab_size": m.vocab_size,
          "hidden_size": m.emb_dim, "intermediate_size": m.mlp_dim,
          "num_hidden_layers": m.num_layers, "num_attention_heads": m.num_heads,
          "num_key_value_heads": m.num_heads, "max_position_embeddings": m.max_len,
          "rms_norm_eps": m.norm_epsilon, "rope_theta": m.rotary_base,
          "rope_scaling": None if m.rope_scaling == "none" else rope, "rope_parameters": rope,
          "hidden_act": "silu", "attention_bias": False, "attention_dropout": 0.0,
          "tie_word_embeddings": bool(m.tie_embeddings),
          "kv_lora_rank": m.kv_lora_rank, "q_lora_rank": m.q_lora_rank or None,
          "qk_nope_head_dim": m.head_dim, "qk_rope_head_dim": m.qk_rope_head_dim,
          "v_head_dim": m.v_head_dim or m.head_dim,
          "first_k_dense_replace": m.moe_first_dense if m.num_experts else m.num_layers,
          "n_routed_experts": m.num_experts or 1, "num_experts_per_tok": m.num_experts_per_token,
          "moe_intermediate_size": expert_dim,
          "n_shared_experts": m.moe_shared_mlp_dim // expert_dim if m.num_experts else 0,
          "routed_scaling_factor": m.moe_routed_scale, "moe_layer_freq": 1,
          "n_group": m.moe_groups or 1, "topk_group": m.moe_group_top_k or 1,
          "norm_topk_prob": bool(m.moe_normalize_top_k)}
    if kind == "deepseek_v3":
        hf.update(rope_interleave=True, num_nextn_predict_layers=0)
    else:
        hf["topk_method"] = "group_limited_greedy" if m.moe_groups > 1 else "greedy"
    return hf, t
