"""LLaMA (LlamaModel / LlamaForCausalLM), Mistral, Qwen2, Qwen3, Phi-3 and OLMo 2 <-> llmjax
Decoder.

LLaMA is a pre-RMSNorm decoder with rotary positions (rotate-half layout, as llmjax's), a
SwiGLU feed-forward (down(silu(gate(x)) * up(x)): gate is llmjax's `wi`, up its `wg`), no
biases, grouped-query attention (num_key_value_heads) and, mostly, untied embeddings. Mistral
has the same tensors and a sliding attention window (model.attention_window). Qwen2 is
LLaMA with biases on the query, key and value projections (model.qkv_bias); Qwen3 is LLaMA
with an RMSNorm over head_dim on queries and keys (model.qk_norm). Phi-3 is LLaMA with the
query, key and value projections fused into one qkv_proj, gate and up into one gate_up_proj
(split on import: a Phi-3 run exports as LLaMA or Mistral, the same function), Mistral's
sliding window, and a share of each head rotating (model.rotary_fraction). OLMo 2 is LLaMA
with its norms on each sublayer's output instead of its input (model.norm_position=output:
post_attention_layernorm, post_feedforward_layernorm) and one RMSNorm over all heads' queries,
another over all keys (model.qk_norm_scope=all). PyTorch Linear
weights are [out, in], transposed into llmjax's [in, out] kernels.
"""

from __future__ import annotations

import math

import ml_collections
import numpy as np

from llmjax.convert.common import HF_ACTIVATIONS, TensorReader, settings_problems

MODEL_TYPE = "llama"
MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3", "phi3", "olmo2")
_LONGROPE = ("longrope", "su", "yarn")  # what Phi-3 configs call its LongRoPE scaling
HEADS = ("lm_head",)  # a bare body (no head tensor): the head starts fresh
IGNORED = (r"lm_head\.weight", r"(model\.)?layers\.\d+\.self_attn\.rotary_emb\.inv_freq")


def rope_settings(hf: dict) -> tuple[float, dict | None]:
    """(rotary base, scaling) from transformers >= 5's `rope_parameters` or the older
    top-level `rope_theta` / `rope_scaling`."""
    params = hf.get("rope_parameters") or {}
    theta = params.get("rope_theta", hf.get("rope_theta", 10000.0))
    scaling = hf.get("rope_scaling")
    if params.get("rope_type", "default") != "default":
        scaling = params
    return float(theta), scaling


def _yarn_attention_factor(scaling: dict) -> float | None:
    """A yarn config's attention factor: given, or DeepSeek's mscale / mscale_all_dim ratio;
    None leaves llmjax's default, 0.1 ln(factor) + 1 (Hugging Face's too)."""
    if scaling.get("attention_factor") is not None:
        return float(scaling["attention_factor"])
    mscale, mscale_all_dim = scaling.get("mscale"), scaling.get("mscale_all_dim")
    if not (mscale and mscale_all_dim):
        return None
    factor = float(scaling["factor"])

    def get(scale: float) -> float:
        return 0.1 * scale * math.log(factor) + 1.0 if factor > 1 else 1.0

    return get(mscale) / get(mscale_all_dim)


def configure_rope(m: ml_collections.ConfigDict, hf: dict, theta: float | None = None) -> None:
    """model.position_embedding=rotary with the config.json's base (`theta` when the family
    names it otherwise) and rope scaling (LLaMA's keys; GPT-NeoX's too)."""
    from llmjax.convert.hf import ConversionError

    read_theta, scaling = rope_settings(hf)
    kind = (scaling or {}).get("rope_type", (scaling or {}).get("type")) or "default"
    if kind not in ("default", "linear", "llama3", "yarn"):
        raise ConversionError(f"rope scaling {scaling} has no llmjax match yet (llmjax reads "
                              "plain, linear, llama3 and yarn rotary positions)")
    if kind == "yarn" and scaling.get("truncate") is False:
        raise ConversionError("yarn rope scaling with truncate=false has no llmjax match "
                              "(llmjax rounds the ramp's bounds outwards, as the default)")
    m.position_embedding = "rotary"
    m.rotary_base = read_theta if theta is None else theta
    if kind != "default":
        m.rope_scaling, m.rope_scaling_factor = kind, float(scaling["factor"])
    if kind in ("llama3", "yarn"):
        m.rope_original_max_len = scaling["original_max_position_embeddings"]
    if kind == "llama3":
        m.rope_low_freq_factor = float(scaling["low_freq_factor"])
        m.rope_high_freq_factor = float(scaling["high_freq_factor"])
    if kind == "yarn":
        m.rope_beta_fast = float(scaling.get("beta_fast") or 32.0)
        m.rope_beta_slow = float(scaling.get("beta_slow") or 1.0)
        m.rope_attention_factor = _yarn_attention_factor(scaling)


