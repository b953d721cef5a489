"""Token classification (named entities, part-of-speech tags, chunks): a label for every word
of a pre-split sentence, predicted from the encoder's state of the word's first token, as
Hugging Face's run_ner does (the other pieces of a word, and the special tokens, are not
trained or scored).

Records hold the words (`data.tokens_column`, a list) and their tags (`data.tags_column`, a
list of label names, or of indices into `data.labels`). Example layout: `tokens`,
`token_types`, `segment_ids` [L] as for classification ([<bos>] words [<eos>], each word after
the first tokenized with the space before it); `labels` [L] and `weights` [L], 1 at each word's
first token (the space before a word, when the tokenizer makes it a token of its own — char,
byte, a lone SentencePiece "▁" — is not the word's: its next token is). Words past `seq_len`
are cut (and not scored).

The label set is read from the training split once (sorted) and recorded as `data.labels`.
Metrics: loss and accuracy per word, and entity precision / recall / F1 (evaluation/
entities.py: conlleval's chunks of IOB1, IOB2, IOE or IOBES tags).
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from llmjax.data.sources import (
    as_text,
    column_list,
    iter_record_blocks,
    iter_records,
    open_split,
)
from llmjax.data.text_builder import DataError
from llmjax.data.tokenizers import Tokenizer
from llmjax.evaluation.entities import TagScheme, entity_counts
from llmjax.objectives.base import (
    NO_REGULARIZERS,
    MetricSums,
    Regularizers,
    cross_entropy,
    texts_up_to,
)
from llmjax.objectives.classification import _label_order, label_names
from llmjax.objectives.pairs import ArrayExamples, FineTuningTask, encode


def words_and_tags(record: dict, config: ml_collections.ConfigDict, index: int
                   ) -> tuple[list[str], list[str]]:
    """A record's words and tags (as text), as many of each."""
    d = config.data
    words, tags = column_list(record, d.tokens_column), column_list(record, d.tags_column)
    for column, value in ((d.tokens_column, words), (d.tags_column, tags)):
        if value is None:
            raise DataError(f"record {index}: column {column!r} holds {record[column]!r}, not "
                            "a list (a JSON list in a jsonl: file)")
    if len(words) != len(tags):
        raise DataError(f"record {index}: {len(words)} words in {d.tokens_column!r} but "
                        f"{len(tags)} tags in {d.tags_column!r}; give every word one tag")
    return [as_text(w) for w in words], [as_text(t).strip() for t in tags]


def word_pieces(sentences: Sequence[Sequence[str]], tokenizer: Tokenizer,
                first_space: bool | None = None) -> list[list[np.ndarray]]:
    """Each sentence's words' tokens, the words after the first with the space before them,
    the first too when `first_space` (None: tokenizer.words_take_prefix_space), as
    `is_split_into_words` tokenizes them; one tokenizer call for all."""
    if first_space is None:
        first_space = tokenizer.words_take_prefix_space
    pieces = iter(tokenizer.encode_batch([w if k == 0 and not first_space else " " + w
                                          for words in sentences
                                          for k, w in enumerate(words)]))
    return [[next(pieces) for _ in words] for words in sentences]


def space_token(tokenizer: Tokenizer) -> int | None:
    """The token of a lone space, if the tokenizer has one (char, byte, byte-level BPE)."""
    ids = tokenizer.encode_array(" ")
    return int(ids[0]) if len(ids) == 1 else None


def first_piece(pieces: np.ndarray, space: int | None) -> int:
    """Index of a word's own first token among its pieces: past the space before it when
    that space is a token of its own."""
    return int(len(pieces) > 1 and pieces[0] == space)


