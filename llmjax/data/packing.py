"""Packing: documents -> one token stream -> fixed-length windows with segment ids.

Each document becomes [<bos>, tokens..., <eos>]; documents are concatenated and the stream is cut
into windows of L + 1 tokens with stride L, so every token is a target exactly once. Inside a
window, segment ids number the documents 1, 2, ... (attention never crosses them) and 0 marks
padding; a target is weighted only when it belongs to the same document as its input.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from llmjax.data.tokenizers import BOS_ID, EOS_ID, PAD_ID


def token_stream(token_docs: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(tokens [N], document index [N]) of the concatenated [<bos>, doc, <eos>] sequences."""
    pieces, doc_ids = [], []
    for i, doc in enumerate(token_docs):
        pieces.append(np.concatenate([[BOS_ID], doc, [EOS_ID]]).astype(np.int32))
        doc_ids.append(np.full(len(doc) + 2, i, np.int32))
    if not pieces:
        return np.zeros((0,), np.int32), np.zeros((0,), np.int32)
    return np.concatenate(pieces), np.concatenate(doc_ids)


def windows(tokens: np.ndarray, doc_ids: np.ndarray, length: int, *, keep_partial: bool
            ) -> dict[str, np.ndarray]:
    """Causal-LM examples [num_windows, length]: inputs, targets, segment_ids, weights.

    `keep_partial` pads the last, shorter window (evaluation covers every token); training
    drops it.
    """
    n = len(tokens) - 1  # number of (input, target) pairs
    count = n // length + (1 if keep_partial and n % length else 0)
    if count == 0:
        raise ValueError(f"{len(tokens)} tokens are too few for one window of {length + 1}")
    padded = count * length + 1
    tok = np.full(padded, PAD_ID, np.int32)
    doc = np.full(padded, -1, np.int32)
    tok[: min(padded, len(tokens))] = tokens[:padded]
    doc[: min(padded, len(doc_ids))] = doc_ids[:padded]
    starts = np.arange(count)[:, None] * length
    idx = starts + np.arange(length + 1)[None, :]
    win_tok, win_doc = tok[idx], doc[idx]
    inputs, targets = win_tok[:, :-1], win_tok[:, 1:]
    in_doc, tgt_doc = win_doc[:, :-1], win_doc[:, 1:]
    # Documents are numbered consecutively in the stream, so this renumbers them 1, 2, ...
    segment_ids = np.where(in_doc >= 0, in_doc - in_doc[:, :1] + 1, 0).astype(np.int32)
    weights = ((in_doc == tgt_doc) & (in_doc >= 0)).astype(np.float32)
    return {"inputs": inputs, "targets": targets, "segment_ids": segment_ids,
            "weights": weights}
