"""Extractive question answering (objective=question_answering): windows over long contexts,
span labels and predictions at word granularity, SQuAD's exact match and F1, training end to
end, the TFDS catalog's squad layout, and Hugging Face's BertForQuestionAnswering in and out."""

import json

import numpy as np
import pytest
import tensorflow_datasets as tfds
from conftest import run_command, tiny_config

import llmjax
from llmjax.configs import ConfigError
from llmjax.data import pipeline
from llmjax.data.text_builder import DataError
from llmjax.data.tokenizers import ByteTokenizer
from llmjax.evaluation.answers import answer_f1, normalize_answer, squad_metrics
from llmjax.evaluation.predictions import write_predictions
from llmjax.objectives import get_objective
from llmjax.objectives.question_answering import (
    Passage,
    best_spans,
    passage_windows,
    windows_answers,
)


def test_squad_normalisation_exact_match_and_f1():
    assert normalize_answer("The  Denver Broncos!") == "denver broncos"
    assert normalize_answer("an apple, a pear") == "apple pear"
    assert answer_f1("Denver", "the Denver Broncos") == pytest.approx(2 / 3)  # P 1, R 1/2
    assert answer_f1("Broncos Broncos", "Broncos") == pytest.approx(2 / 3)  # bags: P 1/2, R 1
    assert answer_f1("Paris", "London") == 0.0
    metrics = squad_metrics(["Denver Broncos.", "Denver", "", "Oslo"],
                            [["the Denver Broncos", "Broncos"], ["Denver Broncos"], [], []])
    # exact: 1, 0, 1 (no answer, none given), 0;  F1: 1, 2/3, 1, 0
    assert metrics == pytest.approx({"exact_match": 0.5, "f1": (1 + 2 / 3 + 1) / 4})


def qa_config(**overrides):
    return tiny_config(**{"model.arch": "encoder", "objective": "question_answering",
                          "model.norm_position": "post", "tokenizer.kind": "byte",
                          "seq_len": 32, "qa.doc_stride": 4, **overrides})


def test_long_contexts_become_overlapping_windows_with_the_answer_where_it_fits():
    tok = ByteTokenizer()
    config = qa_config(**{"qa.whole_words": False})  # every byte a token with its character
    context = "one two three four five six seven eight nine ten eleven twelve"
    start = context.index("nine")
    passage = Passage.of(" which? ", context, [("nine", start)])
    windows = passage_windows([passage], tok, config)
    a = windows.arrays
    question = [tok.bos_id, *tok.encode("which?"), tok.eos_id]  # stripped
    room = 32 - len(question) - 1  # 23 context tokens a window
    streams = []
    for row, types_, segments in zip(a["tokens"], a["token_types"], a["segment_ids"],
                                     strict=True):
        n = int(segments.sum())
        assert row[: len(question)].tolist() == question and row[n - 1] == tok.eos_id
        assert types_[:n].tolist() == [0] * len(question) + [1] * (n - len(question))
        streams.append(row[len(question): n - 1])
    # windows move on by room - doc_stride tokens and share doc_stride of them
    whole = tok.encode(context)
    assert [len(s) for s in streams[:-1]] == [room] * (len(streams) - 1)
    for k, stream in enumerate(streams):
        assert stream.tolist() == whole[k * (room - 4): k * (room - 4) + room]
    assert len(streams) == 4 and 3 * (room - 4) + len(streams[-1]) == len(whole) == 62
    # the answer's tokens (context 40..43) where a window holds all of it, else <bos> (0)
    for k, (row, s, e) in enumerate(zip(a["tokens"], a["start_positions"], a["end_positions"],
                                        strict=True)):
        holds = k * (room - 4) <= start and start + 3 < k * (room - 4) + room
        assert (tok.decode(row[s: e + 1]) == "nine") if holds else (s, e) == (0, 0), k
    assert [int(s > 0) for s in a["start_positions"]] == [0, 0, 1, 0]  # 38..60 alone
    # every context position knows its character (a space token an empty span, and no
    # start or end); the rest is -1
    for row, chars, starts in zip(a["tokens"], windows.token_chars, windows.can_start,
                                  strict=True):
        for token, (c, d), can in zip(row, chars, starts, strict=True):
            text = tok.decode([token])
            assert (c, d) == (-1, -1) or context[c:d] == (text if text != " " else "")
            assert can == (c < d)


class WholeWordBytes(ByteTokenizer):
    """Bytes that do not tell their characters (as SentencePiece): spans are whole words."""

    def encode_batch_spans(self, texts):
        return [(ids, None) for ids in self.encode_batch(texts)]


