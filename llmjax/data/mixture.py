"""Data mixtures: `data.source=A=3,B=1` trains on sources A and B, three examples of A for
each of B (seqio's mixtures, as T5 pretrains on several tasks at once).

A mixture spec is a comma-separated list of data source specs, each optionally followed by
`=WEIGHT` (relative; 1 when left out). Training draws each member's examples from its own
reshuffled-every-epoch stream and interleaves them in proportion to the weights (grain's
`MapDataset.mix`, a fixed pattern: every batch holds the members in those proportions, up to
rounding). Evaluation, the tokenizer's sample and the classification label set read every
member: their records are concatenated (`MixedRecords`), a tokenizer's sample takes each
member's share of `data.tokenizer_sample_chars` by weight.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable, Sequence

import grain
import numpy as np

from llmjax.configs import ConfigError

Batch = dict[str, np.ndarray]


def members(spec: str) -> list[tuple[str, float]]:
    """[(source spec, weight)] of a data source spec; one member when it has no comma.

    `text:a.txt=3,tfds:lm1b` -> [('text:a.txt', 3.0), ('tfds:lm1b', 1.0)]."""
    out: list[tuple[str, float]] = []
    for item in spec.split(","):
        source, weight = item.strip(), 1.0
        head, sep, tail = source.rpartition("=")
        if sep:
            try:
                weight = float(tail)
            except ValueError:
                pass  # an '=' inside a path, not a weight
            else:
                source = head.strip()
                if not (math.isfinite(weight) and weight > 0):
                    raise ConfigError(f"data source {spec!r}: the weight of {source!r} is "
                                      f"{tail}; mixture weights are positive numbers "
                                      "(relative: A=3,B=1 draws three examples of A per B)")
        if not source:
            raise ConfigError(f"data source {spec!r} has an empty member: write "
                              "SOURCE=WEIGHT,SOURCE=WEIGHT (e.g. text:a.txt=3,text:b.txt=1)")
        if any(source == seen for seen, _ in out):
            raise ConfigError(f"data source {spec!r} lists {source!r} twice: give it once, "
                              "with the sum of its weights")
        out.append((source, weight))
    return out


def is_mixture(spec: str) -> bool:
    return len(members(spec)) > 1


class MixedRecords(Sequence):
    """The records of several sources, one after the other. A record's `document` id (local
    files, generated text) becomes (member, id), so documents of two members never merge."""

    def __init__(self, parts: Sequence[Sequence[dict]]):
        self.parts = list(parts)
        self.starts = np.cumsum([0] + [len(p) for p in self.parts]).tolist()

    def __len__(self) -> int:
        return self.starts[-1]

    def _locate(self, i: int) -> tuple[int, int]:
        if not 0 <= i < len(self):
            raise IndexError(i)
        member = bisect.bisect_right(self.starts, i) - 1
        return member, i - self.starts[member]

    def _tagged(self, member: int, record: dict) -> dict:
        if "document" in record:
            return {**record, "document": (member, int(record["document"]))}
        return record

    def __getitem__(self, i: int) -> dict:
        member, j = self._locate(i)
        return self._tagged(member, self.parts[member][j])

    def __getitems__(self, keys: Sequence[int]) -> list[dict]:
        from llmjax.data.sources import read_block  # block reads, member by member

        located = [self._locate(i) for i in keys]
        out: list[dict | None] = [None] * len(keys)
        for member, part in enumerate(self.parts):
            positions = [p for p, (m, _) in enumerate(located) if m == member]
            if positions:
                block = read_block(part, [located[p][1] for p in positions])
                for p, record in zip(positions, block, strict=True):
                    out[p] = self._tagged(member, record)
        return out


def mixed_batches(parts: Sequence, weights: Sequence[float], batch_size: int, seed: int,
                  corrupt_seed: int) -> grain.MapDataset:
    """Endless batches of `batch_size` examples drawn from the example sets `parts` in
    proportion to `weights`; batch i is a pure function of i (checkpointable by position).

    Each part is reshuffled every epoch of its own; a part with a `corrupt` (MLM masking, NSP
    pairs) corrupts its own rows of each batch, with randomness fixed by the batch index."""
    streams = [grain.MapDataset.range(len(part)).shuffle(seed=seed + 7919 * k).repeat(None)
               .map(_tag(k)) for k, part in enumerate(parts)]
    batches = grain.MapDataset.mix(streams, list(weights)).batch(batch_size, drop_remainder=True)
    if any(hasattr(part, "corrupt") for part in parts):
        return batches.random_map(lambda b, rng: _gather(parts, b, rng), seed=corrupt_seed)
    return batches.map(lambda b: _gather(parts, b, None))


def _tag(member: int) -> Callable[[int], tuple[int, int]]:
    return lambda index: (member, index)


def _gather(parts: Sequence, batch: tuple[np.ndarray, np.ndarray],
            rng: np.random.Generator | None) -> Batch:
    """The examples (member_B, index_B) name, in batch order."""
    member_B, index_B = batch
    out: Batch = {}
    for k, part in enumerate(parts):
        rows = np.flatnonzero(member_B == k)
        if not len(rows):
            continue
        examples = part[index_B[rows]]
        if rng is not None and hasattr(part, "corrupt"):
            examples = part.corrupt(examples, rng)
        for key, value in examples.items():
            if key not in out:
                out[key] = np.empty((len(member_B), *value.shape[1:]), value.dtype)
            out[key][rows] = value
    return out
