"""GPT-NeoX (Pythia) folders in and out: attention and MLP side by side (parallel residual),
rotary positions on a quarter of each head, the fused per-head query_key_value, untied
embed_in / embed_out; and the same folder in the Hub's older layout."""

import json

import numpy as np
import pytest
from test_convert_hf import (
    assert_same_causal_lm,
    assert_same_import,
    byte_bpe_tokenizer_json,
    export_round_trip,
    saved_random_model,
)

import llmjax
from llmjax.convert import hf as convert

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")


def neox_folder(folder, **config):
    """A random GPTNeoXForCausalLM (head_dim 16) with a byte-level BPE tokenizer; biases and
    norms redrawn, so that a mapping error in them shows."""
    byte_bpe_tokenizer_json(folder)
    hf_config = transformers.GPTNeoXConfig(
        vocab_size=300, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=128, max_position_embeddings=64, bos_token_id=0, eos_token_id=0,
        **config)

    def redraw(name, tensor):
        if name.endswith("bias") or "layernorm" in name or "layer_norm" in name:
            tensor.normal_(0.0, 0.5)

    return saved_random_model(transformers.GPTNeoXForCausalLM, hf_config, folder, redraw)


@pytest.mark.parametrize("layout", [
    # Pythia: parallel residual, a quarter of each head rotates (4 of 16 dims)
    {"use_parallel_residual": True, "rope_parameters": {"rope_theta": 10000.0,
                                                        "partial_rotary_factor": 0.25}},
    # one after the other, half the head rotating at another base, tied embeddings
    pytest.param({"use_parallel_residual": False, "tie_word_embeddings": True,
                  "rope_parameters": {"rope_theta": 500.0, "partial_rotary_factor": 0.5}},
                 marks=pytest.mark.slow)])
def test_gpt_neox_matches_transformers_and_exports(layout, tmp_path):
    folder = tmp_path / "source"
    folder.mkdir()
    hf_model = neox_folder(folder, **layout)
    config = convert.import_to_workdir(folder, tmp_path / "run")
    m = config.model
    rope = layout["rope_parameters"]
    assert (m.parallel_residual, m.rotary_fraction, m.rotary_base) == (
        layout["use_parallel_residual"], rope["partial_rotary_factor"], rope["rope_theta"])
    run = llmjax.load(tmp_path / "run")
    assert_same_causal_lm(run.model, hf_model)
    reloaded = export_round_trip(folder, hf_model, tmp_path)
    assert type(reloaded).__name__ == "GPTNeoXForCausalLM"
    assert reloaded.config.use_parallel_residual == layout["use_parallel_residual"]


def test_a_pythia_folder_in_the_hubs_older_layout_imports_the_same(tmp_path):
    """Pythia's Hub folders predate transformers 5: `rotary_pct` / `rotary_emb_base` instead of
    `rope_parameters`, the LM head named `embed_out`, and the attention's causal-mask buffers
    saved with the weights. They import to the same parameters as the current layout."""
    from safetensors.numpy import load_file, save_file

    new, old = tmp_path / "new", tmp_path / "old"
    new.mkdir()
    neox_folder(new, use_parallel_residual=True,
                rope_parameters={"rope_theta": 10000.0, "partial_rotary_factor": 0.25})
    old.mkdir()
    (old / "tokenizer.json").write_text((new / "tokenizer.json").read_text())
    hf = json.loads((new / "config.json").read_text())
    hf.pop("rope_parameters")
    hf.update(rotary_pct=0.25, rotary_emb_base=10000, transformers_version="4.24.0")
    (old / "config.json").write_text(json.dumps(hf))
    tensors = load_file(new / "model.safetensors")
    if "lm_head.weight" in tensors:
        tensors["embed_out.weight"] = tensors.pop("lm_head.weight")
    assert "embed_out.weight" in tensors
    for i in range(2):
        p = f"gpt_neox.layers.{i}.attention."
        tensors[p + "bias"] = np.tril(np.ones((1, 1, 64, 64), bool))
        tensors[p + "masked_bias"] = np.array(-1e9, np.float32)
        tensors[p + "rotary_emb.inv_freq"] = np.ones(2, np.float32)
    save_file(tensors, old / "model.safetensors")
    assert_same_import(new, old)


def test_rotary_layernorm_decoders_export_as_gpt_neox():
    """A decoder with rotary positions and LayerNorm is GPT-NeoX's (LLaMA's has RMSNorm);
    what GPT-NeoX cannot hold is named, and other families refuse its settings."""
    from conftest import tiny_config

    from llmjax.configs import ConfigError

    c = tiny_config(**{"model.position_embedding": "rotary", "model.rotary_fraction": 0.5,
                       "model.parallel_residual": True})
    assert convert.export_family(c).MODEL_TYPE == "gpt_neox"
    assert convert.export_family(c).inexpressible(c) == []
    c = tiny_config(**{"model.parallel_residual": True, "model.gated_mlp": True})
    with pytest.raises(ConfigError, match=r"gpt_neox model: model.position_embedding='learned' "
                                          r"\(GPT-NeoX has 'rotary'\); model.gated_mlp=True"):
        convert.export_params(c, params=None)
    c = tiny_config(**{"model.position_embedding": "rotary", "model.norm": "rmsnorm",
                       "model.rotary_fraction": 0.5, "model.use_bias": False,
                       "model.activation": "silu", "model.gated_mlp": True})
    with pytest.raises(ConfigError, match=r"llama model: model.rotary_fraction=0.5 \(LLaMA "
                                          r"rotates whole heads"):
        convert.export_params(c, params=None)


def test_a_bare_body_folder_imports_with_a_fresh_lm_head(tmp_path, caplog):
    """GPTNeoXModel (as LlamaModel) saves no LM head: the body's hidden states match, the
    untied head starts fresh and the log says so."""
    import jax.numpy as jnp
    from test_convert_hf import assert_close, padded_batch

    byte_bpe_tokenizer_json(tmp_path)
    hf_model = saved_random_model(transformers.GPTNeoXModel, transformers.GPTNeoXConfig(
        vocab_size=300, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=128, max_position_embeddings=64), tmp_path)
    with caplog.at_level("WARNING"):
        run = llmjax.load(tmp_path)
    assert "has no weights for lm_head: they start from random values" in caplog.text
    ids, mask = padded_batch([9, 5], 300)
    with torch.no_grad():
        theirs = hf_model(torch.tensor(ids), attention_mask=torch.tensor(mask)).last_hidden_state
    ours = run.model.hidden_states(jnp.asarray(ids), segment_ids=jnp.asarray(mask, jnp.int32))
    assert_close(ours, theirs, mask)
    assert run.model.lm_head is not None
