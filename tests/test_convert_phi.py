"""Phi folders in and out: attention and MLP side by side on the block's one LayerNorm,
rotary positions on a share of each head, and an output projection with a bias."""

import pytest
from test_convert_hf import (
    assert_same_causal_lm,
    byte_bpe_tokenizer_json,
    export_round_trip,
    saved_random_model,
)

import llmjax
from llmjax.convert import hf as convert

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")


@pytest.mark.parametrize("layout", [
    {"partial_rotary_factor": 0.5},  # phi-1.5's
    pytest.param({"partial_rotary_factor": 0.25, "qk_layernorm": True,
                  "num_key_value_heads": 2}, marks=pytest.mark.slow)])
def test_phi_matches_transformers_and_exports(layout, tmp_path):
    """A random PhiForCausalLM (biases, norms and the output bias redrawn, so that a mapping
    error in them shows): logits, hidden states, greedy tokens, and the export back."""
    folder = tmp_path / "source"
    folder.mkdir()
    byte_bpe_tokenizer_json(folder)
    config = transformers.PhiConfig(
        vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=64, resid_pdrop=0.0, embd_pdrop=0.0,
        attention_dropout=0.0, **layout)

    def redraw(name, tensor):
        if name.endswith("bias") or "layernorm" in name:
            tensor.normal_(0.0, 0.5)

    hf_model = saved_random_model(transformers.PhiForCausalLM, config, folder, redraw)
    convert.import_to_workdir(folder, tmp_path / "run")
    run = llmjax.load(tmp_path / "run")
    m = run.config.model
    assert (m.parallel_residual, m.parallel_shared_norm, m.lm_head_bias) == (True, True, True)
    assert (m.rotary_fraction, m.qk_norm) == (layout["partial_rotary_factor"],
                                              layout.get("qk_layernorm", False))
    assert_same_causal_lm(run.model, hf_model)
    reloaded = export_round_trip(folder, hf_model, tmp_path)
    assert type(reloaded).__name__ == "PhiForCausalLM"
