"""Extractive question answering (SQuAD 1.1 / 2.0): the answer is a span of the context,
predicted as a start and an end token from the encoder's states, as BERT and Hugging Face's
run_qa do.

Records hold a question (`data.question_column`), a context (`data.context_column`) and its
answers (`data.answers_column`: `{"text": [...], "answer_start": [...]}` as SQuAD, TFDS and
`datasets` give them, or a list of `{"text", "answer_start"}`; empty: no answer). Example
layout, one row per window of the context: `tokens`, `token_types`, `segment_ids` [L] =
[<bos>] question [<eos>] context window [<eos>] (types 0, then 1 from the window on; between
question and context the tokenizer's pair separator, RoBERTa's [</s>, </s>]);
`start_positions`, `end_positions` (the first answer's first and last token, or 0 — the
<bos> — when the window does not hold all of it, or there is none) and `weights` (1).

The context is split at whitespace into words, each tokenized with the space before it (as
token classification does), so every context token belongs to one word and knows its
characters in the context (Tokenizer.encode_batch_spans); a context longer than a window is
cut into windows of `seq_len - question - 3` tokens (RoBERTa's: - 4) that overlap by
`qa.doc_stride` tokens (default a quarter of seq_len). The question keeps at most half the
sequence. As Hugging Face's run_qa, an answer starts at the token holding its first character
and ends at the token holding its last, and a predicted span is read back as the context's
characters from its first token's start to its last token's end, so an answer inside a word
("Saxon" of "Anglo-Saxon") is itself; a space token of its own neither starts nor ends one.
With `qa.whole_words` (by default for char and byte tokenizers, whose tokens are characters
already and for which word boundaries are the prior a small model needs), or a tokenizer that
cannot tell its tokens' characters (SentencePiece), spans are whole words: they start at a
word's first token and end at a word's last.

Loss: the mean of the start and end cross-entropies per window. Answers: each window's best
span by start + end logit among those that start and end at context tokens (as above) and
hold at most `qa.max_answer_tokens` tokens; a question's answer is its best
window's; with `qa.no_answer` (SQuAD 2.0) it is empty when the smallest "no answer" score
(<bos>'s start + end logit) beats it. Metrics (evaluation/spans.py): exact match and F1
(evaluation/answers.py).
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from llmjax.data.sources import as_text, column_text, iter_record_blocks, iter_records
from llmjax.data.text_builder import DataError
from llmjax.data.tokenizers import Tokenizer
from llmjax.objectives.base import NO_REGULARIZERS, MetricSums, Regularizers, cross_entropy
from llmjax.objectives.pairs import ArrayExamples, FineTuningTask, encode
from llmjax.objectives.token_classification import first_piece, space_token

_WORD = re.compile(r"\S+")


@dataclasses.dataclass(frozen=True)
class Passage:
    """One record: its question, context, reference answers (text, character offset) and the
    context's words as character spans [W, 2] (start, end)."""

    question: str
    context: str
    answers: tuple[tuple[str, int], ...]
    word_spans: np.ndarray

    @classmethod
    def of(cls, question: str, context: str, answers: Sequence[tuple[str, int]] = ()
           ) -> Passage:
        spans = np.asarray([m.span() for m in _WORD.finditer(context)], np.int64).reshape(-1, 2)
        return cls(question.strip(), context, tuple(answers), spans)

    @property
    def words(self) -> list[str]:
        return [self.context[s:e] for s, e in self.word_spans]

    def answer_chars(self, index: int) -> tuple[int, int]:
        """The characters [start, end) of the `index`-th record's first answer, checked."""
        text, start = self.answers[0]
        end = start + len(text)
        if not text.strip() or start < 0 or end > len(self.context) or \
                not self.context[start:end].strip():
            raise DataError(f"record {index}: answer {text!r} at character {start} is not in "
                            f"its context ({len(self.context)} characters); answer_start counts "
                            "characters from the context's start")
        return start, end


