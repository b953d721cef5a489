"""Gemma, Gemma 2 and Gemma 3 (text) checkpoints: random transformers models import with the
same logits, hidden states and greedy tokens over the KV cache, export back to the same
family, and re-import bit for bit. Norm scales and query/key weights are redrawn larger than
transformers' init, so that the (1 + weight) norms, the soft-caps and the query scale all
change the logits."""

import json
import shutil

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from test_convert_hf import (
    assert_close,
    assert_same_causal_lm,
    export_round_trip,
    imported_llama_family,
    padded_batch,
)

from llmjax.convert import hf as convert

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

SIZES = dict(vocab_size=300, hidden_size=32, intermediate_size=64, num_attention_heads=4,
             num_key_value_heads=2, head_dim=16, max_position_embeddings=64,
             bos_token_id=1, eos_token_id=2, pad_token_id=0)


def redraw(name, tensor):
    if "norm" in name:  # Gemma's norms scale by 1 + weight, and start at weight 0
        tensor.uniform_(-0.5, 0.5)
    elif name.endswith(("q_proj.weight", "k_proj.weight")):  # logits large enough to cap
        tensor.normal_(0.0, 0.4)
    elif name.endswith("embed_tokens.weight"):
        tensor.normal_(0.0, 0.3)


def test_gemma_matches_transformers(tmp_path):
    """Gemma 1: GeGLU, embeddings × sqrt(hidden), (1 + weight) norms, multi-query here."""
    config = transformers.GemmaConfig(**{**SIZES, "num_key_value_heads": 1},
                                      num_hidden_layers=2)
    folder, hf_model, run = imported_llama_family(tmp_path, transformers.GemmaForCausalLM,
                                                  config, redraw)
    m = run.config.model
    assert (m.scale_embeddings, m.post_norms, m.num_kv_heads, m.head_dim) == (True, False, 1, 16)
    assert_same_causal_lm(run.model, hf_model)
    reloaded = export_round_trip(folder, hf_model, tmp_path)
    assert type(reloaded).__name__ == "GemmaForCausalLM"


def test_gemma2_matches_transformers(tmp_path):
    """Gemma 2: post norms, query_pre_attn_scalar ≠ head_dim, attention and output logits
    soft-capped, a window of 4 on every other layer (sequences of 12 and decoding past it)."""
    config = transformers.Gemma2Config(
        **SIZES, num_hidden_layers=4, query_pre_attn_scalar=24, attn_logit_softcapping=2.0,
        final_logit_softcapping=1.5, sliding_window=4)
    folder, hf_model, run = imported_llama_family(tmp_path, transformers.Gemma2ForCausalLM,
                                                  config, redraw)
    m = run.config.model
    assert (m.post_norms, m.query_scale_dim, m.attention_softcap, m.logit_softcap,
            m.attention_window, m.global_attention_every) == (True, 24, 2.0, 1.5, 4, 2)
    logits = np.asarray(run.logits(["The quick brown fox jumps over the lazy dog."]))
    assert np.abs(logits).max() < 1.5 < np.abs(logits).max() / 0.9  # capped, and the cap binds
    assert_same_causal_lm(run.model, hf_model)
    reloaded = export_round_trip(folder, hf_model, tmp_path)
    assert type(reloaded).__name__ == "Gemma2ForCausalLM"
    assert reloaded.config.layer_types == hf_model.config.layer_types


def test_gemma3_matches_transformers_and_scans_its_layer_pattern(tmp_path):
    """Gemma 3: QK-norm, a global layer every third, windowed layers with a rotary base of
    their own and unscaled positions, global ones linearly scaled. The layer pattern is data
    under scan_layers (one compiled block for both kinds): the same logits."""
    from llmjax.train.state import build_model

    config = transformers.Gemma3TextConfig(
        **SIZES, num_hidden_layers=6, query_pre_attn_scalar=16, sliding_window=4,
        layer_types=["sliding_attention", "sliding_attention", "full_attention"] * 2,
        rope_parameters={
            "full_attention": {"rope_type": "linear", "factor": 2.0, "rope_theta": 1e6},
            "sliding_attention": {"rope_type": "default", "rope_theta": 100.0}})
    folder, hf_model, run = imported_llama_family(tmp_path, transformers.Gemma3ForCausalLM,
                                                  config, redraw)
    m = run.config.model
    assert (m.qk_norm, m.global_attention_every, m.rotary_base, m.local_rotary_base,
            m.rope_scaling, m.attention_softcap) == (True, 3, 1e6, 100.0, "linear", None)
    # the config.json of transformers < 5 (most Gemma 3 folders on the Hub) reads the same
    old = shutil.copytree(folder, tmp_path / "old-format")
    hf_config = json.loads((old / "config.json").read_text())
    hf_config.update(rope_theta=1e6, rope_local_base_freq=100.0, sliding_window_pattern=3,
                     rope_scaling={"rope_type": "linear", "factor": 2.0})
    for key in ("rope_parameters", "layer_types"):
        hf_config.pop(key)
    (old / "config.json").write_text(json.dumps(hf_config))
    assert convert.import_folder(old)[0].model.to_dict() == run.config.model.to_dict()
    assert_same_causal_lm(run.model, hf_model)
    reloaded = export_round_trip(folder, hf_model, tmp_path)
    assert type(reloaded).__name__ == "Gemma3ForCausalLM"
    ids, mask = padded_batch([12, 7], 300)
    scanned_config = run.config.copy_and_resolve_references()
    scanned_config.model.scan_layers = True
    scanned_config.model.remat = "full"
    scanned = nnx.merge(nnx.graphdef(build_model(scanned_config)), nnx.state(run.model))
    seg = jnp.asarray(mask, jnp.int32)
    with torch.no_grad():
        theirs = hf_model(torch.tensor(ids), attention_mask=torch.tensor(mask)).logits
    assert_close(scanned(jnp.asarray(ids), segment_ids=seg), theirs, mask)


