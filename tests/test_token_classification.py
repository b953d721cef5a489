"""Token classification (objective=token_classification): word-level tags from the encoder,
entity precision / recall / F1 as conlleval counts them, and Hugging Face's
BertForTokenClassification in and out."""

import json

import jax.numpy as jnp
import numpy as np
import pytest
from conftest import optimised, run_command, tiny_config

import llmjax
from llmjax.data.text_builder import DataError
from llmjax.data.tokenizers import ByteTokenizer
from llmjax.evaluation.entities import TagScheme, entity_counts, entity_metrics
from llmjax.evaluation.predictions import write_predictions
from llmjax.objectives.token_classification import tagged_words


def _split(label):
    if label == "O":
        return "O", ""
    head, _, tail = label.partition("-")
    return (head, tail) if tail and head in "BIES" else ("I", label)


def conlleval_chunks(labels):
    """{(first, last, type)}: conlleval's endOfChunk / startOfChunk (with seqeval's S- rules),
    tag by tag, as its perl script runs them."""
    chunks, start, prev_tag, prev_type = set(), None, "O", ""
    for i, label in enumerate([*labels, "O"]):
        tag, kind = _split(label)
        end = ((prev_tag in "BI" and tag in "BSO") or prev_tag in "ES"
               or (prev_tag != "O" and prev_type != kind))
        if start is not None and end:
            chunks.add((start, i - 1, prev_type))
            start = None
        begins = (tag in "BS" or (prev_tag in "ES" and tag in "EI")
                  or (prev_tag == "O" and tag in "EI") or (tag != "O" and prev_type != kind))
        if begins and tag != "O":
            start = i
        prev_tag, prev_type = tag, kind
    return chunks


def test_entity_counts_are_conllevals_on_random_tag_sequences():
    """The vectorised count equals conlleval's chunk-by-chunk one on random IOBES / IO tag
    rows with unscored positions (sub-word pieces, padding) between the words."""
    labels = ["O", "B-PER", "I-PER", "E-PER", "S-PER", "B-LOC", "I-LOC", "E-LOC", "S-LOC",
              "MISC"]
    scheme = TagScheme.of(labels)
    rng = np.random.default_rng(0)
    for _ in range(200):
        gold = rng.integers(0, len(labels), (3, 12))
        predicted = np.where(rng.random((3, 12)) < 0.6, gold,
                             rng.integers(0, len(labels), (3, 12)))
        weights = (rng.random((3, 12)) < 0.7).astype(np.float32)
        expected = np.zeros(3)
        for g, p, w in zip(gold, predicted, weights, strict=True):
            ours = conlleval_chunks([labels[t] for t, s in zip(p, w, strict=True) if s])
            theirs = conlleval_chunks([labels[t] for t, s in zip(g, w, strict=True) if s])
            expected += [len(ours & theirs), len(ours), len(theirs)]
        counts = entity_counts(jnp.asarray(predicted), jnp.asarray(gold),
                               jnp.asarray(weights), scheme)
        assert np.asarray(counts).tolist() == expected.tolist()


def test_entity_metrics_of_seqevals_example():
    """seqeval's README: one of two MISC/PER entities found with the right span → 0.5."""
    labels = ["O", "B-MISC", "I-MISC", "B-PER", "I-PER"]
    gold = [["O", "O", "O", "B-MISC", "I-MISC", "I-MISC", "O"], ["B-PER", "I-PER", "O"]]
    pred = [["O", "O", "B-MISC", "I-MISC", "I-MISC", "I-MISC", "O"], ["B-PER", "I-PER", "O"]]

    def ids(rows):
        return jnp.asarray([[labels.index(t) for t in r] + [0] * (7 - len(r)) for r in rows])

    weights = jnp.asarray([[1.0] * 7, [1.0] * 3 + [0.0] * 4])
    counts = entity_counts(ids(pred), ids(gold), weights, TagScheme.of(labels))
    assert entity_metrics(np.asarray(counts)) == {
        "entity_precision": 0.5, "entity_recall": 0.5, "entity_f1": 0.5}


