"""What the sentence(-pair) objectives (classification, regression, NSP) share: examples of
packed pairs with a label, their padding example, the model pass over them (an encoder's pooled
[CLS] state, a decoder's last token), and what a fine-tuning task on that state declares."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import jax
import ml_collections
import numpy as np

from llmjax.data.packing import pack_pair
from llmjax.data.sources import column_text, iter_record_blocks
from llmjax.data.tokenizers import Tokenizer


class FineTuningTask:
    """A task head on the pooled state (an encoder's [CLS], a decoder's last token), fine-tuned
    from a pretraining run."""

    vocab_positions = staticmethod(lambda seq_len: 0)  # FLOP count: no vocabulary projection
    fresh_modules = ("classifier",)  # a fine-tuning run never restores the task head
    optional_modules = ("pooler",)  # restored when the pretraining run had one (NSP)
    prediction = "label"  # what `llmjax predict` prints: a label with probabilities, or a score
    predicts_tokens = False  # its model has no language-model head (a decoder's is left out)


class ArrayExamples:
    """Examples held as arrays with a leading example axis."""

    def __init__(self, arrays: dict[str, np.ndarray]):
        self.arrays = arrays

    def __len__(self) -> int:
        return len(next(iter(self.arrays.values())))

    def shard(self, index: int, count: int) -> ArrayExamples:
        n = len(self)
        return ArrayExamples({k: v[n * index // count: n * (index + 1) // count]
                              for k, v in self.arrays.items()})

    def __getitem__(self, indices: np.ndarray) -> dict[str, np.ndarray]:
        return {k: v[indices] for k, v in self.arrays.items()}

    def padding_example(self) -> dict[str, np.ndarray]:
        """An all-zero example: with weights 0 it contributes nothing."""
        return {k: np.zeros(v.shape[1:], v.dtype) for k, v in self.arrays.items()}


def encoded_pair_examples(records: Sequence[dict], tokenizer: Tokenizer,
                          config: ml_collections.ConfigDict,
                          parse_label: Callable[[str, int], float],
                          label_dtype: type = np.int32) -> ArrayExamples:
    """labelled_pairs of `records`: data.text_column (and data.text_pair_column) packed by
    packing.pack_pair, the label `parse_label(label column text, record index)`. Records are
    read and tokenized a block at a time (one batched tokenizer call per column)."""
    d = config.data

    def items():
        for start, block in iter_record_blocks(records):
            labels = [parse_label(column_text(r, d.label_column).strip(), start + j)
                      for j, r in enumerate(block)]
            firsts = tokenizer.encode_batch([column_text(r, d.text_column) for r in block])
            seconds = (tokenizer.encode_batch([column_text(r, d.text_pair_column)
                                               for r in block])
                       if d.text_pair_column else [None] * len(block))
            for a, b, label in zip(firsts, seconds, labels, strict=True):
                yield (*pack_pair(a, b, config.seq_len, tokenizer), label)

    return labelled_pairs(items(), len(records), config.seq_len, label_dtype)


def labelled_pairs(items: Iterable[tuple[np.ndarray, np.ndarray, float]], count: int,
                   seq_len: int, label_dtype: type = np.int32) -> ArrayExamples:
    """ArrayExamples {tokens, token_types, segment_ids [N, L], label, weights [N]} from `count`
    items of (tokens, token types, label) as packing.pack_pair makes them; segment_ids are 1 at
    the tokens and 0 at the padding (whatever the tokenizer's padding id)."""
    arrays = {"tokens": np.zeros((count, seq_len), np.int32),
              "token_types": np.zeros((count, seq_len), np.int32),
              "segment_ids": np.zeros((count, seq_len), np.int32),
              "label": np.zeros((count,), label_dtype),
              "weights": np.ones((count,), np.float32)}
    for i, (tokens, types, label) in enumerate(items):
        arrays["tokens"][i, : len(tokens)] = tokens
        arrays["token_types"][i, : len(types)] = types
        arrays["segment_ids"][i, : len(tokens)] = 1
        arrays["label"][i] = label
    return ArrayExamples(arrays)


def padding_pair(seq_len: int, label_dtype: type = np.int32) -> dict[str, np.ndarray]:
    zeros = np.zeros((seq_len,), np.int32)
    return {"tokens": zeros, "token_types": zeros, "segment_ids": zeros,
            "label": np.zeros((), label_dtype),
            "weights": np.zeros((), np.float32)}


def class_logits(model, batch: dict[str, jax.Array], rng: jax.Array | None) -> jax.Array:
    """The task head's logits [B, C] of a batch of packed pairs: an encoder's from its pooled
    [CLS] state, a decoder's from each row's last token."""
    return model.classify(batch["tokens"], token_types=batch["token_types"],
                          segment_ids=batch["segment_ids"], rng=rng)


def encode(model, batch: dict[str, jax.Array], rng: jax.Array | None,
           tokens_key: str = "tokens") -> jax.Array:
    """The encoder's hidden states [B, L, D] of a batch of packed pairs."""
    return model.hidden_states(batch[tokens_key], token_types=batch["token_types"],
                               segment_ids=batch["segment_ids"], rng=rng)
