"""OPT folders in: GPT-2's function under other names, its position table two rows early;
the run exports as GPT-2 with the same logits (a post-LayerNorm one is refused)."""

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


@pytest.mark.parametrize("pre_norm", [True, pytest.param(False, marks=pytest.mark.slow)])
def test_opt_matches_transformers_and_exports_as_gpt2(pre_norm, tmp_path):
    """A random OPTForCausalLM (biases, norms and the two rows before position 0 redrawn, so
    that a mapping error shows); pre-LayerNorm as OPT-125m, or post-LayerNorm."""
    folder = tmp_path / "source"
    folder.mkdir()
    byte_bpe_tokenizer_json(folder)
    config = transformers.OPTConfig(
        vocab_size=300, hidden_size=32, ffn_dim=64, num_hidden_layers=2, num_attention_heads=4,
        max_position_embeddings=64, dropout=0.0, do_layer_norm_before=pre_norm,
        word_embed_proj_dim=32, pad_token_id=1, bos_token_id=0, eos_token_id=0)

    def redraw(name, tensor):
        if name.endswith("bias") or "layer_norm" in name or "embed_positions" in name:
            tensor.normal_(0.0, 0.5)

    hf_model = saved_random_model(transformers.OPTForCausalLM, config, folder, redraw)
    convert.import_to_workdir(folder, tmp_path / "run")
    run = llmjax.load(tmp_path / "run")
    m = run.config.model
    assert (m.norm_position, m.activation, m.max_len) == ("pre" if pre_norm else "post",
                                                          "relu", 64)
    assert_same_causal_lm(run.model, hf_model)
    if pre_norm:
        reloaded = export_round_trip(folder, hf_model, tmp_path)
        assert type(reloaded).__name__ == "GPT2LMHeadModel"
    else:  # OPT-350m's layout: no other family holds a post-LayerNorm decoder
        with pytest.raises(llmjax.configs.ConfigError, match=r"norm_position='post' \(GPT-2 "):
            convert.export_workdir(tmp_path / "run", tmp_path / "hf")


def test_an_opt_with_embedding_projections_is_refused():
    hf = transformers.OPTConfig(hidden_size=32, word_embed_proj_dim=16, ffn_dim=64,
                                num_hidden_layers=1, num_attention_heads=4).to_dict()
    with pytest.raises(convert.ConversionError, match=r"word_embed_proj_dim=16 \(projections "
                                                      r"between embeddings and blocks\)"):
        convert.family_of(hf).configure(llmjax.configs.base_config(), hf, {}, None)
