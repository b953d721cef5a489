"""Gemma (GemmaForCausalLM), Gemma 2 and Gemma 3 text models (Gemma3ForCausalLM,
`gemma3_text`) <-> llmjax Decoder.

Gemma is LLaMA's layout with a GeGLU feed-forward (down(gelu_tanh(gate(x)) * up(x))), token
embeddings times sqrt(hidden_size) (model.scale_embeddings), tied embeddings, and RMSNorms
that scale by (1 + weight): llmjax's norm scale is that 1 + weight, so a checkpoint's weights
gain 1 on import and lose it on export. Gemma 2 adds a norm on each sublayer's output
(model.post_norms: post_attention_layernorm / post_feedforward_layernorm; its MLP's input norm
is pre_feedforward_layernorm), queries scaled by query_pre_attn_scalar^-0.5
(model.query_scale_dim), tanh soft-capping of attention and output logits
(model.attention_softcap / logit_softcap), and sliding-window layers with a global layer every
second one (model.attention_window + global_attention_every, from `layer_types`). Gemma 3
drops the soft-capping, adds QK-norm and gives its windowed layers a rotary base of their own
(model.local_rotary_base), a global layer every sixth.

A multimodal Gemma 3 folder (`gemma3`: Gemma3ForConditionalGeneration, the 4B, 12B and 27B
models) is read as its language model alone (`text_model`): its text_config, and the
language model's tensors under the text model's names; the vision tower and the projector are
left out, so such a run reads and writes text only and exports as Gemma3ForCausalLM.
"""

from __future__ import annotations

import ml_collections
import numpy as np

from llmjax.convert.common import TensorReader, settings_problems
from llmjax.convert.llama import configure_sizes, export_projections, import_projections

MODEL_TYPE = "gemma"
MODEL_TYPES = ("gemma", "gemma2", "gemma3_text")
MULTIMODAL_TYPE = "gemma3"
HEADS = ()
IGNORED = (r"lm_head\.weight",)  # tied to the embedding
_ARCHITECTURES = {"gemma": "GemmaForCausalLM", "gemma2": "Gemma2ForCausalLM",
                  "gemma3_text": "Gemma3ForCausalLM"}
# HF's legacy "gelu" in a Gemma config means the tanh approximation (transformers says so)
_ACTIVATIONS = {"gelu_pytorch_tanh": "gelu", "gelu": "gelu", "gelu_new": "gelu"}
# llmjax's norm scale = 1 + Gemma's weight
_NORM_OFFSET = 1.0


# transformers' Gemma3TextConfig defaults: a multimodal folder's text_config leaves out the keys
# that equal them (Gemma 3 4B's lists sizes, layers, window and rope scaling only)
_GEMMA3_TEXT_DEFAULTS = {
    "vocab_size": 262_208, "hidden_size": 2304, "intermediate_size": 9216,
    "num_hidden_layers": 26, "num_attention_heads": 8, "num_key_value_heads": 4, "head_dim": 256,
    "hidden_activation": "gelu_pytorch_tanh", "max_position_embeddings": 131_072,
    "rms_norm_eps": 1e-6, "query_pre_attn_scalar": 256, "sliding_window": 4096,
    "tie_word_embeddings": True, "attention_bias": False,
    "rope_theta": 1_000_000.0, "rope_local_base_freq": 10_000.0}  # without rope_parameters
# a multimodal folder's language-model tensors: transformers' saved names, then its >= 4.52
# module names
_LANGUAGE_MODEL_PREFIXES = {"language_model.model.": "model.",
                            "language_model.lm_head.": "lm_head.",
                            "model.language_model.": "model."}


