"""DeepSeek-V2 and -V3 folders <-> llmjax runs (convert/deepseek.py): latent attention with
interleaved rotary columns, YaRN's logit scale, dense first layers, group-limited routing
(softmax or biased sigmoid), ungated shared experts; logits, hidden states and greedy tokens
equal transformers', and exports reload in transformers and re-import bit for bit."""

import json

import numpy as np
import pytest
import torch
import transformers
from test_convert_hf import assert_same_causal_lm, export_round_trip, llama_tokenizer_folder

import llmjax
from llmjax.convert import hf as convert
from llmjax.convert.hf import ConversionError

COMMON = dict(vocab_size=300, hidden_size=32, intermediate_size=48, moe_intermediate_size=16,
              num_hidden_layers=3, num_attention_heads=4, kv_lora_rank=16, qk_rope_head_dim=8,
              qk_nope_head_dim=8, v_head_dim=12, n_routed_experts=8, num_experts_per_tok=2,
              n_group=4, topk_group=2, n_shared_experts=2, first_k_dense_replace=1,
              max_position_embeddings=64, rms_norm_eps=1e-5, bos_token_id=1, eos_token_id=2,
              pad_token_id=0)
YARN = {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 16,
        "mscale": 1.0, "mscale_all_dim": 1.0, "beta_fast": 32.0, "beta_slow": 1.0,
        "rope_theta": 10000.0}
FAMILIES = {
    # a query bottleneck, sigmoid routing through a bias, YaRN with its logit scale
    "deepseek_v3": lambda: (transformers.DeepseekV3ForCausalLM, transformers.DeepseekV3Config(
        q_lora_rank=24, routed_scaling_factor=2.5, norm_topk_prob=True, num_mtp_layers=0,
        rope_parameters=YARN, **COMMON)),
    # full-rank queries, softmax routing among the best groups, weights scaled not rescaled
    "deepseek_v2": lambda: (transformers.DeepseekV2ForCausalLM, transformers.DeepseekV2Config(
        q_lora_rank=None, routed_scaling_factor=1.5, topk_method="group_limited_greedy",
        **COMMON)),
}


def imported(tmp_path, model_class, hf_config):
    """(folder, transformers model, llmjax run) of a random model whose constant-started
    tensors (norm scales at one, V3's router bias at zero) are redrawn."""
    folder = tmp_path / "source"
    folder.mkdir()
    llama_tokenizer_folder(folder)
    torch.manual_seed(0)
    model = model_class(hf_config).eval()
    with torch.no_grad():
        for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
            if "norm" in name:
                tensor.uniform_(0.5, 1.5)
            if name.endswith("e_score_correction_bias"):  # large enough to change choices
                tensor.uniform_(-0.1, 0.1)
    model.save_pretrained(folder)
    convert.import_to_workdir(folder, tmp_path / "run")
    return folder, model, llmjax.load(tmp_path / "run")


# slow, for the suite's time budget: V3's parity runs by default in the MTP import test, V2's
# group-limited routing in test_moe's router reference
@pytest.mark.parametrize("family", [pytest.param("deepseek_v2", marks=pytest.mark.slow),
                                    pytest.param("deepseek_v3", marks=pytest.mark.slow)])
def test_deepseek_imports_and_exports_as_transformers_runs_it(family, tmp_path):
    model_class, hf_config = FAMILIES[family]()
    folder, hf_model, run = imported(tmp_path, model_class, hf_config)
    m = run.config.model
    assert (m.kv_lora_rank, m.head_dim, m.qk_rope_head_dim, m.v_head_dim) == (16, 8, 8, 12)
    assert (m.num_experts, m.moe_first_dense, m.moe_mlp_dim, m.mlp_dim) == (8, 1, 16, 48)
    assert (m.moe_shared_mlp_dim, m.moe_shared_gated, m.moe_groups, m.moe_group_top_k) == (
        32, False, 4, 2)
    assert (m.moe_router, m.moe_router_bias, m.moe_normalize_top_k, m.q_lora_rank) == {
        "deepseek_v3": ("sigmoid", True, True, 24),
        "deepseek_v2": ("softmax", False, False, 0)}[family]
    assert_same_causal_lm(run.model, hf_model)  # logits, hidden states, greedy decoding
    reloaded = export_round_trip(folder, hf_model, tmp_path)
    assert reloaded.config.model_type == family


def test_a_dense_deepseek_v3_round_trips(tmp_path):
    """first_k_dense_replace covering every layer: latent attention with dense MLPs, what
    configs/gpt.py:style=deepseek trains (and exports as)."""
    model_class, hf_config = FAMILIES["deepseek_v3"]()
    hf_config.first_k_dense_replace = 3
    folder, hf_model, run = imported(tmp_path, model_class, hf_config)
    assert run.config.model.num_experts == 0
    assert_same_causal_lm(run.model, hf_model)
    export_round_trip(folder, hf_model, tmp_path)


def test_multi_token_prediction_layers_are_read_and_left_out(tmp_path):
    from safetensors.numpy import load_file, save_file

    model_class, hf_config = FAMILIES["deepseek_v3"]()
    folder, _, _ = imported(tmp_path, model_class, hf_config)
    tensors = load_file(folder / "model.safetensors")
    extra = {"model.layers.3.enorm.weight": np.ones(32, np.float32),
             "model.layers.3.eh_proj.weight": np.ones((32, 64), np.float32)}
    save_file({**tensors, **extra}, folder / "model.safetensors", metadata={"format": "pt"})
    config, _ = convert.import_folder(folder)
    assert config.model.num_layers == 3


