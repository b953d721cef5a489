"""Next-sentence prediction (BERT): is segment B the segment after A in the same document?

Documents of segments come from documents.py. There is one example per segment A that has a
successor; B is drawn with every batch (like MLM masking: a fresh draw every epoch, fixed
seeds for eval): with probability 1/2 the successor (label 0, IsNext, as Hugging Face numbers
it), else a random segment of another document (label 1, NotNext). A static draw lets a small
model memorise which pairs are negatives instead of learning coherence. Input:
[<bos>] A [<eos>] B [<eos>], token types 0/1, longest-first truncation.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import ml_collections
import numpy as np

from llmjax.data.documents import record_documents
from llmjax.data.packing import SpecialIds, pack_pair
from llmjax.data.sources import read_documents
from llmjax.data.text_builder import DataError
from llmjax.data.tokenizers import Tokenizer
from llmjax.objectives.base import (
    NO_REGULARIZERS,
    MetricSums,
    Regularizers,
    cross_entropy,
)
from llmjax.objectives.pairs import encode, labelled_pairs

IS_NEXT, NOT_NEXT = 0, 1


def draw_second(docs: list[list[np.ndarray]], doc: int, segment: int,
                rng: np.random.Generator) -> tuple[np.ndarray, int]:
    """(B, label) for A = docs[doc][segment]: its successor or a segment of another document."""
    if rng.random() < 0.5:
        return docs[doc][segment + 1], IS_NEXT
    other = int(rng.integers(len(docs) - 1))
    other += other >= doc  # any document but this one
    return docs[other][int(rng.integers(len(docs[other])))], NOT_NEXT


class SegmentPairs:
    """NSP examples: `first` [N, 2] = (document, segment) of each A; `corrupt` draws B and
    packs the pairs ({tokens, token_types, segment_ids [B, L], label, weights [B]}), then masks
    them when given a BertMasking (MLM + NSP: inputs, targets, mlm_weights)."""

    def __init__(self, docs: list[list[np.ndarray]], seq_len: int, specials: SpecialIds,
                 masking=None, first: np.ndarray | None = None):
        if len(docs) < 2:
            raise DataError(f"next-sentence prediction needs at least 2 documents, got "
                            f"{len(docs)}; use more data (documents start at '= Title =' lines "
                            "or blank lines in text files; a catalog record is one document)")
        self.docs, self.seq_len, self.specials, self.masking = docs, seq_len, specials, masking
        if first is None:
            first = np.array([(d, i) for d, segs in enumerate(docs) for i in range(len(segs) - 1)],
                             np.int32).reshape(-1, 2)
        self.first = first

    def __len__(self) -> int:
        return len(self.first)

    def shard(self, index: int, count: int) -> SegmentPairs:
        n = len(self)
        block = self.first[n * index // count: n * (index + 1) // count]
        return SegmentPairs(self.docs, self.seq_len, self.specials, self.masking, block)

    def __getitem__(self, indices: np.ndarray) -> dict[str, np.ndarray]:
        return {"first": self.first[indices], "weights": np.ones(len(indices), np.float32)}

    def corrupt(self, batch: dict[str, np.ndarray], rng: np.random.Generator
                ) -> dict[str, np.ndarray]:
        def items():
            for (d, i), weight in zip(batch["first"], batch["weights"], strict=True):
                if weight == 0:  # a padding example stays empty
                    yield np.zeros(0, np.int32), np.zeros(0, np.int32), 0
                    continue
                second, label = draw_second(self.docs, int(d), int(i), rng)
                yield (*pack_pair(self.docs[d][i], second, self.seq_len, self.specials), label)

        pairs = labelled_pairs(items(), len(batch["first"]), self.seq_len).arrays
        pairs["weights"] = batch["weights"]
        if self.masking is not None:
            masked = self.masking(pairs["tokens"], pairs["segment_ids"] > 0, rng)
            pairs.update(inputs=masked["inputs"], targets=masked["targets"],
                         mlm_weights=masked["weights"])
        return pairs


def segment_pairs(records: Sequence[dict], tokenizer: Tokenizer,
                  config: ml_collections.ConfigDict, masking=None) -> SegmentPairs:
    """The NSP examples of `records`: their documents' segments, tokenized."""
    whole_files = len(records) > 0 and "document" in records[0]  # local text files
    docs_text = record_documents(read_documents(records, config.data.text_column), whole_files)
    flat = tokenizer.encode_batch([s for doc in docs_text for s in doc])
    docs, start = [], 0
    for doc in docs_text:
        docs.append(flat[start:start + len(doc)])
        start += len(doc)
    return SegmentPairs(docs, config.seq_len, tokenizer, masking)


def nsp_loss(model, hidden_BxLxD: jax.Array, batch: dict[str, jax.Array],
             rng: jax.Array | None, regularizers: Regularizers = NO_REGULARIZERS
             ) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(loss sum, correct predictions, pairs) of the NSP head over a batch."""
    logits = model.nsp_logits(hidden_BxLxD, rng)
    weights = batch["weights"]
    loss_sum = (cross_entropy(logits, batch["label"], regularizers) * weights).sum()
    correct = ((logits.argmax(-1) == batch["label"]) * weights).sum()
    return loss_sum, correct, weights.sum()


def padding_first() -> dict[str, np.ndarray]:
    return {"first": np.zeros(2, np.int32), "weights": np.zeros((), np.float32)}


class NextSentencePrediction:
    name = "nsp"
    vocab_positions = staticmethod(lambda seq_len: 0)  # FLOP count: no vocabulary projection

    def model_kwargs(self, config: ml_collections.ConfigDict) -> dict:
        return {"heads": ("nsp",)}

    def make_examples(self, records: Sequence[dict], tokenizer: Tokenizer,
                      config: ml_collections.ConfigDict, *, train: bool) -> SegmentPairs:
        return segment_pairs(records, tokenizer, config)

    def padding_example(self, seq_len: int) -> dict[str, np.ndarray]:
        return padding_first()

    def loss(self, model, batch: dict[str, jax.Array], rng: jax.Array | None,
             regularizers: Regularizers = NO_REGULARIZERS) -> MetricSums:
        loss_sum, correct, count = nsp_loss(model, encode(model, batch, rng), batch, rng,
                                            regularizers)
        return {"loss": (loss_sum, count), "nsp_accuracy": (correct, count)}