def rotary_fraction(hf: dict, default: float, key: str = "partial_rotary_factor") -> float:
    """The share of each head that rotates: transformers >= 5's rope_parameters'
    partial_rotary_factor, else the config's older `key` (GPT-NeoX's rotary_pct), else
    `default` (the family's, as transformers fills it in)."""
    params = hf.get("rope_parameters") or {}
    return float(params.get("partial_rotary_factor", hf.get(key, default)))


def rope_parameters(m: ml_collections.ConfigDict) -> dict:
    """configure_rope's inverse: transformers' `rope_parameters` of the model's rotary
    positions."""
    rope = {"rope_type": "default" if m.rope_scaling == "none" else m.rope_scaling,
            "rope_theta": m.rotary_base}
    if m.rope_scaling != "none":
        rope["factor"] = m.rope_scaling_factor
    if m.rope_scaling == "llama3":
        rope.update(original_max_position_embeddings=m.rope_original_max_len,
                    low_freq_factor=m.rope_low_freq_factor,
                    high_freq_factor=m.rope_high_freq_factor)
    if m.rope_scaling == "yarn":
        rope.update(original_max_position_embeddings=m.rope_original_max_len,
                    beta_fast=m.rope_beta_fast, beta_slow=m.rope_beta_slow,
                    attention_factor=m.rope_attention_factor)  # None: the same default
    return rope


def configure_sizes(m: ml_collections.ConfigDict, hf: dict, default_max_len: int) -> None:
    """model.* sizes from a LLaMA-layout config.json (Gemma's too)."""
    m.emb_dim, m.num_layers = hf["hidden_size"], hf["num_hidden_layers"]
    m.num_heads = hf["num_attention_heads"]
    kv_heads = hf.get("num_key_value_heads") or m.num_heads
    m.num_kv_heads = None if kv_heads == m.num_heads else kv_heads
    m.head_dim = hf.get("head_dim") or m.emb_dim // m.num_heads
    m.mlp_dim, m.vocab_size = hf["intermediate_size"], hf["vocab_size"]
    m.max_len = hf.get("max_position_embeddings", default_max_len)