def record_answers(record: dict, column: str, index: int) -> list[tuple[str, int]]:
    """A record's (text, answer_start) pairs: a {text: [...], answer_start: [...]} mapping (a
    TFDS / `datasets` feature, or JSON text in a jsonl: file) or a list of such mappings."""
    column_text(record, column)  # the error naming the columns, when it is missing
    value = record[column]
    if isinstance(value, (bytes, str)):
        try:
            value = json.loads(as_text(value))
        except json.JSONDecodeError:
            value = None
    if isinstance(value, dict) and {"text", "answer_start"} <= set(value):
        texts, starts = list(value["text"]), list(value["answer_start"])
    elif isinstance(value, (list, tuple)) and all(isinstance(a, dict) for a in value):
        texts = [a.get("text") for a in value]
        starts = [a.get("answer_start") for a in value]
    else:
        texts = starts = None
    if texts is None or len(texts) != len(starts) or None in texts or None in starts:
        raise DataError(f"record {index}: column {column!r} holds {record[column]!r}; give "
                        '{"text": [...], "answer_start": [...]} (SQuAD\'s answers)')
    return [(as_text(t), int(s)) for t, s in zip(texts, starts, strict=True)]


def record_passage(record: dict, config: ml_collections.ConfigDict, index: int) -> Passage:
    d = config.data
    return Passage.of(column_text(record, d.question_column),
                      column_text(record, d.context_column),
                      record_answers(record, d.answers_column, index))


def whole_words(config: ml_collections.ConfigDict, tokenizer: Tokenizer) -> bool:
    """qa.whole_words, or by default: whole words for char and byte tokenizers."""
    chosen = config.qa.whole_words
    return tokenizer.kind in ("char", "byte") if chosen is None else chosen


def max_question_tokens(seq_len: int) -> int:
    return seq_len // 2


def doc_stride(config: ml_collections.ConfigDict) -> int:
    """qa.doc_stride, checked: a window moves on by (room for context - doc_stride) tokens,
    which must be positive even beside the longest question. None: a quarter of seq_len (128
    at 512, as Hugging Face's run_qa beside BERT's longest input)."""
    stride = config.qa.doc_stride
    stride = config.seq_len // 4 if stride is None else stride
    room = config.seq_len - max_question_tokens(config.seq_len) - 4  # RoBERTa: 2 separators
    if stride >= room:
        from llmjax.configs import ConfigError

        raise ConfigError(f"qa.doc_stride={stride} must be below the context room of a window "
                          f"beside the longest question ({room} tokens at seq_len="
                          f"{config.seq_len}): lower qa.doc_stride or raise seq_len")
    return stride


@dataclasses.dataclass
class Windows:
    """Every window of some passages: `arrays` (the examples, [N, L] and [N]),
    `passage_of` [N] (each window's passage), `token_chars` [N, L, 2] (each position's
    characters [start, end) in its passage's context, -1 outside the context), and where a
    predicted span may start and end [N, L]."""

    arrays: dict[str, np.ndarray]
    passage_of: np.ndarray
    token_chars: np.ndarray
    can_start: np.ndarray
    can_end: np.ndarray
    passages: list[Passage]


@dataclasses.dataclass
class _Context:
    """A context tokenized word by word: tokens [T], their characters [T, 2] and where a
    span may start and end [T]."""

    tokens: np.ndarray
    chars: np.ndarray
    can_start: np.ndarray
    can_end: np.ndarray

    def answer_tokens(self, start: int, end: int) -> tuple[int, int]:
        """(first, last) token of the answer at characters [start, end): the first token
        that may start a span and ends past `start`, the last that may end one and starts
        before `end`."""
        first = np.flatnonzero(self.can_start & (self.chars[:, 1] > start))
        last = np.flatnonzero(self.can_end & (self.chars[:, 0] < end))
        if not len(first) or not len(last) or first[0] > last[-1]:
            raise DataError(f"the answer at characters {start}..{end} holds no token of its "
                            "context (its words tokenize to nothing)")
        return int(first[0]), int(last[-1])


def _context_tokens(passage: Passage, pieces: Sequence[tuple[np.ndarray, np.ndarray | None]],
                    space: int | None) -> _Context:
    """`passage`'s context from its words' (ids, character spans or None) as tokenized with
    the space before every word but the first (see the module docstring)."""
    tokens, chars, can_start, can_end = [], [], [], []
    for k, ((ids, spans), (word_start, word_end)) in enumerate(zip(pieces, passage.word_spans,
                                                                   strict=True)):
        n = len(ids)
        if spans is None:  # whole words: from the first token past a space to the last
            spans = np.tile([word_start, word_end], (n, 1))
            first = np.arange(n) == first_piece(ids, space)
            starts, ends = first, np.arange(n) == n - 1
        else:  # spans in " word" (in "word" for the first): into the context, the space cut
            spans = np.clip(spans + word_start - (k > 0), word_start, word_end)
            starts = ends = spans[:, 0] < spans[:, 1]
        tokens.append(np.asarray(ids, np.int32))
        chars.append(np.asarray(spans, np.int64).reshape(n, 2))
        can_start.append(starts)
        can_end.append(ends)
    if not tokens:
        return _Context(np.zeros(0, np.int32), np.zeros((0, 2), np.int64), np.zeros(0, bool),
                        np.zeros(0, bool))
    return _Context(np.concatenate(tokens), np.concatenate(chars), np.concatenate(can_start),
                    np.concatenate(can_end))