@pytest.mark.parametrize("tok, whole_words, expected", [
    (ByteTokenizer(), False, "Saxon"), (ByteTokenizer(), None, "Anglo-Saxon"),
    (WholeWordBytes(), False, "Anglo-Saxon")])
def test_an_answer_inside_a_word_labels_and_reads_back_its_own_characters(tok, whole_words,
                                                                          expected):
    """As Hugging Face's run_qa: the tokens holding the answer's first and last characters,
    read back as exactly those characters; whole words with qa.whole_words (a byte
    tokenizer's default) or where the tokenizer cannot tell its characters."""
    context = "born in Anglo-Saxon England, 1066."
    passage = Passage.of("q", context, [("Saxon", context.index("Saxon"))])
    windows = passage_windows([passage], tok, qa_config(**{"seq_len": 64,
                                                           "qa.whole_words": whole_words}))
    a = windows.arrays
    s, e = int(a["start_positions"][0]), int(a["end_positions"][0])
    assert tok.decode(a["tokens"][0, s: e + 1]) == expected  # past the space before it
    logits = np.full((1, 64, 2), -5.0, np.float32)
    logits[0, s, 0] = logits[0, e, 1] = 5.0
    assert windows_answers(windows, logits, qa_config()) == [expected]
    # a span may start or end mid-word only where the tokenizer tells its characters
    assert windows.can_start[0].sum() == (len(context.replace(" ", "")) if expected == "Saxon"
                                          else len(context.split()))


def test_best_spans_is_the_best_allowed_pair_and_no_answer_needs_the_flag():
    rng = np.random.default_rng(0)
    N, L, K = 5, 12, 3
    start, end = rng.normal(size=(N, L)), rng.normal(size=(N, L))
    can_start, can_end = rng.random((N, L)) < 0.6, rng.random((N, L)) < 0.6
    score, first, last, null = best_spans(start, end, can_start, can_end, K)
    for n in range(N):
        pairs = [(start[n, i] + end[n, j], i, j) for i in range(L) for j in range(i, i + K)
                 if j < L and can_start[n, i] and can_end[n, j]]
        best = max(pairs)
        assert (score[n], first[n], last[n]) == pytest.approx(best)
        assert null[n] == pytest.approx(start[n, 0] + end[n, 0])
    # a strong <bos> answers "no answer" only with qa.no_answer
    tok = ByteTokenizer()
    windows = passage_windows([Passage.of("q", "a b c")], tok, qa_config(), labelled=False)
    logits = np.zeros((1, 32, 2), np.float32)
    logits[0, 0] = 9.0
    assert windows_answers(windows, logits, qa_config()) != [""]
    assert windows_answers(windows, logits, qa_config(**{"qa.no_answer": True})) == [""]


def test_bad_answers_and_strides_are_clear_errors():
    objective = get_objective("question_answering")
    tok, config = ByteTokenizer(), qa_config()
    record = {"question": "q", "context": "a short context"}
    with pytest.raises(DataError, match="answer 'far away' at character 40 is not in its"):
        objective.make_examples([{**record, "answers": json.dumps(
            {"text": ["far away"], "answer_start": [40]})}], tok, config, train=True)
    with pytest.raises(DataError, match="column 'answers' holds 'short'"):
        objective.make_examples([{**record, "answers": "short"}], tok, config, train=True)
    with pytest.raises(ConfigError, match=r"qa.doc_stride=13 must be below the context room"):
        objective.resolve_config(qa_config(**{"qa.doc_stride": 13}))
    # a list of {"text", "answer_start"} reads as SQuAD's mapping does
    listed = objective.make_examples([{**record, "answers": json.dumps(
        [{"text": "short", "answer_start": 2}])}], tok, config, train=True)[np.arange(1)]
    s, e = listed["start_positions"][0], listed["end_positions"][0]
    assert tok.decode(listed["tokens"][0, s: e + 1]) == "short"


def test_squad_catalog_records_through_mock_data():
    """tfds:squad's layout: answers is a sequence feature, a mapping of arrays (bytes)."""
    rows = [{"id": b"0", "title": b"t", "question": b"who came?",
             "context": b"Then Eve came, late.",
             "answers": {"text": np.asarray([b"Eve", b"Eve came"], object),
                         "answer_start": np.asarray([5, 5], np.int32)}}] * 8
    c = qa_config(**{"data.source": "tfds:squad"})
    objective = get_objective("question_answering")
    with tfds.testing.mock_data(num_examples=8, as_data_source_fn=lambda *a, **k: rows):
        tok, _ = pipeline.get_tokenizer(c, None)
        examples = pipeline.load_examples(c, tok, objective, "tfds:squad", "train",
                                          train=True, shard=pipeline.HostShard())
    batch = examples[np.arange(2)]
    s, e = batch["start_positions"][0], batch["end_positions"][0]
    assert tok.decode(batch["tokens"][0, s: e + 1]) == "Eve"  # the first answer trains