def configure(config: ml_collections.ConfigDict, hf: dict, tensors: dict, objective: str | None
              ) -> None:
    from llmjax.convert.hf import ConversionError

    m = config.model
    m.arch, config.objective = "decoder", objective or "causal_lm"
    phi3 = hf.get("model_type") == "phi3"
    scaling = rope_settings(hf)[1] or {}
    if phi3 and scaling.get("rope_type", scaling.get("type")) in _LONGROPE:
        raise ConversionError("Phi-3's longrope rope scaling (its 128k-context models, Phi-3.5 "
                              "and Phi-4-mini) has no llmjax match yet; the 4k-context Phi-3 "
                              "models import")
    for key in ("attention_bias", "mlp_bias"):
        if hf.get(key):
            raise ConversionError(f"{key}=true has no llmjax match (llmjax's LLaMA has no "
                                  "biases)")
    activation = hf.get("hidden_act", "silu")
    if activation not in HF_ACTIVATIONS:
        raise ConversionError(f"hidden_act {activation!r} has no llmjax match")
    configure_sizes(m, hf, default_max_len=2048)
    if hf.get("model_type") in ("mistral", "phi3"):
        m.attention_window = hf.get("sliding_window")  # None: full attention
    elif hf.get("use_sliding_window"):  # Qwen: a window on the layers past max_window_layers
        raise ConversionError("use_sliding_window=true (Qwen's per-layer window) has no "
                              "llmjax match yet")
    m.norm, m.norm_position, m.norm_epsilon = "rmsnorm", "pre", hf.get("rms_norm_eps", 1e-6)
    configure_rope(m, hf)
    if phi3:
        m.rotary_fraction = rotary_fraction(hf, default=1.0)
    m.activation, m.gated_mlp, m.use_bias = HF_ACTIVATIONS[activation], True, False
    m.qkv_bias = True if hf.get("model_type") == "qwen2" else None
    m.qk_norm = hf.get("model_type") in ("qwen3", "olmo2")
    if hf.get("model_type") == "olmo2":
        m.norm_position, m.qk_norm_scope = "output", "all"
    m.tie_embeddings = bool(hf.get("tie_word_embeddings", False))
    m.dropout_rate = m.attention_dropout_rate = 0.0
    config.seq_len = min(config.seq_len, m.max_len)


# llmjax's gated MLP kernel -> LLaMA's Linear: down(silu(gate(x)) * up(x))
GATED_MLP_NAMES = (("wi", "gate_proj"), ("wg", "up_proj"), ("wo", "down_proj"))


def import_gated_mlp(get: TensorReader, theirs: str, ours: str) -> dict[str, np.ndarray]:
    """A gated MLP's kernels under llmjax prefix `ours` ('layers/0/mlp/') from the Linears
    under Hugging Face prefix `theirs` ('layers.0.mlp.')."""
    return {f"{ours}{a}/kernel": get(f"{theirs}{b}.weight").T for a, b in GATED_MLP_NAMES}


def export_gated_mlp(flat: dict[str, np.ndarray], ours: str, theirs: str
                     ) -> dict[str, np.ndarray]:
    """import_gated_mlp's inverse."""
    return {f"{theirs}{b}.weight": flat[f"{ours}{a}/kernel"].T for a, b in GATED_MLP_NAMES}


def import_attention(get: TensorReader, m: ml_collections.ConfigDict, i: int
                     ) -> dict[str, np.ndarray]:
    """Layer i's attention projections (+ query/key/value biases), as LLaMA names them."""
    p, q = f"layers.{i}.", f"layers/{i}/"
    d, k = m.emb_dim, m.head_dim
    out = {}
    for ours, theirs in (("query", "q_proj"), ("key", "k_proj"), ("value", "v_proj")):
        out[q + f"attention/{ours}/kernel"] = get(p + f"self_attn.{theirs}.weight").T.reshape(
            d, -1, k)  # [D, heads, K]
        if m.qkv_bias:
            out[q + f"attention/{ours}/bias"] = get(p + f"self_attn.{theirs}.bias").reshape(-1, k)
    out[q + "attention/out/kernel"] = get(p + "self_attn.o_proj.weight").T.reshape(-1, k, d)
    return out


def import_projections(get: TensorReader, m: ml_collections.ConfigDict, i: int
                       ) -> dict[str, np.ndarray]:
    """Layer i's attention projections (+ query/key/value biases) and gated MLP, as LLaMA
    names them (Gemma's too)."""
    p, q = f"layers.{i}.", f"layers/{i}/"
    return {**import_attention(get, m, i), **import_gated_mlp(get, p + "mlp.", q + "mlp/")}


