"""Next-sentence prediction (BERT): is segment B the segment after A in the same document?

Pairs come from documents of segments (see documents.py): for each segment with a successor,
B is that successor (label 0, IsNext, as Hugging Face numbers it) or, with probability 1/2, a
segment of another document (label 1, NotNext). Input: [<bos>] A [<eos>] B [<eos>], token types
0/1, longest-first truncation. Pairs are drawn once per split from `seed`.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import ml_collections
import numpy as np

from llmjax.data.documents import record_documents
from llmjax.data.packing import pack_pair
from llmjax.data.sources import read_documents
from llmjax.data.text_builder import DataError
from llmjax.data.tokenizers import Tokenizer
from llmjax.objectives.base import MetricSums, cross_entropy
from llmjax.objectives.pairs import ArrayExamples, encode, labelled_pairs, padding_pair

IS_NEXT, NOT_NEXT = 0, 1


def make_pairs(docs: list[list[np.ndarray]], rng: np.random.Generator
               ) -> list[tuple[np.ndarray, np.ndarray, int]]:
    """(A, B, label) for every segment that has a successor; negatives from other documents."""
    if len(docs) < 2:
        raise DataError(f"next-sentence prediction needs at least 2 documents, got {len(docs)}; "
                        "use more data (documents start at '= Title =' lines or blank lines)")
    pairs = []
    for d, segments in enumerate(docs):
        for i in range(len(segments) - 1):
            if rng.random() < 0.5:
                pairs.append((segments[i], segments[i + 1], IS_NEXT))
            else:
                other = int(rng.integers(len(docs) - 1))
                other += other >= d  # any document but this one
                pick = docs[other][int(rng.integers(len(docs[other])))]
                pairs.append((segments[i], pick, NOT_NEXT))
    return pairs


class NextSentencePrediction:
    name = "nsp"
    vocab_logits = False  # for the FLOP count: no output projection over the vocabulary

    def model_kwargs(self, config: ml_collections.ConfigDict) -> dict:
        return {"heads": ("nsp",)}

    def make_examples(self, records: Sequence[dict], tokenizer: Tokenizer,
                      config: ml_collections.ConfigDict, *, train: bool) -> ArrayExamples:
        whole_files = len(records) > 0 and "document" in records[0]  # local text files
        docs_text = record_documents(read_documents(records, config.data.text_column),
                                     whole_files)
        flat = tokenizer.encode_batch([s for doc in docs_text for s in doc])
        docs, start = [], 0
        for doc in docs_text:
            docs.append(flat[start:start + len(doc)])
            start += len(doc)
        pairs = make_pairs(docs, np.random.default_rng([config.seed, 0 if train else 1]))
        items = ((*pack_pair(a, b, config.seq_len, tokenizer), label) for a, b, label in pairs)
        return labelled_pairs(items, len(pairs), config.seq_len)

    def padding_example(self, seq_len: int) -> dict[str, np.ndarray]:
        return padding_pair(seq_len)

    def loss(self, model, batch: dict[str, jax.Array], rng: jax.Array | None
             ) -> MetricSums:
        logits = model.nsp_logits(encode(model, batch, rng), rng)
        weights = batch["weights"]
        loss_sum = (cross_entropy(logits, batch["label"]) * weights).sum()
        correct = ((logits.argmax(-1) == batch["label"]) * weights).sum()
        count = weights.sum()
        return {"loss": (loss_sum, count), "nsp_accuracy": (correct, count)}