def test_fp8_checkpoints_are_refused_with_the_fix(tmp_path):
    from safetensors.numpy import load_file, save_file

    model_class, hf_config = FAMILIES["deepseek_v2"]()
    folder, _, _ = imported(tmp_path, model_class, hf_config)
    tensors = load_file(folder / "model.safetensors")
    scale = {"model.layers.0.mlp.gate_proj.weight_scale_inv": np.ones((1, 1), np.float32)}
    save_file({**tensors, **scale}, folder / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ConversionError, match="FP8 .* dequantize it to bfloat16 first"):
        convert.import_folder(folder)


def test_deepseek_v2_topk_methods_without_a_match_are_refused(tmp_path):
    model_class, hf_config = FAMILIES["deepseek_v2"]()
    folder, _, _ = imported(tmp_path, model_class, hf_config)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "topk_method": "noaux_tc"}))
    with pytest.raises(ConversionError, match="topk_method='noaux_tc' has no llmjax match"):
        convert.import_folder(folder)


@pytest.mark.slow  # by default: V2's and the dense V3's exports reload in transformers above
@pytest.mark.parametrize("arg", ["size=tiny,style=deepseek", "size=tiny,style=deepseek,experts=4"])
def test_the_deepseek_style_gpt_config_exports_as_deepseek_v3(arg, tmp_path):
    """What configs/gpt.py:style=deepseek trains (with router biases a training run moved)
    is the function transformers' DeepSeek-V3 computes from the export."""
    import importlib.util
    import pathlib

    import jax
    import jax.numpy as jnp
    from flax import nnx

    from llmjax.train.state import build_model

    path = pathlib.Path(__file__).parent.parent / "configs" / "gpt.py"
    spec = importlib.util.spec_from_file_location("gpt", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    c = module.get_config(arg)
    c.model.vocab_size = 300
    model = build_model(c)
    for layer in model.layers:
        layer.attention.kv_norm.scale[...] = 1.0 + jax.random.uniform(jax.random.key(1), (32,))
        if getattr(layer.mlp, "router_bias", None) is not None:
            layer.mlp.router_bias[...] = 0.01 * jax.random.normal(jax.random.key(2), (4,))
    hf_config, tensors = convert.export_params(c, nnx.state(model, nnx.Param))
    assert hf_config["model_type"] == "deepseek_v3"
    convert.write_folder(tmp_path / "hf", hf_config, tensors)
    theirs = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    ids = np.random.RandomState(0).randint(3, 300, (2, 20))
    with torch.no_grad():
        expected = theirs(torch.tensor(ids)).logits.numpy()
    np.testing.assert_allclose(model(jnp.asarray(ids)), expected, atol=1e-4)


def test_deepseek_v3_multi_token_prediction_layers_import_as_mtp_modules(tmp_path):
    """A folder with V3's MTP layer (model.layers.3: enorm, hnorm, eh_proj, a decoder layer,
    shared_head) imports it as mtp/0 for causal language modelling; the model's logits stay
    transformers' (which runs without it), and the export leaves it out."""
    from safetensors.numpy import load_file, save_file

    model_class, hf_config = FAMILIES["deepseek_v3"]()
    folder, hf_model, _ = imported(tmp_path, model_class, hf_config)
    tensors = load_file(folder / "model.safetensors")
    rng = np.random.RandomState(0)
    extra = {k.replace("model.layers.2.", "model.layers.3."): v for k, v in tensors.items()
             if k.startswith("model.layers.2.")}  # a mixture layer, as V3's MTP block is
    extra.update({f"model.layers.3.{name}": rng.rand(*shape).astype(np.float32)
                  for name, shape in (("enorm.weight", (32,)), ("hnorm.weight", (32,)),
                                      ("eh_proj.weight", (32, 64)),
                                      ("shared_head.norm.weight", (32,)),
                                      ("shared_head.head.weight", (300, 32)),
                                      ("embed_tokens.weight", (300, 32)))})
    save_file({**tensors, **extra}, folder / "model.safetensors", metadata={"format": "pt"})
    config_file = folder / "config.json"
    config_file.write_text(json.dumps({**json.loads(config_file.read_text()),
                                       "num_nextn_predict_layers": 1}))
    convert.import_to_workdir(folder, tmp_path / "mtp_run")
    run = llmjax.load(tmp_path / "mtp_run")
    m = run.config.model
    assert (m.mtp_depth, m.moe_router, m.moe_router_bias, m.q_lora_rank, m.rope_scaling) == (
        1, "sigmoid", True, 24, "yarn")
    mtp = run.model.mtp[0]
    np.testing.assert_array_equal(mtp.proj.kernel[...], extra["model.layers.3.eh_proj.weight"].T)
    np.testing.assert_array_equal(mtp.output_norm.scale[...],
                                  extra["model.layers.3.shared_head.norm.weight"])
    np.testing.assert_array_equal(  # the block: layer 2's tensors, copied
        mtp.block.mlp.router[...], np.asarray(run.model.layers[2].mlp.router[...]))
    assert_same_causal_lm(run.model, hf_model)
    hf_out, exported = convert.export_params(run.config, nnx_params(run))
    assert hf_out["num_nextn_predict_layers"] == 0
    assert not any(k.startswith("model.layers.3.") for k in exported)


def nnx_params(run):
    from flax import nnx

    return nnx.state(run.model, nnx.Param)