def export_attention(flat: dict[str, np.ndarray], m: ml_collections.ConfigDict, i: int
                     ) -> dict[str, np.ndarray]:
    """import_attention's inverse: layer i's tensors under their Hugging Face names."""
    p, q = f"model.layers.{i}.", f"layers/{i}/"
    d = m.emb_dim
    t = {}
    for ours, theirs in (("query", "q_proj"), ("key", "k_proj"), ("value", "v_proj")):
        t[p + f"self_attn.{theirs}.weight"] = flat[q + f"attention/{ours}/kernel"].reshape(d, -1).T
        if m.qkv_bias:
            t[p + f"self_attn.{theirs}.bias"] = flat[q + f"attention/{ours}/bias"].reshape(-1)
    t[p + "self_attn.o_proj.weight"] = flat[q + "attention/out/kernel"].reshape(-1, d).T
    return t


def export_projections(flat: dict[str, np.ndarray], m: ml_collections.ConfigDict, i: int
                       ) -> dict[str, np.ndarray]:
    """import_projections' inverse: layer i's tensors under their Hugging Face names."""
    p, q = f"model.layers.{i}.", f"layers/{i}/"
    return {**export_attention(flat, m, i), **export_gated_mlp(flat, q + "mlp/", p + "mlp.")}


def import_ends(get: TensorReader, m: ml_collections.ConfigDict) -> dict[str, np.ndarray]:
    """The token table, the final norm and an untied lm_head (LlamaModel has none)."""
    out = {"embed/embedding": get("embed_tokens.weight"), "final_norm/scale": get("norm.weight")}
    if not m.tie_embeddings and "lm_head.weight" in get:
        out["lm_head/kernel"] = get("lm_head.weight").T
    return out