def test_a_words_label_sits_on_its_first_token_and_long_sentences_are_cut():
    tok = ByteTokenizer()
    words = ["ab", "c", "de"]
    pieces = tok.encode_batch(["ab", " c", " de"])
    tokens, labels, weights = tagged_words(words, pieces, [3, 4, 5], 16, tok)
    assert tok.decode(tokens) == "ab c de"
    assert tokens[0] == tok.bos_id and tokens[-1] == tok.eos_id
    # <bos> a b ␣ c ␣ d e <eos>: a space token is not the word's first
    assert weights.tolist() == [0, 1, 0, 0, 1, 0, 1, 0, 0]
    assert labels[weights > 0].tolist() == [3, 4, 5]
    tokens, labels, weights = tagged_words(words, pieces, [3, 4, 5], 6, tok)
    assert len(tokens) == 6 and labels[weights > 0].tolist() == [3, 4]  # "de" does not fit


PEOPLE = ["Anna", "Bert", "Carla", "Dmitri", "Eve"]
SURNAMES = ["Smith", "Jones", "Ito"]
PLACES = ["Paris", "Oslo", "Lima", "Cairo"]
FILLER = ["the", "went", "to", "and", "saw", "a", "cat", "in", "with", "quickly"]


def ner_sentences(n, seed):
    """Sentences of lower-case filler with capitalised people (one or two words, B-PER I-PER)
    and places (B-LOC) among them."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        words, tags = [], []
        for _ in range(rng.integers(4, 9)):
            r = rng.random()
            if r < 0.2:
                words.append(str(rng.choice(PEOPLE)))
                tags.append("B-PER")
                if rng.random() < 0.5:
                    words.append(str(rng.choice(SURNAMES)))
                    tags.append("I-PER")
            elif r < 0.35:
                words.append(str(rng.choice(PLACES)))
                tags.append("B-LOC")
            else:
                words.append(str(rng.choice(FILLER)))
                tags.append("O")
        out.append({"tokens": words, "ner_tags": tags})
    return out


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def tagger_config(train, dev, **overrides):
    return tiny_config(**{"model.arch": "encoder", "objective": "token_classification",
                          "model.norm_position": "post", "data.source": f"jsonl:{train}",
                          "data.eval_source": f"jsonl:{dev}", "data.validation_fraction": 0.0,
                          "tokenizer.kind": "char", "seq_len": 64, "batch_size": 16,
                          "num_train_steps": 200, "eval_every_steps": 200,
                          "checkpoint_every_steps": 200, "log_every_steps": 50,
                          "checkpoint_best_metric": "entity_f1", **overrides})


def test_a_tagger_learns_entities_and_tags_new_sentences(tmp_path, capsys):
    """End to end: the label set is read from the training tags, the tagger reaches entity F1
    ≥ 0.9 on held-out sentences (its best kept by entity_f1), `tag` / `llmjax predict` label
    the words of a new sentence, and `llmjax eval` reports what training's last eval did."""
    from llmjax.train.loop import train_and_evaluate

    train = write_jsonl(tmp_path / "train.jsonl", ner_sentences(600, 0))
    dev = write_jsonl(tmp_path / "dev.jsonl", ner_sentences(80, 1))
    metrics = train_and_evaluate(optimised(tagger_config(train, dev)), tmp_path / "run")
    run = llmjax.load(tmp_path / "run")
    assert run.config.data.labels == "B-LOC,B-PER,I-PER,O"
    assert metrics["eval/entity_f1"] >= 0.9, metrics
    assert metrics["eval/accuracy"] >= 0.95, metrics
    assert 0 < metrics["eval/entity_precision"] <= 1 and 0 < metrics["eval/entity_recall"] <= 1
    assert (tmp_path / "run" / "best").exists()
    assert run.tag("the cat saw Eve Jones in Oslo") == [
        ("the", "O"), ("cat", "O"), ("saw", "O"), ("Eve", "B-PER"), ("Jones", "I-PER"),
        ("in", "O"), ("Oslo", "B-LOC")]
    assert run.tag(["Anna went", ""]) == [[("Anna", "B-PER"), ("went", "O")], []]
    assert run_command("predict", tmp_path / "run", capsys, text="Bert Ito saw Lima") == {
        "tags": [["Bert", "B-PER"], ["Ito", "I-PER"], ["saw", "O"], ["Lima", "B-LOC"]]}
    evaluated = run_command("eval", tmp_path / "run", capsys)
    assert evaluated["eval/entity_f1"] == pytest.approx(metrics["eval/entity_f1"], abs=1e-6)
    # predict --input: every dev sentence's words tagged, as `tag` tags them
    assert write_predictions(run, f"jsonl:{dev}", "all", tmp_path / "tags.jsonl") == 80
    rows = [json.loads(line) for line in (tmp_path / "tags.jsonl").read_text().splitlines()]
    sentences = [json.loads(line) for line in dev.read_text().splitlines()]
    tagged = run.tag([" ".join(s["tokens"]) for s in sentences[:10]])
    assert [r["tags"] for r in rows[:10]] == [[list(pair) for pair in t] for t in tagged]


