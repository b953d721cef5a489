"""Entity-level precision / recall / F1 of tag sequences (named entities, chunks), counted as
CoNLL's conlleval script (and seqeval's default mode) counts them, on device.

A label is `O`, or PREFIX-TYPE with PREFIX one of B, I, E, S (IOB1, IOB2, IOE, IOBES); a label
without such a prefix is an I- label of its own type (the IO scheme: a run of one type is one
entity). A chunk starts at a non-O tag that is B- or S-, follows an E- or S- tag, or follows a
tag of another type (O included); it continues over the following non-O tags that start no
chunk. A predicted chunk is correct when a gold chunk has the same first and last word and type.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

_B, _I, _E, _S = range(4)
_PREFIXES = {"B": _B, "I": _I, "E": _E, "S": _S}


@dataclasses.dataclass(frozen=True)
class TagScheme:
    """Each label id's prefix (B, I, E, S as 0-3) and entity type (-1 for O)."""

    prefixes: np.ndarray  # [C] int32
    types: np.ndarray  # [C] int32

    @classmethod
    def of(cls, labels: Sequence[str]) -> TagScheme:
        prefixes, types, names = [], [], {}
        for label in labels:
            head, _, tail = label.partition("-")
            if label == "O":
                prefix, kind = _I, None
            elif tail and head in _PREFIXES:
                prefix, kind = _PREFIXES[head], tail
            else:  # IO scheme: the label is the type
                prefix, kind = _I, label
            prefixes.append(prefix)
            types.append(-1 if kind is None else names.setdefault(kind, len(names)))
        return cls(np.asarray(prefixes, np.int32), np.asarray(types, np.int32))


def entity_counts(predicted_BxL: jax.Array, gold_BxL: jax.Array, weights_BxL: jax.Array,
                  scheme: TagScheme) -> jax.Array:
    """[correct, predicted, gold] entity counts (float32) of the label sequences formed by the
    weighted positions of each row, in order (the tokens between them are skipped: sub-word
    pieces after a word's first)."""
    # the weighted positions of each row first, in order: word-level sequences, then padding
    order = jnp.argsort(weights_BxL <= 0, axis=1, stable=True)
    valid = jnp.take_along_axis(weights_BxL, order, axis=1) > 0
    prefixes, types = jnp.asarray(scheme.prefixes), jnp.asarray(scheme.types)

    def chunks(labels_BxL):
        labels = jnp.take_along_axis(labels_BxL, order, axis=1)
        prefix = prefixes[labels]
        kind = jnp.where(valid, types[labels], -1)  # past the words: O
        prev_prefix = jnp.pad(prefix, ((0, 0), (1, 0)), constant_values=_I)[:, :-1]
        prev_kind = jnp.pad(kind, ((0, 0), (1, 0)), constant_values=-1)[:, :-1]
        inside = kind >= 0
        start = inside & ((prefix == _B) | (prefix == _S) | (prev_prefix == _E)
                          | (prev_prefix == _S) | (prev_kind != kind))
        return start, inside & ~start, kind

    start_g, cont_g, kind_g = chunks(gold_BxL)
    start_p, cont_p, kind_p = chunks(predicted_BxL)
    next_cont_g = jnp.pad(cont_g, ((0, 0), (0, 1)))[:, 1:]
    next_cont_p = jnp.pad(cont_p, ((0, 0), (0, 1)))[:, 1:]
    end_g = (start_g | cont_g) & ~next_cont_g  # the last word of a gold chunk
    # within a gold chunk, the prediction must start where it starts (same type) and continue
    # where it continues; past its last word, the prediction must not continue
    differs = (start_g != start_p) | (cont_g != cont_p) | (start_g & (kind_g != kind_p))
    differences = jnp.cumsum(differs, axis=1)
    positions = jnp.arange(start_g.shape[1])
    chunk_start = jax.lax.cummax(jnp.where(start_g, positions, 0), axis=1)
    before = (jnp.take_along_axis(differences, chunk_start, axis=1)
              - jnp.take_along_axis(differs, chunk_start, axis=1))
    correct = end_g & (differences == before) & ~next_cont_p
    return jnp.stack([correct.sum(), start_p.sum(), start_g.sum()]).astype(jnp.float32)


def entity_metrics(counts: np.ndarray) -> dict[str, float]:
    """entity_precision / _recall / _f1 from summed [correct, predicted, gold] counts (0 when
    there is nothing to divide by, as seqeval)."""
    correct, predicted, gold = (float(c) for c in counts)
    precision = correct / predicted if predicted else 0.0
    recall = correct / gold if gold else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"entity_precision": precision, "entity_recall": recall, "entity_f1": f1}