PEOPLE = ["Anna", "Bert", "Carla", "Dmitri", "Eve"]
FILLER = ["the", "went", "to", "and", "saw", "a", "cat", "in", "with", "quickly"]


def qa_records(n, seed):
    """Contexts of filler words with one name (30% with a comma after it) and, 70% of the
    time, one number; "who?" asks for the name, "how many?" for the number (no answer when
    there is none)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        words = [str(rng.choice(FILLER)) for _ in range(rng.integers(6, 16))]
        name, number = str(rng.choice(PEOPLE)), None
        words.insert(int(rng.integers(0, len(words) + 1)), name + "," * (rng.random() < 0.3))
        if rng.random() < 0.7:
            number = str(rng.integers(10, 1000))
            words.insert(int(rng.integers(0, len(words) + 1)), number)
        question, answer = ("who?", name) if rng.random() < 0.5 else ("how many?", number)
        answers = {"text": [], "answer_start": []}
        if answer is not None:
            at = next(i for i, w in enumerate(words) if w.startswith(answer))
            answers = {"text": [answer], "answer_start": [len(" ".join(words[:at])) + (at > 0)]}
        out.append({"question": question, "context": " ".join(words), "answers": answers})
    return out


@pytest.mark.slow  # 25 s, the default suite's budget; the QA pieces have their own tests
def test_a_reader_learns_to_answer_and_answers_new_questions(tmp_path, capsys):
    """End to end on char tokens: contexts span up to three windows, the answer may be in
    any and "how many?" may have none (qa.no_answer); answers are at most 7 characters
    (qa.max_answer_tokens=8). Measured: exact match 0.99, F1 0.997 after these 300 steps
    (0.97 / 0.987 with the default max_answer_tokens, the tiny model's span ends being its
    weak point). `answer`, `llmjax predict` and `llmjax eval` answer as training's
    eval did."""
    from llmjax.train.loop import train_and_evaluate

    for name, n, seed in (("train", 800, 0), ("dev", 100, 1)):
        (tmp_path / f"{name}.jsonl").write_text(
            "".join(json.dumps(r) + "\n" for r in qa_records(n, seed)))
    config = qa_config(**{"data.source": f"jsonl:{tmp_path / 'train.jsonl'}",
                          "data.eval_source": f"jsonl:{tmp_path / 'dev.jsonl'}",
                          "data.validation_fraction": 0.0, "tokenizer.kind": "char",
                          "seq_len": 64, "qa.doc_stride": 16, "qa.no_answer": True,
                          "qa.max_answer_tokens": 8,
                          "model.emb_dim": 64, "model.mlp_dim": 256, "batch_size": 16,
                          "optimizer.learning_rate": 3e-3, "num_train_steps": 300,
                          "eval_every_steps": 300, "checkpoint_every_steps": 300,
                          "log_every_steps": 100, "checkpoint_best_metric": "exact_match"})
    metrics = train_and_evaluate(config, tmp_path / "run")
    assert metrics["eval/exact_match"] >= 0.85 and metrics["eval/f1"] >= 0.9, metrics
    assert (tmp_path / "run" / "best").exists()
    run = llmjax.load(tmp_path / "run")
    assert run.prediction == "answer"
    long = "the cat went to a cat in the and with quickly to saw a cat went to and 42 Carla"
    assert len(run.tokenizer.encode(long)) > 64 - 8  # two windows; the answers in the second
    assert run.answer("who?", long) == "Carla" and run.answer("how many?", long) == "42"
    assert run.answer(["who?", "how many?"], ["a cat saw Eve, quickly", "a cat saw Eve"]) == [
        "Eve,", ""]
    assert run_command("predict", tmp_path / "run", capsys, text="who?",
                       text_pair="Anna went to the cat") == {"answer": "Anna"}
    evaluated = run_command("eval", tmp_path / "run", capsys)
    assert evaluated["eval/exact_match"] == pytest.approx(metrics["eval/exact_match"])
    assert evaluated["eval/f1"] == pytest.approx(metrics["eval/f1"])
    # predict --input: every dev question answered; scored, the file gives eval's figures
    dev = tmp_path / "dev.jsonl"
    assert write_predictions(run, f"jsonl:{dev}", "all", tmp_path / "answers.jsonl") == 100
    answers = [json.loads(line)["answer"] for line in
               (tmp_path / "answers.jsonl").read_text().splitlines()]
    records = [json.loads(line) for line in dev.read_text().splitlines()]
    assert answers[:5] == run.answer([r["question"] for r in records[:5]],
                                     [r["context"] for r in records[:5]])
    scored = squad_metrics(answers, [r["answers"]["text"] for r in records])
    assert scored == pytest.approx({"exact_match": metrics["eval/exact_match"],
                                    "f1": metrics["eval/f1"]})


def test_bert_for_question_answering_in_and_out(tmp_path):
    """A transformers BertForQuestionAnswering folder imports as a question_answering run:
    its windows are the tokenizer's (question, context) ids, its start / end logits are
    transformers', and `answer` reads out the span run_qa's post-processing picks (any
    context tokens, word pieces too, read back through the offsets); exported, it reloads
    as the same model."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from test_convert_hf import bert_vocab, saved_random_model

    from llmjax.api import _token_class_logits
    from llmjax.convert import hf as convert

    folder = tmp_path / "qa"
    folder.mkdir()
    config = transformers.BertConfig(
        vocab_size=bert_vocab(folder), hidden_size=32, num_hidden_layers=2,
        num_attention_heads=4, intermediate_size=64, max_position_embeddings=64,
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    hf_model = saved_random_model(transformers.BertForQuestionAnswering, config, folder)
    convert.import_to_workdir(folder, tmp_path / "run")
    run = llmjax.load(tmp_path / "run")
    assert run.config.objective == "question_answering"
    hf_tok = transformers.AutoTokenizer.from_pretrained(folder)
    question, context = "who plays in the snow?", "two dogs play in the snowfields, quixotic"
    encoded = hf_tok(question, context, return_tensors="pt", return_offsets_mapping=True)
    offsets = encoded.pop("offset_mapping")[0].numpy()
    with torch.no_grad():
        out = hf_model(**encoded)
    theirs = np.stack([out.start_logits[0].numpy(), out.end_logits[0].numpy()], -1)
    windows = passage_windows([Passage.of(question, context)], run.tokenizer, run.config,
                              labelled=False)
    n = theirs.shape[0]
    assert len(windows.arrays["tokens"]) == 1
    np.testing.assert_array_equal(windows.arrays["tokens"][0, :n], encoded["input_ids"][0])
    np.testing.assert_array_equal(windows.arrays["token_types"][0, :n],
                                  encoded["token_type_ids"][0])
    ours = run._apply(_token_class_logits, *(windows.arrays[k] for k in
                                            ("tokens", "token_types", "segment_ids")),
                      positions=n)[0]
    np.testing.assert_allclose(ours, theirs, atol=1e-5)
    # run_qa's answer: the best span of context tokens (word pieces included), its offsets
    assert any(t.startswith("##") for t in hf_tok.convert_ids_to_tokens(encoded["input_ids"][0]))
    in_context = np.asarray(encoded.sequence_ids(0)) == 1
    _, first, last, _ = best_spans(theirs[None, :, 0], theirs[None, :, 1], in_context[None],
                                   in_context[None], 30)
    expected = context[offsets[first[0], 0]: offsets[last[0], 1]]
    assert run.answer(question, context) == expected and expected.strip() == expected
    # every span of context tokens reads back as transformers' offsets read it
    positions = np.flatnonzero(in_context)
    for i in positions:
        for j in positions[positions >= i]:
            peaked = np.full((1, run.config.seq_len, 2), -9.0, np.float32)
            peaked[0, i, 0] = peaked[0, j, 1] = 9.0
            assert windows_answers(windows, peaked, run.config) == [
                context[offsets[i, 0]: offsets[j, 1]]], (i, j)
    convert.export_workdir(tmp_path / "run", tmp_path / "exported")
    reloaded = transformers.AutoModelForQuestionAnswering.from_pretrained(
        tmp_path / "exported").eval()
    assert reloaded.config.architectures == ["BertForQuestionAnswering"]
    with torch.no_grad():
        again = reloaded(**encoded)
    np.testing.assert_allclose(again.start_logits.numpy(), out.start_logits.numpy(), atol=1e-5)
    np.testing.assert_allclose(again.end_logits.numpy(), out.end_logits.numpy(), atol=1e-5)