def text_model(hf: dict, tensors: dict[str, np.ndarray]) -> tuple[dict, dict[str, np.ndarray]]:
    """(config, tensors) of a multimodal Gemma 3 folder's language model, as a gemma3_text
    folder holds them: its text_config with Gemma3TextConfig's defaults under it."""
    from llmjax.convert.hf import ConversionError

    config = {**_GEMMA3_TEXT_DEFAULTS, **hf.get("text_config", {}), "model_type": "gemma3_text"}
    if "rope_parameters" in config:  # transformers >= 5 writes both layer types' settings
        config.pop("rope_theta")
        config.pop("rope_local_base_freq")
    text = {}
    for name, tensor in tensors.items():
        for prefix, replacement in _LANGUAGE_MODEL_PREFIXES.items():
            if name.startswith(prefix):
                text[replacement + name.removeprefix(prefix)] = tensor
                break
    if not text:
        raise ConversionError("a multimodal Gemma 3 folder (model_type gemma3) without "
                              "language_model tensors: llmjax reads its language model only")
    return config, text


def _model_type(hf: dict) -> str:
    return hf.get("model_type", "gemma")


def _window_pattern(hf: dict, num_layers: int) -> int | None:
    """k of model.global_attention_every from `layer_types` (full_attention every k-th
    layer); None when every layer is windowed."""
    types = hf.get("layer_types")
    if types is None:
        k = {"gemma2": 2, "gemma3_text": hf.get("sliding_window_pattern", 6)}[_model_type(hf)]
        types = ["full_attention" if (i + 1) % k == 0 else "sliding_attention"
                 for i in range(num_layers)]
    full = [i for i, t in enumerate(types) if t == "full_attention"]
    if not full:
        return None
    k = full[0] + 1
    if full != list(range(k - 1, num_layers, k)):
        from llmjax.convert.hf import ConversionError

        raise ConversionError(f"layer_types {types} has no llmjax match: llmjax makes every "
                              "k-th layer global (model.global_attention_every)")
    return k


def _rope(hf: dict, layer_type: str) -> dict:
    """The rotary settings of a layer type: transformers >= 5's `rope_parameters` (per layer
    type for Gemma 3), or an older config.json's top-level rope_theta, rope_scaling (global
    layers) and rope_local_base_freq (Gemma 3's sliding layers)."""
    params = hf.get("rope_parameters")
    if params:
        if layer_type in params:
            params = params[layer_type]
        return {**params, "rope_theta": float(params.get("rope_theta",
                                                          hf.get("rope_theta", 10000.0)))}
    if layer_type == "sliding_attention" and "rope_local_base_freq" in hf:
        return {"rope_type": "default", "rope_theta": float(hf["rope_local_base_freq"])}
    scaling = hf.get("rope_scaling") or {}
    return {**scaling, "rope_type": scaling.get("rope_type", scaling.get("type", "default")),
            "rope_theta": float(hf.get("rope_theta", 10000.0))}