def passage_windows(passages: Sequence[Passage], tokenizer: Tokenizer,
                    config: ml_collections.ConfigDict, *, labelled: bool = True) -> Windows:
    """The windows of `passages` (see the module docstring); `labelled`: positions of the
    first answer (else all 0, as for a question to answer)."""
    L, stride = config.seq_len, doc_stride(config)
    space = space_token(tokenizer)
    questions = tokenizer.encode_batch([p.question for p in passages])
    # the context reads as running text after the question, its first word with no space
    # before it (transformers' tokenizer(question, context))
    encoded = iter(tokenizer.encode_batch_spans([w if k == 0 else " " + w for p in passages
                                                 for k, w in enumerate(p.words)]))
    if whole_words(config, tokenizer):
        encoded = ((ids, None) for ids, _ in encoded)
    rows: dict[str, list] = {k: [] for k in ("tokens", "token_types", "start_positions",
                                            "end_positions", "passage_of", "token_chars",
                                            "can_start", "can_end")}
    for index, (passage, question) in enumerate(zip(passages, questions, strict=True)):
        question = question[: max_question_tokens(L)]
        context = _context_tokens(passage, [next(encoded) for _ in passage.word_spans], space)
        tokens = context.tokens
        answer = None
        if labelled and passage.answers:
            answer = context.answer_tokens(*passage.answer_chars(index))
        head = [tokenizer.bos_id, *question.tolist(), *tokenizer.pair_separator]
        room = L - len(head) - 1
        offset = 0
        while True:
            piece = slice(offset, offset + room)
            n = len(tokens[piece])
            rows["tokens"].append([*head, *tokens[piece].tolist(), tokenizer.eos_id])
            rows["token_types"].append([0] * len(head) + [1] * (n + 1))
            rows["token_chars"].append([(-1, -1)] * len(head) + context.chars[piece].tolist()
                                       + [(-1, -1)])
            for key, mask in (("can_start", context.can_start), ("can_end", context.can_end)):
                rows[key].append([False] * len(head) + mask[piece].tolist() + [False])
            inside = answer is not None and offset <= answer[0] and answer[1] < offset + room
            at = len(head) - offset
            rows["start_positions"].append(answer[0] + at if inside else 0)
            rows["end_positions"].append(answer[1] + at if inside else 0)
            rows["passage_of"].append(index)
            if offset + room >= len(tokens):
                break
            offset += room - stride
    N = len(rows["tokens"])
    arrays = {"tokens": np.full((N, L), tokenizer.pad_id, np.int32),
              "token_types": np.zeros((N, L), np.int32),
              "segment_ids": np.zeros((N, L), np.int32),
              "start_positions": np.asarray(rows["start_positions"], np.int32).reshape(N),
              "end_positions": np.asarray(rows["end_positions"], np.int32).reshape(N),
              "weights": np.ones((N,), np.float32)}
    token_chars = np.full((N, L, 2), -1, np.int64)
    can_start, can_end = np.zeros((N, L), bool), np.zeros((N, L), bool)
    for i, tokens in enumerate(rows["tokens"]):
        n = len(tokens)
        arrays["tokens"][i, :n], arrays["token_types"][i, :n] = tokens, rows["token_types"][i]
        arrays["segment_ids"][i, :n] = 1
        token_chars[i, :n] = rows["token_chars"][i]
        can_start[i, :n], can_end[i, :n] = rows["can_start"][i], rows["can_end"][i]
    return Windows(arrays, np.asarray(rows["passage_of"], np.int64).reshape(N), token_chars,
                   can_start, can_end, list(passages))