def export_ends(flat: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """import_ends' inverse (no lm_head where the run has none: tied, or a classifier)."""
    t = {"model.embed_tokens.weight": flat["embed/embedding"],
         "model.norm.weight": flat["final_norm/scale"]}
    if "lm_head/kernel" in flat:
        t["lm_head.weight"] = flat["lm_head/kernel"].T
    return t


def import_qk_norms(get: TensorReader, m: ml_collections.ConfigDict, i: int
                    ) -> dict[str, np.ndarray]:
    """Layer i's query and key norms (Qwen3, OLMo 2), if the model has them."""
    if not m.qk_norm:
        return {}
    p, q = f"layers.{i}.self_attn.", f"layers/{i}/attention/"
    return {q + "query_norm/scale": get(p + "q_norm.weight"),
            q + "key_norm/scale": get(p + "k_norm.weight")}


def export_qk_norms(flat: dict[str, np.ndarray], m: ml_collections.ConfigDict, i: int
                    ) -> dict[str, np.ndarray]:
    """import_qk_norms' inverse."""
    if not m.qk_norm:
        return {}
    p, q = f"model.layers.{i}.self_attn.", f"layers/{i}/attention/"
    return {p + "q_norm.weight": flat[q + "query_norm/scale"],
            p + "k_norm.weight": flat[q + "key_norm/scale"]}


def import_tensors(hf: dict, tensors: dict[str, np.ndarray], config: ml_collections.ConfigDict
                   ) -> tuple[dict[str, np.ndarray], set[str]]:
    """({llmjax parameter name: array}, the HF names used)."""
    m = config.model
    tensors, fused = _unfused(tensors, m)
    get = TensorReader(tensors, "model.")
    out = import_ends(get, m)
    for i in range(m.num_layers):
        p, q = f"layers.{i}.", f"layers/{i}/"
        out.update(import_projections(get, m, i))
        out.update(import_qk_norms(get, m, i))
        for ours, theirs in _norm_names(m).items():
            out[q + f"{ours}/scale"] = get(p + f"{theirs}.weight")
    return out, {fused.get(name, name) for name in get.used}


def _norm_names(m: ml_collections.ConfigDict) -> dict[str, str]:
    """A block's two norms, llmjax's name -> LLaMA's (on the sublayers' inputs) or OLMo 2's
    (on their outputs)."""
    if m.norm_position == "output":
        return {"attention_norm": "post_attention_layernorm",
                "mlp_norm": "post_feedforward_layernorm"}
    return {"attention_norm": "input_layernorm", "mlp_norm": "post_attention_layernorm"}


def _unfused(tensors: dict[str, np.ndarray], m: ml_collections.ConfigDict
             ) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """(tensors with Phi-3's fused qkv_proj and gate_up_proj split into LLaMA's q/k/v_proj and
    gate/up_proj, {split name: the fused tensor it came from})."""
    k, h, n = m.head_dim, m.num_heads, m.num_kv_heads or m.num_heads
    splits = {"self_attn.qkv_proj.weight": (("q_proj", h * k), ("k_proj", n * k),
                                             ("v_proj", n * k)),
              "mlp.gate_up_proj.weight": (("gate_proj", m.mlp_dim), ("up_proj", m.mlp_dim))}
    out, origin = dict(tensors), {}
    for name, tensor in tensors.items():
        suffix = next((s for s in splits if name.endswith(s)), None)
        if suffix is None:
            continue
        del out[name]
        start, module = 0, name[: -len(suffix)] + suffix.split(".")[0] + "."
        for part, rows in splits[suffix]:
            out[module + part + ".weight"] = tensor[start: start + rows]
            origin[module + part + ".weight"] = name
            start += rows
    return out, origin


def inexpressible(config: ml_collections.ConfigDict) -> list[str]:
    m = config.model
    olmo2 = m.norm_position == "output"
    wanted = {"position_embedding": "rotary", "norm": "rmsnorm", "norm_position": "pre",
              "use_bias": False, "gated_mlp": True, "activation": "silu", "embed_norm": False,
              "scale_attention": True, "qk_norm_scope": "head"}
    if olmo2:
        wanted.update(norm_position="output", qk_norm=True, qk_norm_scope="all",
                      qkv_bias=None, attention_window=None)
    problems = settings_problems(config.model, wanted, "OLMo 2" if olmo2 else "LLaMA",
                                 whole_heads=False, llama_like=True)
    if (m.qkv_bias or m.qk_norm) and m.attention_window:
        problems.append("model.attention_window with model.qkv_bias or qk_norm (Qwen's window "
                        "is per layer; Mistral has neither)")
    if m.qkv_bias and m.qk_norm:
        problems.append("model.qkv_bias with model.qk_norm (Qwen2 has biases, Qwen3 QK-norm)")
    return problems


def export_tensors(config: ml_collections.ConfigDict, flat: dict[str, np.ndarray]
                   ) -> tuple[dict, dict[str, np.ndarray]]:
    m = config.model
    d = m.emb_dim
    head_dim = m.head_dim or d // m.num_heads
    t = export_ends(flat)
    for i in range(m.num_layers):
        p, q = f"model.layers.{i}.", f"layers/{i}/"
        t.update(export_projections(flat, m, i))
        t.update(export_qk_norms(flat, m, i))
        for ours, theirs in _norm_names(m).items():
            t[p + f"{theirs}.weight"] = flat[q + f"{ours}/scale"]
    rope = rope_parameters(m)
    model_type, architecture = (
        ("olmo2", "Olmo2ForCausalLM") if m.norm_position == "output"
        else ("qwen2", "Qwen2ForCausalLM") if m.qkv_bias
        else ("qwen3", "Qwen3ForCausalLM") if m.qk_norm
        else ("mistral", "MistralForCausalLM") if m.attention_window
        else (MODEL_TYPE, "LlamaForCausalLM"))
    hf = {"model_type": model_type, "architectures": [architecture],
          "vocab_size": m.vocab_size, "hidden_size": d, "intermediate_size": m.mlp_dim,
          "num_hidden_layers": m.num_layers, "num_attention_heads": m.num_heads,
          "num_key_value_heads": m.num_kv_heads or m.num_heads, "head_dim": head_dim,
          "max_position_embeddings": m.max_len, "rms_norm_eps": m.norm_epsilon,
          "rope_theta": m.rotary_base, "rope_scaling": None if m.rope_scaling == "none" else rope,
          "rope_parameters": rope, "hidden_act": "silu", "attention_bias": False,
          "mlp_bias": False, "tie_word_embeddings": bool(m.tie_embeddings),
          "attention_dropout": 0.0, "sliding_window": m.attention_window}
    return hf, t
