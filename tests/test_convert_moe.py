"""Mixtral, Qwen2-MoE, Qwen3-MoE and OLMoE folders (convert/mixtral.py) against transformers:
logits, hidden states and greedy tokens, export round trips, transformers' fused expert layout,
and the settings with no match."""

import numpy as np
import pytest
import torch
import transformers
from test_convert_hf import (
    assert_same_causal_lm,
    export_round_trip,
    imported_llama_family,
)

from llmjax.configs import ConfigError
from llmjax.convert import hf as convert
from llmjax.convert.hf import ConversionError

COMMON = dict(vocab_size=300, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
              num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
              num_experts_per_tok=2, bos_token_id=1, eos_token_id=2, pad_token_id=0)
FAMILIES = {
    "mixtral": lambda: (transformers.MixtralForCausalLM,
                        transformers.MixtralConfig(num_local_experts=4, **COMMON)),
    # a shared expert beside the routed ones, query/key/value biases
    "qwen2_moe": lambda: (transformers.Qwen2MoeForCausalLM, transformers.Qwen2MoeConfig(
        num_experts=4, moe_intermediate_size=24, shared_expert_intermediate_size=40,
        **COMMON)),
    # experts on every other layer (decoder_sparse_step), the dense layers twice as wide as
    # one (model.moe_mlp_dim)
    "qwen3_moe": lambda: (transformers.Qwen3MoeForCausalLM, transformers.Qwen3MoeConfig(
        num_experts=4, decoder_sparse_step=2, norm_topk_prob=True, moe_intermediate_size=24,
        **COMMON)),
    "olmoe": lambda: (transformers.OlmoeForCausalLM,
                      transformers.OlmoeConfig(num_experts=4, **COMMON)),
}


def redraw_norms(name, tensor):
    if "norm" in name:  # norm scales start at one: make a mapping error show
        tensor.uniform_(0.5, 1.5)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_mixtures_import_and_export_as_transformers_runs_them(family, tmp_path):
    model_class, hf_config = FAMILIES[family]()
    folder, hf_model, run = imported_llama_family(tmp_path, model_class, hf_config,
                                                  redraw_norms)
    m = run.config.model
    assert (m.num_experts, m.num_experts_per_token) == (4, 2)
    assert (m.moe_every, m.moe_normalize_top_k, m.qk_norm_scope if m.qk_norm else None,
            m.moe_shared_mlp_dim) == {
        "mixtral": (1, True, None, 0), "qwen2_moe": (1, False, None, 40),
        "qwen3_moe": (2, True, "head", 0), "olmoe": (1, False, "all", 0)}[family]
    assert_same_causal_lm(run.model, hf_model)  # logits, hidden states, greedy decoding
    reloaded = export_round_trip(folder, hf_model, tmp_path)
    assert reloaded.config.model_type == family


def test_transformers_fused_expert_tensors_import_as_the_per_expert_ones(tmp_path):
    """transformers >= 5 holds a layer's experts as gate_up_proj [E, 2F, D] and down_proj
    [E, D, F] (and writes them apart); a folder written in that layout imports the same."""
    from safetensors.numpy import load_file, save_file

    model_class, hf_config = FAMILIES["olmoe"]()
    folder, _, _ = imported_llama_family(tmp_path, model_class, hf_config, redraw_norms)
    tensors = load_file(folder / "model.safetensors")
    fused_folder = tmp_path / "fused"
    fused_folder.mkdir()
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        (fused_folder / name).write_bytes((folder / name).read_bytes())
    fused = {k: v for k, v in tensors.items() if ".experts." not in k}
    for i in range(2):
        p = f"model.layers.{i}.mlp.experts."
        gate = np.stack([tensors[f"{p}{j}.gate_proj.weight"] for j in range(4)])
        up = np.stack([tensors[f"{p}{j}.up_proj.weight"] for j in range(4)])
        fused[p + "gate_up_proj"] = np.concatenate([gate, up], axis=1)
        fused[p + "down_proj"] = np.stack([tensors[f"{p}{j}.down_proj.weight"]
                                           for j in range(4)])
    save_file(fused, fused_folder / "model.safetensors", metadata={"format": "pt"})
    from test_convert_hf import assert_same_import

    assert_same_import(folder, fused_folder)


@pytest.mark.parametrize("change, message", [
    (dict(clip_qkv=8.0), "clip_qkv"),
    (dict(shared_expert_intermediate_size=16), "shared experts"),
])
def test_olmoe_and_qwen_settings_without_a_match_are_refused(change, message, tmp_path):
    model_class, hf_config = FAMILIES["olmoe"]()
    folder, _, _ = imported_llama_family(tmp_path, model_class, hf_config)
    import json

    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, **change}))
    with pytest.raises(ConversionError, match=message):
        convert.import_folder(folder)


def test_qwen_dense_layers_other_than_the_first_or_every_kth_are_refused(tmp_path):
    model_class, hf_config = FAMILIES["qwen3_moe"]()
    # layer 0 a mixture, layer 1 dense: no model.moe_every lays them out so
    hf_config.mlp_only_layers, hf_config.decoder_sparse_step = [1], 1
    folder = tmp_path / "source"
    torch.manual_seed(0)
    model_class(hf_config).save_pretrained(folder)
    with pytest.raises(ConversionError, match="mlp_only_layers=\\[1\\] has no llmjax match"):
        convert.import_folder(folder)


def test_a_mixture_without_renormalised_weights_or_qk_norm_has_no_export():
    from conftest import tiny_config
    from flax import nnx

    from llmjax.train.state import build_model

    c = tiny_config(**{"model.num_experts": 4, "model.moe_normalize_top_k": False,
                       "model.norm": "rmsnorm", "model.position_embedding": "rotary",
                       "model.use_bias": False, "model.gated_mlp": True,
                       "model.activation": "silu", "model.vocab_size": 20})
    with pytest.raises(ConfigError, match="moe_normalize_top_k=False without QK-norm"):
        convert.export_params(c, nnx.state(build_model(c), nnx.Param))


def test_fine_tuning_from_a_folder_keeps_the_runs_own_training_settings(tmp_path):
    """init.hf_path supplies the architecture; the run's memory levers and mixture training
    settings stay the run's."""
    from conftest import tiny_config

    from llmjax.convert.hf import apply_hf_model_config

    model_class, hf_config = FAMILIES["mixtral"]()
    folder, _, _ = imported_llama_family(tmp_path, model_class, hf_config)
    c = tiny_config(**{"init.hf_path": str(folder), "model.remat": "full",
                       "model.moe_capacity_factor": 2.0, "model.moe_z_loss_weight": 0.0})
    apply_hf_model_config(c)
    assert (c.model.num_experts, c.model.emb_dim, c.model.remat) == (4, 32, "full")
    assert (c.model.moe_capacity_factor, c.model.moe_z_loss_weight) == (2.0, 0.0)


def test_qwen_dense_first_layers_import_as_moe_first_dense(tmp_path):
    model_class, hf_config = FAMILIES["qwen3_moe"]()
    hf_config.mlp_only_layers, hf_config.decoder_sparse_step = [0], 1
    folder, hf_model, run = imported_llama_family(tmp_path, model_class, hf_config,
                                                  redraw_norms)
    m = run.config.model
    assert (m.moe_first_dense, m.moe_every, m.mlp_dim, m.moe_mlp_dim) == (1, 1, 48, 24)
    assert_same_causal_lm(run.model, hf_model)
    export_round_trip(folder, hf_model, tmp_path)
