"""DistilBERT folders in and out: BERT's body with no token types under its own names, the
sequence classifier's pre_classifier + ReLU as llmjax's pooler (model.pooler_activation=relu),
the MLM head's vocab_transform / vocab_layer_norm / vocab_projector."""

import jax.numpy as jnp
import numpy as np
import pytest
from test_convert_hf import (
    assert_close,
    assert_same_import,
    bert_vocab,
    padded_batch,
    saved_random_model,
)

import llmjax
from llmjax.convert import hf as convert

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")


def distilbert_folder(folder, model_class, **config):
    """A random DistilBERT of `model_class` with a lower-casing WordPiece vocab.txt; biases
    and norms redrawn, so that a mapping error in them shows."""
    vocab = bert_vocab(folder)
    hf_config = transformers.DistilBertConfig(
        vocab_size=vocab, dim=32, n_layers=2, n_heads=4, hidden_dim=64,
        max_position_embeddings=64, dropout=0.0, attention_dropout=0.0, **config)

    def redraw(name, tensor):
        if name.endswith("bias") or "layer_norm" in name or "LayerNorm" in name:
            tensor.normal_(0.0, 0.5)

    return saved_random_model(model_class, hf_config, folder, redraw)


def test_distilbert_classifier_matches_transformers_and_exports(tmp_path):
    labels = ["negative", "neutral", "positive"]
    (tmp_path / "hf").mkdir()
    hf_model = distilbert_folder(tmp_path / "hf", transformers.DistilBertForSequenceClassification,
                                 id2label=dict(enumerate(labels)),
                                 label2id={n: i for i, n in enumerate(labels)})
    run = llmjax.load(tmp_path / "hf")
    m = run.config.model
    assert (run.config.objective, m.num_token_types, m.pooler_activation) == (
        "classification", 0, "relu")
    assert run.model.encoder.token_type_embed is None
    hf_tok = transformers.DistilBertTokenizer(str(tmp_path / "hf" / "vocab.txt"),
                                              do_lower_case=True)
    texts = ["The quick brown fox jumps over the lazy dog.", "Zwei Hunde spielen im Schnee!"]
    encoded = hf_tok(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        probabilities = torch.softmax(hf_model(**encoded).logits, -1).numpy()
    predicted = run.predict(texts)
    assert [label for label, _ in predicted] == [labels[i] for i in probabilities.argmax(-1)]
    for (_, ours), theirs in zip(predicted, probabilities, strict=True):
        np.testing.assert_allclose([ours[n] for n in labels], theirs, atol=1e-5)
    convert.import_to_workdir(tmp_path / "hf", tmp_path / "run")
    convert.export_workdir(tmp_path / "run", tmp_path / "exported")
    reloaded = transformers.AutoModelForSequenceClassification.from_pretrained(
        tmp_path / "exported").eval()
    assert reloaded.config.architectures == ["DistilBertForSequenceClassification"]
    assert reloaded.config.id2label == dict(enumerate(labels))
    with torch.no_grad():
        again = torch.softmax(reloaded(**encoded).logits, -1).numpy()
    np.testing.assert_allclose(again, probabilities, atol=1e-5)
    assert_same_import(tmp_path / "hf", tmp_path / "exported")


@pytest.mark.slow
def test_distilbert_masked_lm_matches_transformers_and_exports(tmp_path):
    (tmp_path / "hf").mkdir()
    hf_model = distilbert_folder(tmp_path / "hf", transformers.DistilBertForMaskedLM,
                                 activation="relu")
    run = llmjax.load(tmp_path / "hf")
    assert (run.config.objective, run.config.model.activation) == ("mlm", "relu")
    ids, mask = padded_batch([10, 6, 14], run.config.model.vocab_size)
    with torch.no_grad():
        theirs = hf_model(torch.tensor(ids), attention_mask=torch.tensor(mask)).logits
    hidden = run.model.hidden_states(jnp.asarray(ids), segment_ids=jnp.asarray(mask, jnp.int32))
    assert_close(run.model.mlm_logits(hidden), theirs, mask)
    convert.import_to_workdir(tmp_path / "hf", tmp_path / "run")
    convert.export_workdir(tmp_path / "run", tmp_path / "exported")
    reloaded = transformers.AutoModelForMaskedLM.from_pretrained(tmp_path / "exported").eval()
    assert reloaded.config.architectures == ["DistilBertForMaskedLM"]
    with torch.no_grad():
        again = reloaded(torch.tensor(ids), attention_mask=torch.tensor(mask)).logits
    assert_close(again, theirs, mask)


def test_only_distilbert_holds_an_encoder_without_token_types_or_with_a_relu_pooler():
    from conftest import tiny_config

    from llmjax.configs import ConfigError

    encoder = {"model.arch": "encoder", "objective": "classification",
               "model.norm_position": "post", "model.activation": "gelu_exact"}
    c = tiny_config(**encoder, **{"model.num_token_types": 0})
    assert convert.export_family(c).MODEL_TYPE == "distilbert"
    with pytest.raises(ConfigError, match=r"distilbert model: model.norm_epsilon=1e-05 "
                                          r"\(DistilBERT has 1e-12\); model.pooler_activation="
                                          r"'tanh' \(DistilBERT has 'relu'\)"):
        convert.export_params(c, params=None)
    c = tiny_config(**encoder, **{"model.pooler_activation": "relu"})
    with pytest.raises(ConfigError, match=r"bert model: model.pooler_activation='relu' \(BERT "
                                          r"has 'tanh'\)"):
        convert.export_params(c, params=None)
