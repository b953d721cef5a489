"""T5's span corruption: random spans of the text (noise density 0.15, mean span length 3 by
default) are each replaced in the input by one sentinel; the target lists every sentinel
followed by the span it replaced, then <eos>:

    text    a b c d e f g h          input   a b <S0> e f <S1> h <eos>
    spans   c d | g                  target  <S0> c d <S1> g <eos>

Documents (each + <eos>) are concatenated and cut into chunks of the longest raw length whose
corrupted input fits `seq_len` and whose target fits `target_seq_len` (T5's
random_spans_helper). Spans are drawn afresh for every training batch. Sentinel k is the
model's id vocab_size - 1 - k, among the `tokenizer.extra_ids` appended to the vocabulary.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import ml_collections
import numpy as np

from llmjax.data.sources import read_documents
from llmjax.data.text_builder import DataError
from llmjax.data.tokenizers import Tokenizer
from llmjax.objectives.base import NO_REGULARIZERS, MetricSums, Regularizers
from llmjax.objectives.seq2seq import seq2seq_arrays, seq2seq_loss


def span_counts(length: int, density: float, mean_span: float) -> tuple[int, int]:
    """(noise tokens, spans) for a chunk of `length` tokens (T5's rounding)."""
    noise = min(max(int(round(length * density)), 1), length - 1)
    spans = max(min(int(round(noise / mean_span)), length - noise), 1)
    return noise, spans


def raw_length(source_len: int, target_len: int, density: float, mean_span: float) -> int:
    """The longest chunk whose corrupted input (kept tokens + sentinels + <eos>) fits
    `source_len` and whose target (spans + sentinels + <eos>) fits `target_len`."""
    best = 0
    for n in range(2, 4 * (source_len + target_len)):
        noise, spans = span_counts(n, density, mean_span)
        if n - noise + spans + 1 <= source_len and noise + spans + 1 <= target_len:
            best = n
    if best == 0:
        raise DataError(f"seq_len={source_len} and target_seq_len={target_len} leave no room for"
                        " a corrupted span: raise them")
    return best


def _segment(total: int, parts: int, rng: np.random.Generator) -> np.ndarray:
    """`total` split into `parts` positive lengths, uniformly at random."""
    cuts = np.sort(rng.choice(np.arange(1, total), parts - 1, replace=False))
    return np.diff(np.concatenate([[0], cuts, [total]]))


def corrupt_tokens(tokens: np.ndarray, density: float, mean_span: float, sentinel_ids,
                   rng: np.random.Generator) -> tuple[list[int], list[int]]:
    """(input, target) token lists for one chunk (no <eos>), spans drawn with `rng`."""
    noise, spans = span_counts(len(tokens), density, mean_span)
    if spans > len(sentinel_ids):
        raise DataError(f"a chunk needs {spans} sentinels but tokenizer.extra_ids gives "
                        f"{len(sentinel_ids)}: raise tokenizer.extra_ids or lower seq_len")
    noise_lengths = _segment(noise, spans, rng)
    # Kept text around the spans: spans + 1 runs, the outer two possibly empty, so every mask
    # with these counts is equally likely (T5's original mask always ends in noise).
    keep_lengths = _segment(len(tokens) - noise + 2, spans + 1, rng)
    keep_lengths[0] -= 1
    keep_lengths[-1] -= 1
    inputs, targets, pos = [], [], 0
    for k, drop in enumerate(noise_lengths):
        keep = keep_lengths[k]
        inputs += tokens[pos: pos + keep].tolist() + [sentinel_ids[k]]
        pos += keep
        targets += [sentinel_ids[k]] + tokens[pos: pos + drop].tolist()
        pos += drop
    inputs += tokens[pos:].tolist()
    return inputs, targets


def uncorrupt(inputs: Sequence[int], targets: Sequence[int], sentinel_ids) -> list[int]:
    """The original tokens from an (input, target) pair: each sentinel in the input is replaced
    by what follows the same sentinel in the target."""
    sentinels = set(sentinel_ids)
    spans, current = {}, None
    for t in targets:
        if t in sentinels:
            current = t
            spans[current] = []
        elif current is not None:
            spans[current].append(t)
    out = []
    for t in inputs:
        out += spans.get(t, []) if t in sentinels else [t]
    return out


class SpanChunks:
    """Raw token chunks [N, raw_len] (+ their lengths); `corrupt` turns a batch of them into the
    seq2seq layout with fresh spans."""

    def __init__(self, chunks: np.ndarray, lengths: np.ndarray, tokenizer: Tokenizer,
                 config: ml_collections.ConfigDict):
        self.chunks, self.lengths = chunks, lengths
        self.tokenizer, self.config = tokenizer, config
        d = config.data
        self.density, self.mean_span = d.noise_density, d.mean_noise_span_length
        vocab = config.model.vocab_size
        self.sentinel_ids = [vocab - 1 - k for k in range(config.tokenizer.extra_ids)]

    def __len__(self) -> int:
        return len(self.chunks)

    def shard(self, index: int, count: int) -> SpanChunks:
        n = len(self)
        lo, hi = n * index // count, n * (index + 1) // count
        return SpanChunks(self.chunks[lo:hi], self.lengths[lo:hi], self.tokenizer, self.config)

    def __getitem__(self, indices: np.ndarray) -> dict[str, np.ndarray]:
        return {"chunk": self.chunks[indices], "length": self.lengths[indices]}

    def padding_example(self) -> dict[str, np.ndarray]:
        return {"chunk": np.zeros_like(self.chunks[0]), "length": np.zeros((), np.int32)}

    def corrupt(self, batch: dict[str, np.ndarray], rng: np.random.Generator
                ) -> dict[str, np.ndarray]:
        pairs, real = [], []
        for chunk, length in zip(batch["chunk"], batch["length"], strict=True):
            if length >= 2:
                pairs.append(corrupt_tokens(chunk[:length], self.density, self.mean_span,
                                            self.sentinel_ids, rng))
            else:  # padding (or a one-token tail): contributes nothing
                pairs.append(([], []))
            real.append(length >= 2)
        c = self.config
        arrays = seq2seq_arrays(((np.asarray(i, np.int32), np.asarray(t, np.int32))
                                 for i, t in pairs), c.seq_len, c.target_seq_len,
                                self.tokenizer).arrays
        arrays["weights"] *= np.asarray(real, np.float32)[:, None]
        return arrays


class SpanCorruption:
    name = "span_corruption"
    chunks_logits = True  # its loss honours model.logits_chunks (lm_loss.token_sums)

    def model_kwargs(self, config: ml_collections.ConfigDict) -> dict:
        return {}

    def make_examples(self, records: Sequence[dict], tokenizer: Tokenizer,
                      config: ml_collections.ConfigDict, *, train: bool) -> SpanChunks:
        d = config.data
        length = raw_length(config.seq_len, config.target_seq_len, d.noise_density,
                            d.mean_noise_span_length)
        docs = read_documents(records, d.text_column)
        stream = np.concatenate([np.append(t, tokenizer.eos_id)
                                 for t in tokenizer.encode_batch(docs)]).astype(np.int32)
        count = -(-len(stream) // length)
        chunks = np.full((count, length), tokenizer.pad_id, np.int32)
        chunks.reshape(-1)[: len(stream)] = stream
        lengths = np.full((count,), length, np.int32)
        lengths[-1] = len(stream) - (count - 1) * length
        return SpanChunks(chunks, lengths, tokenizer, config)

    def loss(self, model, batch: dict[str, jax.Array], rng: jax.Array | None,
             regularizers: Regularizers = NO_REGULARIZERS) -> MetricSums:
        return seq2seq_loss(model, batch, rng, regularizers)