def configure(config: ml_collections.ConfigDict, hf: dict, tensors: dict, objective: str | None
              ) -> None:
    from llmjax.convert.hf import ConversionError

    m, kind = config.model, _model_type(hf)
    m.arch, config.objective = "decoder", objective or "causal_lm"
    activation = hf.get("hidden_activation") or hf.get("hidden_act") or "gelu_pytorch_tanh"
    if activation not in _ACTIVATIONS:
        raise ConversionError(f"hidden_activation {activation!r} has no llmjax match")
    if hf.get("attention_bias") or hf.get("use_bidirectional_attention"):
        raise ConversionError("attention_bias / use_bidirectional_attention (EmbeddingGemma) "
                              "have no llmjax decoder match")
    configure_sizes(m, hf, default_max_len=8192)
    m.norm, m.norm_position, m.norm_epsilon = "rmsnorm", "pre", hf.get("rms_norm_eps", 1e-6)
    m.activation, m.gated_mlp, m.use_bias = _ACTIVATIONS[activation], True, False
    m.tie_embeddings, m.scale_embeddings = True, True
    m.position_embedding = "rotary"
    full = _rope(hf, "full_attention")
    rope_type = full.get("rope_type", "default")
    if rope_type not in ("default", "linear"):
        raise ConversionError(f"rope_type {rope_type!r} has no llmjax match for Gemma (llmjax "
                              "reads plain and linear rotary positions)")
    m.rotary_base = full["rope_theta"]
    if rope_type == "linear":
        m.rope_scaling, m.rope_scaling_factor = "linear", float(full["factor"])
    m.dropout_rate = m.attention_dropout_rate = 0.0
    if kind != "gemma":
        m.post_norms = True
        m.query_scale_dim = int(hf.get("query_pre_attn_scalar", 256))
        m.attention_softcap = hf.get("attn_logit_softcapping")
        m.logit_softcap = hf.get("final_logit_softcapping")
        if hf.get("sliding_window"):
            m.attention_window = hf["sliding_window"]
            m.global_attention_every = _window_pattern(hf, m.num_layers)
            if m.global_attention_every == 1:  # every layer global: no window at all
                m.attention_window = m.global_attention_every = None
    if kind == "gemma3_text":
        m.qk_norm = True
        local = _rope(hf, "sliding_attention")
        if local.get("rope_type", "default") != "default":
            raise ConversionError("scaled rotary positions on Gemma 3's sliding layers have no "
                                  "llmjax match")
        if m.attention_window is not None:
            m.local_rotary_base = local["rope_theta"]
    config.seq_len = min(config.seq_len, m.max_len)


def _norms(post_norms: bool) -> tuple[tuple[str, str], ...]:
    """(llmjax norm, Gemma norm) of a block."""
    if post_norms:  # Gemma 2 / 3
        return (("attention_norm", "input_layernorm"),
                ("attention_post_norm", "post_attention_layernorm"),
                ("mlp_norm", "pre_feedforward_layernorm"),
                ("mlp_post_norm", "post_feedforward_layernorm"))
    return (("attention_norm", "input_layernorm"), ("mlp_norm", "post_attention_layernorm"))


def import_tensors(hf: dict, tensors: dict[str, np.ndarray], config: ml_collections.ConfigDict
                   ) -> tuple[dict[str, np.ndarray], set[str]]:
    """({llmjax parameter name: array}, the HF names used)."""
    m = config.model
    get = TensorReader(tensors, "model.")

    def norm(name: str) -> np.ndarray:
        return get(name).astype(np.float32) + _NORM_OFFSET

    out = {"embed/embedding": get("embed_tokens.weight"), "final_norm/scale": norm("norm.weight")}
    for i in range(m.num_layers):
        p, q = f"layers.{i}.", f"layers/{i}/"
        out.update(import_projections(get, m, i))
        if m.qk_norm:
            out[q + "attention/query_norm/scale"] = norm(p + "self_attn.q_norm.weight")
            out[q + "attention/key_norm/scale"] = norm(p + "self_attn.k_norm.weight")
        for ours, theirs in _norms(m.post_norms):
            out[q + f"{ours}/scale"] = norm(p + f"{theirs}.weight")
    return out, get.used


def inexpressible(config: ml_collections.ConfigDict) -> list[str]:
    wanted = {"position_embedding": "rotary", "norm": "rmsnorm", "norm_position": "pre",
              "use_bias": False, "gated_mlp": True, "activation": "gelu", "embed_norm": False,
              "scale_attention": True, "tie_embeddings": True, "scale_embeddings": True,
              "qk_norm_scope": "head"}
    problems = settings_problems(config.model, wanted, "Gemma", whole_heads=False,
                                 llama_like=True)
    m = config.model
    if m.qkv_bias:
        problems.append("model.qkv_bias=True (Gemma has no biases)")
    if m.rope_scaling not in ("none", "linear"):
        problems.append(f"model.rope_scaling={m.rope_scaling!r} (Gemma reads none or linear)")
    if not m.post_norms:  # Gemma 1 has none of its successors' settings
        for key in ("attention_window", "attention_softcap", "logit_softcap", "query_scale_dim",
                    "local_rotary_base"):
            if m[key] is not None:
                problems.append(f"model.{key}={m[key]!r} without model.post_norms (Gemma 1 "
                                "has no such setting; Gemma 2 and 3 have post norms)")
        if m.qk_norm:
            problems.append("model.qk_norm=True without model.post_norms (Gemma 3 has both)")
    elif m.qk_norm and (m.attention_softcap or m.logit_softcap):
        problems.append("soft-capping with model.qk_norm (Gemma 2 soft-caps, Gemma 3 has "
                        "QK-norm)")
    elif not m.qk_norm and m.local_rotary_base is not None:
        problems.append("model.local_rotary_base without model.qk_norm (Gemma 3 has both)")
    elif (m.qk_norm and m.attention_window is not None and m.local_rotary_base is None
          and m.rope_scaling != "none"):
        problems.append("rope scaling on windowed layers (Gemma 3 scales the global layers' "
                        "positions only): set model.local_rotary_base")
    return problems


