"""Masked language modelling (BERT): predict the tokens chosen by `data.masking` from both sides.

Examples are windows of the packed document stream ([<bos>] doc [<eos>] ...; <bos>/<eos> play
[CLS]/[SEP]); attention stays inside each document. Masking is drawn afresh for every training
batch (dynamic masking) and with fixed seeds for evaluation; loss and accuracy count the chosen
positions only.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from llmjax.configs import ConfigError
from llmjax.data import packing
from llmjax.data.masking import mask_tokens, max_predictions
from llmjax.data.sources import read_documents
from llmjax.data.tokenizers import Tokenizer
from llmjax.objectives.base import (
    NO_REGULARIZERS,
    MetricSums,
    Regularizers,
    cross_entropy,
)


class TokenWindows:
    """Windows of the document stream as {tokens, segment_ids} [N, L] (no shifted targets);
    `corrupt` masks a batch of them."""

    def __init__(self, windows: packing.Windows, masking: BertMasking):
        self.windows, self.masking = windows, masking

    def __len__(self) -> int:
        return len(self.windows)

    def shard(self, index: int, count: int) -> TokenWindows:
        return TokenWindows(self.windows.shard(index, count), self.masking)

    def __getitem__(self, indices: np.ndarray) -> dict[str, np.ndarray]:
        w = self.windows[indices]
        return {"tokens": w["inputs"], "segment_ids": w["segment_ids"]}

    def corrupt(self, batch: dict[str, np.ndarray], rng: np.random.Generator
                ) -> dict[str, np.ndarray]:
        """Adds inputs (masked), targets and weights (1 at the chosen positions)."""
        return {**batch, **self.masking(batch["tokens"], batch["segment_ids"] > 0, rng)}


class BertMasking:
    """The random part of MLM examples (data.masking's 15% / 80-10-10 rule), for a tokenizer and
    config: which ids are never chosen (specials), which a random replacement draws from, and
    with data.whole_word_masking which ids start a word."""

    rate = 0.15

    def __init__(self, tokenizer: Tokenizer, config: ml_collections.ConfigDict):
        if tokenizer.mask_id is None:
            raise ConfigError("masked-LM needs a mask token, and this tokenizer's vocabulary has "
                              "none ([MASK] or <mask>): use a BERT-style vocabulary, or unset "
                              "tokenizer.path to train one")
        self.mask_id = tokenizer.mask_id
        self.special = np.zeros(tokenizer.vocab_size, bool)
        self.special[tokenizer.special_ids] = True
        self.random_ids = np.flatnonzero(~self.special)
        self.word_starts = None
        if config.data.whole_word_masking:
            self.word_starts = tokenizer.word_starts()
            if self.word_starts is None:
                raise ConfigError(f"data.whole_word_masking needs a tokenizer whose pieces mark "
                                  f"word starts (wordpiece or bpe), not {tokenizer.kind!r}")

    def __call__(self, tokens_BxL: np.ndarray, real_BxL: np.ndarray, rng: np.random.Generator
                 ) -> dict[str, np.ndarray]:
        """{inputs, targets [B, L] int32, weights [B, L] float32} for the real (non-padding)
        positions of a batch; see masking.mask_tokens."""
        starts = self.word_starts
        rows = [mask_tokens(tok, rng, mask_id=self.mask_id, random_ids=self.random_ids,
                            maskable_L=real & ~self.special[tok], rate=self.rate,
                            word_starts_L=None if starts is None else starts[tok])
                for tok, real in zip(tokens_BxL, real_BxL, strict=True)]
        return {k: np.stack([r[k] for r in rows]).astype(np.float32 if k == "weights" else
                                                         np.int32) for k in rows[0]}


def mlm_loss(model, hidden_BxLxD: jax.Array, batch: dict[str, jax.Array], weights_key: str,
             regularizers: Regularizers = NO_REGULARIZERS
             ) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(loss sum, correct predictions, chosen positions) of the MLM head over a batch.

    The head runs only at the chosen positions, as in BERT's own code: masking chooses at most
    K = max_predictions(L) per sequence, so K gathered slots per row [B, K] lose none, and the
    vocabulary projection and softmax cost K/L (~15%) of running them everywhere. A batch with
    more chosen positions in some row (made elsewhere) takes the all-positions path instead."""
    weights_BxL, targets_BxL = batch[weights_key], batch["targets"]
    k = max_predictions(weights_BxL.shape[1], BertMasking.rate)

    def sums(hidden, targets, weights):
        logits = model.mlm_logits(hidden)
        loss_sum = (cross_entropy(logits, targets, regularizers) * weights).sum()
        correct = ((logits.argmax(-1) == targets) * weights).sum()
        return loss_sum, correct

    def at_chosen_positions():
        _, slots_BxK = jax.lax.top_k(weights_BxL, k)  # chosen first (weights are 0 or 1)
        take = lambda x: jnp.take_along_axis(x, slots_BxK, axis=1)  # noqa: E731
        return sums(jnp.take_along_axis(hidden_BxLxD, slots_BxK[..., None], axis=1),
                    take(targets_BxL), take(weights_BxL))

    if k >= weights_BxL.shape[1]:
        loss_sum, correct = sums(hidden_BxLxD, targets_BxL, weights_BxL)
    else:
        fits = ((weights_BxL > 0).sum(axis=1) <= k).all()
        loss_sum, correct = jax.lax.cond(
            fits, at_chosen_positions, lambda: sums(hidden_BxLxD, targets_BxL, weights_BxL))
    return loss_sum, correct, weights_BxL.sum()


class MaskedLM:
    name = "mlm"

    @staticmethod
    def vocab_positions(seq_len: int) -> int:
        """Positions per example the MLM head runs on (for the FLOP count): the gathered ones."""
        return max_predictions(seq_len, BertMasking.rate)

    def model_kwargs(self, config: ml_collections.ConfigDict) -> dict:
        return {"heads": ("mlm",)}

    def make_examples(self, records: Sequence[dict], tokenizer: Tokenizer,
                      config: ml_collections.ConfigDict, *, train: bool) -> TokenWindows:
        masking = BertMasking(tokenizer, config)  # config errors before data errors
        docs = read_documents(records, config.data.text_column)
        tokens, doc_ids = packing.token_stream(tokenizer.encode_batch(docs), tokenizer)
        windows = packing.Windows(tokens, doc_ids, config.seq_len, config.seq_len,
                                  pad_id=tokenizer.pad_id, keep_partial=not train)
        return TokenWindows(windows, masking)

    def padding_example(self, seq_len: int) -> dict[str, np.ndarray]:
        zeros = np.zeros((seq_len,), np.int32)
        return {"tokens": zeros, "segment_ids": zeros}

    def loss(self, model, batch: dict[str, jax.Array], rng: jax.Array | None,
             regularizers: Regularizers = NO_REGULARIZERS) -> MetricSums:
        hidden = model.hidden_states(batch["inputs"], segment_ids=batch["segment_ids"], rng=rng)
        loss_sum, correct, count = mlm_loss(model, hidden, batch, "weights", regularizers)
        return {"loss": (loss_sum, count), "mlm_accuracy": (correct, count)}