def test_tags_as_indices_into_data_labels_and_bad_records(tmp_path):
    """Integer tags (what `datasets` writes for conll2003's ClassLabel) index data.labels; a
    record whose words and tags differ in number, or a tag outside the set, is a clear error."""
    from llmjax.objectives.token_classification import TokenClassification

    config = tagger_config("x", "y", **{"data.labels": "O,B-PER,I-PER"})
    objective = TokenClassification()
    objective.resolve_config(config)
    tok = ByteTokenizer()
    examples = objective.make_examples([{"tokens": json.dumps(["Anna", "Ito", "ran"]),
                                         "ner_tags": json.dumps([1, 2, 0])}], tok, config,
                                       train=True)
    batch = examples[np.arange(1)]
    assert batch["labels"][batch["weights"] > 0].tolist() == [1, 2, 0]
    with pytest.raises(DataError, match="record 0: 2 words in 'tokens' but 1 tags"):
        objective.make_examples([{"tokens": '["a", "b"]', "ner_tags": '["O"]'}], tok, config,
                                train=True)
    with pytest.raises(DataError, match="tag 'B-LOC' .* is neither in the label set"):
        objective.make_examples([{"tokens": '["Oslo"]', "ner_tags": '["B-LOC"]'}], tok, config,
                                train=True)
    with pytest.raises(DataError, match="column 'ner_tags' holds 'O', not a list"):
        objective.make_examples([{"tokens": '["a"]', "ner_tags": "O"}], tok, config, train=True)


def test_bert_for_token_classification_in_and_out(tmp_path):
    """A transformers BertForTokenClassification folder imports as a token_classification run
    with its id2label; `tag` gives the labels transformers' logits give at each word's first
    piece (words split as `is_split_into_words` splits them); exported, it reloads as the same
    model."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from test_convert_hf import bert_vocab, saved_random_model

    from llmjax.convert import hf as convert

    folder = tmp_path / "ner"
    folder.mkdir()
    vocab = bert_vocab(folder)
    labels = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]
    config = transformers.BertConfig(
        vocab_size=vocab, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=64, max_position_embeddings=64, hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0, id2label=dict(enumerate(labels)),
        label2id={n: i for i, n in enumerate(labels)})
    hf_model = saved_random_model(transformers.BertForTokenClassification, config, folder)
    convert.import_to_workdir(folder, tmp_path / "run")
    run = llmjax.load(tmp_path / "run")
    assert run.config.objective == "token_classification"
    assert run.config.data.labels == ",".join(labels)
    hf_tok = transformers.AutoTokenizer.from_pretrained(folder)
    sentences = ["two dogs play in the snow", "a man in an orange hat starring at something"]
    for sentence in sentences:
        words = sentence.split()
        encoded = hf_tok(words, is_split_into_words=True, return_tensors="pt")
        with torch.no_grad():
            logits = hf_model(**encoded).logits[0].numpy()
        word_ids = encoded.word_ids()
        firsts = [word_ids.index(k) for k in range(len(words))]
        assert run.tag(sentence) == [(w, labels[int(logits[at].argmax())])
                                     for w, at in zip(words, firsts, strict=True)]
    convert.export_workdir(tmp_path / "run", tmp_path / "exported")
    reloaded = transformers.AutoModelForTokenClassification.from_pretrained(
        tmp_path / "exported").eval()
    assert reloaded.config.architectures == ["BertForTokenClassification"]
    assert reloaded.config.id2label == dict(enumerate(labels))
    ids = hf_tok(sentences, padding=True, return_tensors="pt")
    with torch.no_grad():
        np.testing.assert_allclose(reloaded(**ids).logits.numpy(), hf_model(**ids).logits.numpy(),
                                   atol=1e-5)
