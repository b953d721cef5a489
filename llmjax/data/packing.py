"""Packing: documents -> one token stream -> fixed-length windows with segment ids.

Each document becomes [<bos>, tokens..., <eos>]; documents are concatenated into one stream and
windows of L + 1 tokens are cut from it (inputs = the first L, targets = the last L). Evaluation
uses stride L, so every token is a target exactly once; training uses a smaller stride (1 =
nanoGPT's random offsets) so that each epoch sees the text at every alignment. A sliding
evaluation (stride S < L, `scored_tail=S`) scores only the last S targets of every window after
the first: each token is still a target once, now with at least L - S tokens before it.
Inside a window, segment ids number the documents 1, 2, ... (attention never crosses them) and
0 marks padding; a target is weighted only when it belongs to the same document as its input.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np

from llmjax.data.text_builder import DataError


class SpecialIds(Protocol):
    """What packing needs of a tokenizer: its special token ids."""

    bos_id: int
    eos_id: int
    pad_id: int
    pair_separator: tuple[int, ...]  # between a pair's texts: (eos,), RoBERTa's (eos, eos)


def token_stream(token_docs: Sequence[np.ndarray], specials: SpecialIds
                 ) -> tuple[np.ndarray, np.ndarray]:
    """(tokens [N], document index [N]) of the concatenated [<bos>, doc, <eos>] sequences."""
    pieces, doc_ids = [], []
    bos, eos = specials.bos_id, specials.eos_id
    for i, doc in enumerate(token_docs):
        pieces.append(np.concatenate([[bos], doc, [eos]]).astype(np.int32))
        doc_ids.append(np.full(len(doc) + 2, i, np.int32))
    if not pieces:
        return np.zeros((0,), np.int32), np.zeros((0,), np.int32)
    return np.concatenate(pieces), np.concatenate(doc_ids)


class Windows:
    """Causal-LM examples cut lazily from a token stream: `windows[indices]` gathers a batch
    {inputs, targets, segment_ids, weights} [len(indices), length]. Window i starts at
    (lo + i) * stride; `keep_partial` pads the stream so the last, shorter window is included;
    `scored_tail` (= stride, for a sliding evaluation): windows after the first weight only
    their last `scored_tail` targets, the ones no earlier window scored."""

    def __init__(self, tokens: np.ndarray, doc_ids: np.ndarray, length: int, stride: int,
                 keep_partial: bool, pad_id: int = 0, lo: int = 0, hi: int | None = None,
                 scored_tail: int | None = None):
        self.length, self.stride, self.scored_tail = length, stride, scored_tail
        pairs = len(tokens) - 1  # (input, target) pairs
        count = max(pairs - length, -1) // stride + 1 if pairs >= length else 0
        if keep_partial and pairs > 0 and (count == 0 or (count - 1) * stride + length < pairs):
            count += 1
        if count == 0:
            raise DataError(f"the split gives {len(tokens)} tokens, too few for one window of "
                            f"{length + 1} (seq_len + 1): use more data or a smaller seq_len")
        needed = (count - 1) * stride + length + 1
        self.tokens = np.full(max(needed, len(tokens)), pad_id, np.int32)
        self.doc_ids = np.full(len(self.tokens), -1, np.int32)
        self.tokens[: len(tokens)], self.doc_ids[: len(doc_ids)] = tokens, doc_ids
        self.count, self.lo = count, lo
        self.hi = count if hi is None else hi

    def __len__(self) -> int:
        return self.hi - self.lo

    def shard(self, index: int, count: int) -> Windows:
        """The index-th of `count` contiguous, disjoint blocks of windows."""
        n = len(self)
        sub = Windows.__new__(Windows)
        sub.__dict__.update(self.__dict__)
        sub.lo, sub.hi = self.lo + n * index // count, self.lo + n * (index + 1) // count
        return sub

    def __getitem__(self, indices: np.ndarray) -> dict[str, np.ndarray]:
        starts = (self.lo + np.asarray(indices, np.int64)) * self.stride
        idx = starts[:, None] + np.arange(self.length + 1)[None, :]
        win_tok, win_doc = self.tokens[idx], self.doc_ids[idx]
        in_doc, tgt_doc = win_doc[:, :-1], win_doc[:, 1:]
        # Documents are numbered consecutively in the stream, so this renumbers them 1, 2, ...
        segment_ids = np.where(in_doc >= 0, in_doc - in_doc[:, :1] + 1, 0).astype(np.int32)
        weights = ((in_doc == tgt_doc) & (in_doc >= 0)).astype(np.float32)
        if self.scored_tail is not None:  # targets before the tail: the last window's
            later = (self.lo + np.asarray(indices, np.int64)) > 0
            weights[later, : self.length - self.scored_tail] = 0.0
        return {"inputs": win_tok[:, :-1], "targets": win_tok[:, 1:],
                "segment_ids": segment_ids, "weights": weights}


def pack_pair(a: np.ndarray, b: np.ndarray | None, seq_len: int, specials: SpecialIds
              ) -> tuple[np.ndarray, np.ndarray]:
    """BERT's input for one or two token sequences: [<bos>] a [<eos>] (b [<eos>]) and token
    types (0 for a, 1 for b), the longer part trimmed first to fit `seq_len`. Between a and b
    is the tokenizer's pair separator ([<eos>], RoBERTa's [</s>, </s>])."""
    a, b = list(a), (list(b) if b is not None else None)
    separator = list(specials.pair_separator)
    budget = seq_len - (2 + len(separator) if b is not None else 2)
    while len(a) + (len(b) if b is not None else 0) > budget:
        if b is not None and len(b) > len(a):
            b.pop()
        else:
            a.pop()
    tokens = [specials.bos_id, *a, *(separator if b is not None else [specials.eos_id])]
    types = [0] * len(tokens)
    if b is not None:
        tokens += [*b, specials.eos_id]
        types += [1] * (len(b) + 1)
    return np.asarray(tokens, np.int32), np.asarray(types, np.int32)