def test_a_run_gemma_cannot_express_is_refused_with_its_settings():
    from conftest import tiny_config

    from llmjax.configs import ConfigError

    c = tiny_config(**{"model.scale_embeddings": True, "model.position_embedding": "rotary",
                       "model.norm": "rmsnorm", "model.gated_mlp": True, "model.use_bias": False,
                       "model.attention_softcap": 30.0})
    with pytest.raises(ConfigError, match=r"gemma model: model.attention_softcap=30.0 without "
                                          r"model.post_norms"):
        convert.export_params(c, params=None)


def test_a_multimodal_gemma3_folder_reads_as_its_language_model(tmp_path):
    """Gemma3ForConditionalGeneration (Gemma 3 4B+): its language model imports with the text
    logits transformers gives without an image, and exports as Gemma3ForCausalLM; a
    text_config that leaves out the keys equal to their defaults (as the Hub's 4B config.json
    does) reads the same, those defaults being transformers' own."""
    from test_convert_hf import llama_tokenizer_folder

    import llmjax
    from llmjax.convert.gemma import _GEMMA3_TEXT_DEFAULTS

    text = transformers.Gemma3TextConfig(
        **{**SIZES, "head_dim": 8}, num_hidden_layers=3, query_pre_attn_scalar=8,
        sliding_window=4,
        layer_types=["sliding_attention", "full_attention", "sliding_attention"])
    vision = transformers.SiglipVisionConfig(hidden_size=16, intermediate_size=32,
                                             num_hidden_layers=1, num_attention_heads=2,
                                             image_size=28, patch_size=14)
    config = transformers.Gemma3Config(text_config=text.to_dict(),
                                       vision_config=vision.to_dict(), mm_tokens_per_image=4,
                                       boi_token_index=297, eoi_token_index=298,
                                       image_token_index=299)
    folder = tmp_path / "source"
    folder.mkdir()
    llama_tokenizer_folder(folder)
    torch.manual_seed(0)
    hf_model = transformers.Gemma3ForConditionalGeneration(config).eval()
    with torch.no_grad():
        for name, tensor in hf_model.named_parameters():
            redraw(name, tensor)
    hf_model.save_pretrained(folder)
    convert.import_to_workdir(folder, tmp_path / "run")
    run = llmjax.load(tmp_path / "run")
    m = run.config.model
    assert (m.num_layers, m.global_attention_every, m.rotary_base, m.local_rotary_base) == (
        3, 2, 1e6, 1e4)
    ids, mask = padded_batch([9, 5, 12], 300)
    with torch.no_grad():
        theirs = hf_model(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask)).logits
    assert_close(run.model(jnp.asarray(ids), segment_ids=jnp.asarray(mask, jnp.int32)), theirs,
                 mask)
    convert.export_workdir(tmp_path / "run", tmp_path / "hf")
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    assert type(reloaded).__name__ == "Gemma3ForCausalLM"
    full = torch.tensor(padded_batch([12, 12], 300)[0])
    with torch.no_grad():
        np.testing.assert_allclose(reloaded(full).logits.numpy(),
                                   hf_model(input_ids=full).logits.numpy(), atol=1e-5)
    # the Hub's minimal text_config: the keys equal to transformers' defaults left out
    defaults = transformers.Gemma3TextConfig()
    for key, value in _GEMMA3_TEXT_DEFAULTS.items():
        if key == "rope_theta":
            assert defaults.rope_parameters["full_attention"]["rope_theta"] == value
        elif key == "rope_local_base_freq":
            assert defaults.rope_parameters["sliding_attention"]["rope_theta"] == value
        else:
            assert getattr(defaults, key) == value, key
    minimal = shutil.copytree(folder, tmp_path / "minimal")
    hf_config = json.loads((minimal / "config.json").read_text())
    for key in ("rope_parameters", "rms_norm_eps", "hidden_activation", "tie_word_embeddings",
                "attention_bias"):
        hf_config["text_config"].pop(key)
    (minimal / "config.json").write_text(json.dumps(hf_config))
    assert convert.import_folder(minimal)[0].model.to_dict() == m.to_dict()
