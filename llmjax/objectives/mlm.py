"""Masked language modelling (BERT): predict the tokens chosen by `data.masking` from both sides.

Examples are windows of the packed document stream ([<bos>] doc [<eos>] ...; <bos>/<eos> play
[CLS]/[SEP]); attention stays inside each document. Masking is drawn afresh for every training
batch (dynamic masking) and with fixed seeds for evaluation; loss and accuracy count the chosen
positions only.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import ml_collections
import numpy as np

from llmjax.configs import ConfigError
from llmjax.data import packing
from llmjax.data.masking import mask_tokens
from llmjax.data.sources import read_documents
from llmjax.data.tokenizers import MASK_ID, SPECIALS, Tokenizer
from llmjax.objectives.base import MetricSums, cross_entropy


class TokenWindows:
    """Windows of the document stream as {tokens, segment_ids} [N, L] (no shifted targets)."""

    def __init__(self, windows: packing.Windows):
        self.windows = windows

    def __len__(self) -> int:
        return len(self.windows)

    def shard(self, index: int, count: int) -> TokenWindows:
        return TokenWindows(self.windows.shard(index, count))

    def __getitem__(self, indices: np.ndarray) -> dict[str, np.ndarray]:
        w = self.windows[indices]
        return {"tokens": w["inputs"], "segment_ids": w["segment_ids"]}


class MaskedLM:
    name = "mlm"
    rate = 0.15

    def __init__(self):
        # Set by make_examples, which always runs before corrupt: the random-token range and,
        # with whole-word masking, which token ids start a word.
        self.vocab_size: int | None = None
        self.word_starts: np.ndarray | None = None

    def model_kwargs(self, config: ml_collections.ConfigDict) -> dict:
        return {"heads": ("mlm",)}

    def make_examples(self, records: Sequence[dict], tokenizer: Tokenizer,
                      config: ml_collections.ConfigDict, *, train: bool) -> TokenWindows:
        docs = read_documents(records, config.data.text_column)
        tokens, doc_ids = packing.token_stream(tokenizer.encode_batch(docs))
        self.vocab_size = config.model.vocab_size
        self.word_starts = None
        if config.data.whole_word_masking:
            self.word_starts = tokenizer.word_starts()
            if self.word_starts is None:
                raise ConfigError(f"data.whole_word_masking needs a tokenizer whose pieces mark "
                                  f"word starts (wordpiece or bpe), not {tokenizer.kind!r}")
        return TokenWindows(packing.Windows(tokens, doc_ids, config.seq_len, config.seq_len,
                                            keep_partial=not train))

    def padding_example(self, seq_len: int) -> dict[str, np.ndarray]:
        zeros = np.zeros((seq_len,), np.int32)
        return {"tokens": zeros, "segment_ids": zeros}

    def corrupt(self, batch: dict[str, np.ndarray], rng: np.random.Generator
                ) -> dict[str, np.ndarray]:
        """Adds inputs (masked), targets and weights (1 at the chosen positions)."""
        random_ids = np.arange(len(SPECIALS), self.vocab_size)
        starts = self.word_starts
        rows = [mask_tokens(tok, rng, mask_id=MASK_ID, random_ids=random_ids,
                            maskable_L=(seg > 0) & (tok >= len(SPECIALS)), rate=self.rate,
                            word_starts_L=None if starts is None else starts[tok])
                for tok, seg in zip(batch["tokens"], batch["segment_ids"], strict=True)]
        out = {k: np.stack([r[k] for r in rows]).astype(np.int32 if k != "weights" else
                                                         np.float32) for k in rows[0]}
        return {**batch, **out}

    def loss(self, model, batch: dict[str, jax.Array], rng: jax.Array | None
             ) -> tuple[jax.Array, MetricSums]:
        hidden = model.hidden_states(batch["inputs"], segment_ids=batch["segment_ids"], rng=rng)
        logits = model.mlm_logits(hidden)
        weights = batch["weights"]
        loss_sum = (cross_entropy(logits, batch["targets"]) * weights).sum()
        correct = ((logits.argmax(-1) == batch["targets"]) * weights).sum()
        count = weights.sum()
        return loss_sum, {"loss": (loss_sum, count), "mlm_accuracy": (correct, count)}
