"""RoBERTa / XLM-RoBERTa folders in and out: one token type, positions counted from the pad id,
the LM and classification heads under RoBERTa's names, and pairs laid out `<s> a </s></s> b
</s>` as the tokenizer's post-processor lays them out."""

import jax.numpy as jnp
import numpy as np
import pytest
from test_convert_hf import assert_close, byte_bpe, padded_batch, saved_random_model

import llmjax
from llmjax.convert import hf as convert
from llmjax.objectives.question_answering import Passage, passage_windows
from llmjax.objectives.token_classification import tagged_words, word_pieces

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")


def roberta_folder(folder, model_class, **config):
    """A random RoBERTa-family model with a byte-level BPE tokenizer (RoBERTa's special ids and
    post-processor) saved in `folder`; biases and norms redrawn, so a mapping error shows."""
    from tokenizers import processors

    tok = byte_bpe(["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
    tok.post_processor = processors.RobertaProcessing(("</s>", 2), ("<s>", 0))
    tok.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(
        '{"bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>", "unk_token": "<unk>",'
        ' "mask_token": "<mask>", "tokenizer_class": "PreTrainedTokenizerFast"}')
    config_class = model_class.config_class
    hf_config = config_class(vocab_size=tok.get_vocab_size(), hidden_size=32, num_hidden_layers=2,
                             num_attention_heads=4, intermediate_size=64,
                             max_position_embeddings=66, type_vocab_size=1, pad_token_id=1,
                             bos_token_id=0, eos_token_id=2, hidden_dropout_prob=0.0,
                             attention_probs_dropout_prob=0.0, **config)

    def redraw(name, tensor):
        if name.endswith("bias") or "LayerNorm" in name or "layer_norm" in name:
            tensor.normal_(0.0, 0.5)

    model = saved_random_model(model_class, hf_config, folder, redraw)
    return model, transformers.AutoTokenizer.from_pretrained(folder)


def test_roberta_masked_lm_matches_transformers_and_exports(tmp_path):
    (tmp_path / "hf").mkdir()
    hf_model, hf_tok = roberta_folder(tmp_path / "hf", transformers.RobertaForMaskedLM)
    run = llmjax.load(tmp_path / "hf")
    assert run.config.objective == "mlm" and run.config.model.num_token_types == 1
    assert run.config.model.max_len == 64  # 66 rows, the first two before position 0
    for text in ("The quick brown fox.", "Zwei Hunde spielen im Schnee!"):
        assert run.tokenizer.encode(text) == hf_tok(text, add_special_tokens=False)["input_ids"]
    ids, mask = padded_batch([10, 6, 14], run.config.model.vocab_size)
    ids = np.where(mask > 0, ids, 1)  # RoBERTa's padding id, which its positions skip
    with torch.no_grad():
        theirs = hf_model(torch.tensor(ids), attention_mask=torch.tensor(mask)).logits
    hidden = run.model.hidden_states(jnp.asarray(ids), segment_ids=jnp.asarray(mask, jnp.int32),
                                     token_types=jnp.ones_like(jnp.asarray(ids)))  # ignored
    assert_close(run.model.mlm_logits(hidden), theirs, mask)
    convert.import_to_workdir(tmp_path / "hf", tmp_path / "run")
    convert.export_workdir(tmp_path / "run", tmp_path / "exported")
    reloaded = transformers.AutoModelForMaskedLM.from_pretrained(tmp_path / "exported").eval()
    assert reloaded.config.architectures == ["RobertaForMaskedLM"]
    with torch.no_grad():
        again = reloaded(torch.tensor(ids), attention_mask=torch.tensor(mask)).logits
    assert_close(again, theirs, mask)


@pytest.mark.parametrize("model_class", [
    "RobertaForSequenceClassification",
    pytest.param("XLMRobertaForSequenceClassification", marks=pytest.mark.slow)])
def test_roberta_pair_classification_matches_transformers(model_class, tmp_path):
    """Pairs: `<s> a </s></s> b </s>` (the tokenizer's post-processor), the classifier's dense +
    tanh + out_proj as llmjax's pooler + classifier."""
    (tmp_path / "hf").mkdir()
    hf_model, hf_tok = roberta_folder(tmp_path / "hf", getattr(transformers, model_class),
                                      num_labels=3)
    run = llmjax.load(tmp_path / "hf")
    assert run.config.objective == "classification"
    assert run.tokenizer.pair_separator == (2, 2)
    texts, pairs = ["The quick brown fox.", "A man in a hat"], ["Zwei Hunde!", "spielen im Schnee"]
    encoded = hf_tok(texts, pairs, padding=True, return_tensors="pt")
    with torch.no_grad():
        probabilities = torch.softmax(hf_model(**encoded).logits, -1).numpy()
    predicted = run.predict(texts, pairs)
    for (_, ours), theirs in zip(predicted, probabilities, strict=True):
        np.testing.assert_allclose(list(ours.values()), theirs, atol=1e-5)
    convert.import_to_workdir(tmp_path / "hf", tmp_path / "run")
    assert llmjax.load(tmp_path / "run").tokenizer.pair_separator == (2, 2)  # saved with it
    convert.export_workdir(tmp_path / "run", tmp_path / "exported")
    reloaded = transformers.AutoModelForSequenceClassification.from_pretrained(
        tmp_path / "exported").eval()
    assert reloaded.config.architectures == ["RobertaForSequenceClassification"]
    with torch.no_grad():
        again = torch.softmax(reloaded(**encoded).logits, -1).numpy()
    np.testing.assert_allclose(again, probabilities, atol=1e-5)


def test_roberta_question_answering_windows_and_logits(tmp_path):
    (tmp_path / "hf").mkdir()
    hf_model, hf_tok = roberta_folder(tmp_path / "hf", transformers.RobertaForQuestionAnswering)
    run = llmjax.load(tmp_path / "hf")
    assert run.config.objective == "question_answering"
    question, context = "Who plays in the snow?", "Zwei Hunde spielen im Schnee, a man too."
    encoded = hf_tok(question, context, return_tensors="pt")
    windows = passage_windows([Passage.of(question, context)], run.tokenizer, run.config,
                              labelled=False)
    n = encoded["input_ids"].shape[1]
    np.testing.assert_array_equal(windows.arrays["tokens"][0, :n], encoded["input_ids"][0])
    from llmjax.api import _token_class_logits

    ours = run._apply(_token_class_logits, *(windows.arrays[k] for k in
                                            ("tokens", "token_types", "segment_ids")),
                      positions=n)[0]
    with torch.no_grad():
        out = hf_model(**encoded)
    np.testing.assert_allclose(ours[:, 0], out.start_logits[0].numpy(), atol=1e-5)
    np.testing.assert_allclose(ours[:, 1], out.end_logits[0].numpy(), atol=1e-5)
    assert run.answer(question, context) in context


def test_roberta_tags_words_as_is_split_into_words_with_a_prefix_space(tmp_path):
    """Token classification: every word, the first too, tokenized with a space before it, as
    transformers' `is_split_into_words` does for byte-level BPE (add_prefix_space=True); the
    tags are those of transformers' logits at each word's first token."""
    (tmp_path / "hf").mkdir()
    labels = ["O", "B-PER", "I-PER", "B-LOC"]
    hf_model, _ = roberta_folder(tmp_path / "hf", transformers.RobertaForTokenClassification,
                                 id2label=dict(enumerate(labels)),
                                 label2id={n: i for i, n in enumerate(labels)})
    # RoBERTa's own tokenizer class (a Hub folder's); the generic one ignores add_prefix_space
    hf_tok = transformers.RobertaTokenizerFast.from_pretrained(tmp_path / "hf",
                                                               add_prefix_space=True)
    run = llmjax.load(tmp_path / "hf")
    assert run.config.objective == "token_classification"
    assert run.tokenizer.words_take_prefix_space
    for sentence in ["The quick brown fox jumps", "Zwei Hunde spielen im Schnee", "A man"]:
        words = sentence.split()
        encoded = hf_tok(words, is_split_into_words=True, return_tensors="pt")
        with torch.no_grad():
            logits = hf_model(**encoded).logits[0].numpy()
        firsts = [encoded.word_ids().index(k) for k in range(len(words))]
        pieces = word_pieces([words], run.tokenizer)[0]
        tokens, _, weights = tagged_words(words, pieces, [0] * len(words), 64, run.tokenizer)
        assert tokens.tolist() == encoded["input_ids"][0].tolist()
        assert np.flatnonzero(weights).tolist() == firsts
        assert run.tag(sentence) == [(w, labels[int(logits[at].argmax())])
                                     for w, at in zip(words, firsts, strict=True)]