def best_spans(start_logits: np.ndarray, end_logits: np.ndarray, can_start: np.ndarray,
               can_end: np.ndarray, max_answer_tokens: int
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Each window's best span: (score, start, end, no-answer score), each [N], from start and
    end logits [N, L]; a span starts where `can_start` and ends where `can_end` [N, L],
    start <= end, at most `max_answer_tokens` long. A window without one scores -inf."""
    N, L = start_logits.shape
    K = min(max_answer_tokens, L)
    ends = np.arange(L)[:, None] + np.arange(K)[None, :]  # [L, K]: start i, length k + 1
    valid = ends < L
    ends = np.minimum(ends, L - 1)
    allowed = can_start[:, :, None] & can_end[:, ends] & valid[None]  # [N, L, K]
    scores = np.where(allowed, start_logits[:, :, None] + end_logits[:, ends], -np.inf)
    flat = scores.reshape(N, L * K).argmax(-1)
    start, length = np.divmod(flat, K)
    score = scores.reshape(N, L * K)[np.arange(N), flat]
    return score, start, start + length, start_logits[:, 0] + end_logits[:, 0]


def windows_answers(windows: Windows, logits: np.ndarray, config: ml_collections.ConfigDict
                    ) -> list[str]:
    """Each passage's answer from its windows' start / end logits [N, L, 2] ('' for no
    answer, only with qa.no_answer)."""
    logits = np.asarray(logits, np.float32)
    score, start, end, null = best_spans(logits[..., 0], logits[..., 1], windows.can_start,
                                         windows.can_end, config.qa.max_answer_tokens)
    answers = []
    for index, passage in enumerate(windows.passages):
        mine = np.flatnonzero(windows.passage_of == index)
        best = mine[np.argmax(score[mine])]
        if (config.qa.no_answer and null[mine].min() > score[best]) or score[best] == -np.inf:
            answers.append("")
            continue
        chars = windows.token_chars[best]
        answers.append(passage.context[chars[start[best], 0]: chars[end[best], 1]])
    return answers


def read_passages(records: Sequence[dict], config: ml_collections.ConfigDict) -> list[Passage]:
    return [record_passage(r, config, start + j) for start, block in iter_record_blocks(records)
            for j, r in enumerate(block)]


class QuestionAnswering(FineTuningTask):
    name = "question_answering"
    optional_modules = ()  # no pooler: a pretraining run's is left behind
    prediction = "answer"  # `llmjax predict`: the answer to --text (question) in --text_pair

    @staticmethod
    def host_eval() -> type:
        """What evaluation adds on the host: every eval question answered, exact match, F1."""
        from llmjax.evaluation.spans import SpanEval

        return SpanEval

    def resolve_config(self, config: ml_collections.ConfigDict) -> None:
        config.model.num_classes = 2  # the start and end logit of every token
        doc_stride(config)

    def model_kwargs(self, config: ml_collections.ConfigDict) -> dict:
        return {"heads": ("token_classifier",), "num_classes": 2}

    def tokenizer_texts(self, records: Sequence[dict], config: ml_collections.ConfigDict,
                        limit_chars: int) -> list[str]:
        d, texts, chars = config.data, [], 0
        for record in iter_records(records):
            texts += [column_text(record, d.question_column), column_text(record, d.context_column)]
            chars += len(texts[-1]) + len(texts[-2])
            if chars >= limit_chars:
                break
        return texts

    def make_examples(self, records: Sequence[dict], tokenizer: Tokenizer,
                      config: ml_collections.ConfigDict, *, train: bool) -> ArrayExamples:
        return ArrayExamples(passage_windows(read_passages(records, config), tokenizer,
                                             config).arrays)

    def padding_example(self, seq_len: int) -> dict[str, np.ndarray]:
        zeros = np.zeros((seq_len,), np.int32)
        return {"tokens": zeros, "token_types": zeros, "segment_ids": zeros,
                "start_positions": np.zeros((), np.int32), "end_positions": np.zeros((), np.int32),
                "weights": np.zeros((), np.float32)}

    def loss(self, model, batch: dict[str, jax.Array], rng: jax.Array | None,
             regularizers: Regularizers = NO_REGULARIZERS) -> MetricSums:
        logits = model.token_class_logits(encode(model, batch, rng), rng)  # [B, L, 2]
        padding = (batch["segment_ids"] == 0)[..., None]
        logits = jnp.where(padding, -1e9, logits.astype(jnp.float32))  # never a padding position
        logits = jnp.moveaxis(logits, -1, 1)  # [B, 2, L]: start, end
        targets = jnp.stack([batch["start_positions"], batch["end_positions"]], axis=1)
        per_window = cross_entropy(logits, targets, regularizers).mean(-1)  # [B]
        predicted = logits.argmax(-1)
        weights = batch["weights"]
        exact = (predicted == targets).all(-1)
        count = weights.sum()
        return {"loss": ((per_window * weights).sum(), count),
                "span_accuracy": ((exact * weights).sum(), count)}