def tagged_words(words: Sequence[str], pieces_of_words: Sequence[np.ndarray],
                 labels: Sequence[int], seq_len: int, tokenizer: Tokenizer
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(tokens, labels, weights) [<= seq_len] of one sentence: <bos>, each word's pieces,
    <eos>; a word's label at its first token (weight 1), past a space token of its own, except
    where words take a prefix space (byte-level BPE: transformers' word_ids give the word a
    lone 'Ġ', and its label); the words that do not fit cut."""
    space = None if tokenizer.words_take_prefix_space else space_token(tokenizer)
    tokens, out_labels, weights = [tokenizer.bos_id], [0], [0.0]
    for pieces, label in zip(pieces_of_words, labels, strict=True):
        if len(tokens) + len(pieces) > seq_len - 1:
            break
        if len(pieces):  # a word of no tokens (say, a lone control character) is not scored
            at = len(tokens) + first_piece(pieces, space)
            tokens += pieces.tolist()
            out_labels += [0] * len(pieces)
            weights += [0.0] * len(pieces)
            out_labels[at], weights[at] = label, 1.0
    tokens.append(tokenizer.eos_id)
    out_labels.append(0)
    weights.append(0.0)
    return (np.asarray(tokens, np.int32), np.asarray(out_labels, np.int32),
            np.asarray(weights, np.float32))


class TokenClassification(FineTuningTask):
    name = "token_classification"
    optional_modules = ()  # no pooler: a pretraining run's is left behind
    prediction = "tags"  # `llmjax predict`: a tag per word (Run.tag)

    def __init__(self):
        self.scheme: TagScheme | None = None  # set by resolve_config

    def resolve_config(self, config: ml_collections.ConfigDict) -> None:
        """Fills data.labels (every tag of the training split) and model.num_classes, and
        reads the tag scheme the entity metrics need."""
        if config.data.labels is None:
            records = open_split(config.data.source, config.data.train_split, config)
            values = set()
            for i, record in enumerate(iter_records(records)):
                values.update(words_and_tags(record, config, i)[1])
            config.data.labels = ",".join(sorted(values, key=_label_order))
        config.model.num_classes = len(label_names(config))
        self.scheme = TagScheme.of(label_names(config))

    def model_kwargs(self, config: ml_collections.ConfigDict) -> dict:
        return {"heads": ("token_classifier",), "num_classes": len(label_names(config))}

    def tokenizer_texts(self, records: Sequence[dict], config: ml_collections.ConfigDict,
                        limit_chars: int) -> list[str]:
        return texts_up_to(([" ".join(words_and_tags(r, config, i)[0])]
                            for i, r in enumerate(iter_records(records))), limit_chars)

    def make_examples(self, records: Sequence[dict], tokenizer: Tokenizer,
                      config: ml_collections.ConfigDict, *, train: bool) -> ArrayExamples:
        names = label_names(config)
        index = {name: i for i, name in enumerate(names)}

        def label_of(tag: str, record: int) -> int:
            if tag in index:
                return index[tag]
            if tag.isdigit() and int(tag) < len(names):  # an index into data.labels
                return int(tag)
            raise DataError(f"tag {tag!r} (record {record}) is neither in the label set "
                            f"{names} nor an index into it; an eval source needs the training "
                            "set's tags (set data.labels to name them all)")

        L = config.seq_len
        arrays = {name: np.zeros((len(records), L), np.int32)
                  for name in ("tokens", "token_types", "segment_ids", "labels")}
        arrays["weights"] = np.zeros((len(records), L), np.float32)
        for start, block in iter_record_blocks(records):
            sentences = [words_and_tags(r, config, start + j) for j, r in enumerate(block)]
            block_pieces = word_pieces([words for words, _ in sentences], tokenizer)
            for j, ((words, tags), pieces) in enumerate(zip(sentences, block_pieces,
                                                            strict=True)):
                i = start + j
                tokens, labels, weights = tagged_words(
                    words, pieces, [label_of(t, i) for t in tags], L, tokenizer)
                n = len(tokens)
                arrays["tokens"][i, :n], arrays["segment_ids"][i, :n] = tokens, 1
                arrays["labels"][i, :n], arrays["weights"][i, :n] = labels, weights
        return ArrayExamples(arrays)

    def padding_example(self, seq_len: int) -> dict[str, np.ndarray]:
        zeros = np.zeros((seq_len,), np.int32)
        return {"tokens": zeros, "token_types": zeros, "segment_ids": zeros, "labels": zeros,
                "weights": np.zeros((seq_len,), np.float32)}

    def loss(self, model, batch: dict[str, jax.Array], rng: jax.Array | None,
             regularizers: Regularizers = NO_REGULARIZERS) -> MetricSums:
        if self.scheme is None:
            raise RuntimeError("token_classification: call resolve_config(config) first (it "
                               "reads the label set the entity metrics need)")
        logits = model.token_class_logits(encode(model, batch, rng), rng)
        labels, weights = batch["labels"], batch["weights"]
        loss_sum = (cross_entropy(logits, labels, regularizers) * weights).sum()
        predicted = logits.argmax(-1)
        count = weights.sum()
        return {"loss": (loss_sum, count),
                "accuracy": (((predicted == labels) * weights).sum(), count),
                "entities": (entity_counts(predicted, labels, weights, self.scheme),
                             jnp.ones(()))}
