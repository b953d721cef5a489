"""Causal language modelling: predict each token from the ones before it in its document."""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from llmjax.data import packing
from llmjax.data.sources import read_documents
from llmjax.data.tokenizers import Tokenizer
from llmjax.models.mtp import shifted
from llmjax.objectives import distillation
from llmjax.objectives.base import NO_REGULARIZERS, MetricSums, Regularizers
from llmjax.objectives.lm_loss import token_sums


class CausalLM:
    name = "causal_lm"
    chunks_logits = True  # its loss honours model.logits_chunks (lm_loss.token_sums)
    # restored from init.workdir / init.hf_path when the source has them, else new
    optional_modules = ("mtp",)

    def model_kwargs(self, config: ml_collections.ConfigDict) -> dict:
        return {}

    def make_examples(self, records: Sequence[dict], tokenizer: Tokenizer,
                      config: ml_collections.ConfigDict, *, train: bool) -> packing.Windows:
        docs = read_documents(records, config.data.text_column)
        tokens, doc_ids = packing.token_stream(tokenizer.encode_batch(docs), tokenizer)
        stride, scored_tail = config.seq_len, None
        if train and config.data.train_window_stride:
            stride = config.data.train_window_stride
        sliding = config.data.eval_window_stride
        if not train and sliding and sliding < config.seq_len:
            stride = scored_tail = sliding
        return packing.Windows(tokens, doc_ids, config.seq_len, stride,
                               keep_partial=not train, pad_id=tokenizer.pad_id,
                               scored_tail=scored_tail)

    def padding_example(self, seq_len: int) -> dict[str, np.ndarray]:
        zeros = np.zeros((seq_len,), np.int32)
        return {"inputs": zeros, "targets": zeros, "segment_ids": zeros,
                "weights": np.zeros((seq_len,), np.float32)}

    def loss(self, model, batch: dict[str, jax.Array], rng: jax.Array | None,
             regularizers: Regularizers = NO_REGULARIZERS) -> MetricSums:
        seg, targets, weights = batch["segment_ids"], batch["targets"], batch["weights"]
        if getattr(model, "mtp", None):
            hidden, depths = model.multi_token_states(batch["inputs"], targets, segment_ids=seg,
                                                      rng=rng)
        else:
            hidden = model.hidden_states(batch["inputs"], segment_ids=seg, rng=rng)
            depths = []
        count = weights.sum()
        if "teacher_logits" in batch:  # training with distill.teacher_workdir
            loss_sum, correct, kl = distillation.distillation_sums(
                model.output_logits(hidden), batch["teacher_logits"], targets, weights,
                regularizers)
            sums = {"loss": (loss_sum, count), "token_accuracy": (correct, count),
                    "distill_kl": (kl, count)}
        else:
            loss_sum, correct = token_sums(model, hidden, targets, weights, regularizers)
            sums = {"loss": (loss_sum, count), "token_accuracy": (correct, count)}
        if depths:
            sums["mtp_loss"] = self._mtp_sums(model, depths, batch, regularizers)
        return sums

    def teacher_logits(self, teacher, batch: dict[str, jax.Array]) -> jax.Array:
        """A distillation teacher's logits for a batch (what `loss` reads as teacher_logits)."""
        return distillation.teacher_logits(teacher, batch)

    def _mtp_sums(self, model, depths: list[jax.Array], batch: dict[str, jax.Array],
                  regularizers: Regularizers) -> tuple[jax.Array, jax.Array]:
        """(the multi-token-prediction depths' cross-entropy sums, their weights), each
        averaged over the depths: depth k (from 1) at position i predicts targets[i + k],
        weighted as the next-token loss weights it there, when both positions are in one
        document. Their ratio is DeepSeek-V3's L_MTP (train/mtp_loss); the train step adds
        the sum over the next-token loss's weight, so that any split of the batch adds the
        same."""
        seg, targets, weights = batch["segment_ids"], batch["targets"], batch["weights"]
        total = count = jnp.float32(0.0)
        for k, hidden in enumerate(depths, start=1):
            depth_weights = shifted(weights, k) * (shifted(seg, k) == seg)
            total = total + token_sums(model, hidden, shifted(targets, k), depth_weights,
                                       regularizers)[0]
            count = count + depth_weights.sum()
        return total / len(depths), count / len(depths)

    def loss_floor(self, config: ml_collections.ConfigDict, tokenizer,
                   eval_batches: list[dict[str, np.ndarray]]) -> float | None:
        """The Bayes-optimal eval loss, for the `generated` source with a char/byte tokenizer."""
        from llmjax.data import pipeline, sources
        from llmjax.data.generated import best_achievable_loss

        source, _ = pipeline.eval_source_and_split(config)
        if source != "generated" or tokenizer.kind not in ("char", "byte"):
            return None
        train_docs = sources.read_documents(
            sources.open_split("generated", config.data.train_split, config), "text")
        return best_achievable_loss(config.data.generated, tokenizer, eval_batches, train_docs)
