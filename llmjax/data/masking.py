"""BERT masked-LM corruption: choose ~15% of the maskable tokens of each sequence; replace 80% of
the chosen with [MASK], 10% with a random token, keep 10%. Drawn afresh per call (dynamic
masking: the pipeline calls it with a per-epoch, per-example seed)."""

from __future__ import annotations

import math

import numpy as np


def max_predictions(length: int, rate: float = 0.15) -> int:
    """The most positions `mask_tokens` chooses in a sequence of `length` (round(candidates *
    rate) <= ceil(length * rate)): the static number of positions the MLM loss gathers."""
    return max(1, math.ceil(length * rate))


def mask_tokens(tokens_L: np.ndarray, rng: np.random.Generator, *, mask_id: int,
                random_ids: np.ndarray, maskable_L: np.ndarray, rate: float = 0.15,
                word_starts_L: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Masks one sequence. `maskable` excludes special tokens and padding; `random_ids` are the
    ids a random replacement draws from; with `word_starts` whole words are chosen together.

    Returns inputs [L] (corrupted), targets [L] (the original tokens) and weights [L] (1 at the
    chosen positions only: the loss and accuracy count nothing else).
    """
    candidates = np.flatnonzero(maskable_L)
    chosen = np.zeros(len(tokens_L), bool)
    if len(candidates):
        count = max(1, int(round(len(candidates) * rate)))
        if word_starts_L is None:
            chosen[rng.choice(candidates, size=count, replace=False)] = True
        else:
            # words = runs of candidates from one word start to the next
            starts = candidates[word_starts_L[candidates].astype(bool) |
                                (candidates == candidates[0])]
            word_of = np.searchsorted(starts, candidates, side="right") - 1
            for word in rng.permutation(len(starts)):
                n = int(chosen.sum())
                if n >= count:
                    break
                positions = candidates[word_of == word]
                if n + len(positions) <= count:  # BERT's rule: never more than `count`
                    chosen[positions] = True
    action = rng.random(len(tokens_L))
    inputs = tokens_L.copy()
    inputs[chosen & (action < 0.8)] = mask_id
    swap = chosen & (action >= 0.8) & (action < 0.9)
    inputs[swap] = rng.choice(random_ids, size=int(swap.sum()))
    return {"inputs": inputs, "targets": tokens_L.copy(), "weights": chosen.astype(np.float32)}