def _layer_types(m: ml_collections.ConfigDict) -> list[str]:
    cfg_windowed = [m.attention_window is not None and not (
        m.global_attention_every and (i + 1) % m.global_attention_every == 0)
        for i in range(m.num_layers)]
    return ["sliding_attention" if w else "full_attention" for w in cfg_windowed]


def export_tensors(config: ml_collections.ConfigDict, flat: dict[str, np.ndarray]
                   ) -> tuple[dict, dict[str, np.ndarray]]:
    m = config.model
    d = m.emb_dim
    head_dim = m.head_dim or d // m.num_heads

    def norm(name: str) -> np.ndarray:
        return np.asarray(flat[name], np.float32) - _NORM_OFFSET

    t = {"model.embed_tokens.weight": flat["embed/embedding"],
         "model.norm.weight": norm("final_norm/scale")}
    for i in range(m.num_layers):
        p, q = f"model.layers.{i}.", f"layers/{i}/"
        t.update(export_projections(flat, m, i))
        if m.qk_norm:
            t[p + "self_attn.q_norm.weight"] = norm(q + "attention/query_norm/scale")
            t[p + "self_attn.k_norm.weight"] = norm(q + "attention/key_norm/scale")
        for ours, theirs in _norms(m.post_norms):
            t[p + f"{theirs}.weight"] = norm(q + f"{ours}/scale")
    kind = "gemma" if not m.post_norms else "gemma3_text" if m.qk_norm else "gemma2"
    rope = {"rope_type": "default", "rope_theta": m.rotary_base}
    if m.rope_scaling == "linear":
        rope.update(rope_type="linear", factor=m.rope_scaling_factor)
    hf = {"model_type": kind, "architectures": [_ARCHITECTURES[kind]],
          "vocab_size": m.vocab_size, "hidden_size": d, "intermediate_size": m.mlp_dim,
          "num_hidden_layers": m.num_layers, "num_attention_heads": m.num_heads,
          "num_key_value_heads": m.num_kv_heads or m.num_heads, "head_dim": head_dim,
          "max_position_embeddings": m.max_len, "rms_norm_eps": m.norm_epsilon,
          "hidden_act": "gelu_pytorch_tanh", "hidden_activation": "gelu_pytorch_tanh",
          "attention_bias": False, "tie_word_embeddings": True, "attention_dropout": 0.0,
          "rope_parameters": rope}
    if kind != "gemma":
        # with no window, every layer is global: a window as long as the context, unused
        hf.update(query_pre_attn_scalar=m.query_scale_dim or head_dim,
                  attn_logit_softcapping=m.attention_softcap,
                  final_logit_softcapping=m.logit_softcap,
                  sliding_window=m.attention_window or m.max_len, layer_types=_layer_types(m))
    if kind == "gemma3_text":
        local = {"rope_type": "default",
                 "rope_theta": m.local_rotary_base if m.local_rotary_base is not None
                 else m.rotary_base}
        hf["rope_parameters"] = {"full_attention": rope, "sliding_attention": local}
    return hf, t
