"""Sequence-to-sequence fine-tuning (translation, summarisation, instructions): the target is
predicted token by token from the source (teacher forcing).

An encoder-decoder reads the source with its encoder. Example layout, shared with span
corruption: `inputs`, `input_segments` [S] (source + <eos>, segment 1 = token, 0 = padding);
`decoder_inputs` [T] (<bos> + target), `targets` [T] (target + <eos>), `target_segments`,
`weights` [T].

A decoder reads one sequence, the prompt then the completion: <bos> source <eos> target <eos>
(or, with data.chat_template, the tokenizer's chat template around them: data/chat.py), as
`inputs` / `targets` (shifted by one) / `segment_ids` / `weights` [S + T], with weight only
where the completion (the target and what closes it) is predicted, so the loss is its alone.
With data.messages_column a record is a conversation instead, laid out whole by the chat
template and weighted on every assistant answer; eval decodes its last answer.

Sources are cut to `seq_len` tokens with their special tokens, targets to `target_seq_len`.
With data.pack_pairs, training pairs share rows (segments 1, 2, ... in either layout).
Evaluation adds the scores of `eval_decode_metrics` on decoded outputs (evaluation/decoding.py).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import jax
import ml_collections
import numpy as np

from llmjax.data.chat import prompt_layout, record_messages
from llmjax.data.sources import column_text, iter_records
from llmjax.data.tokenizers import Tokenizer
from llmjax.objectives.base import (
    NO_REGULARIZERS,
    MetricSums,
    Regularizers,
    texts_up_to,
)
from llmjax.objectives.lm_loss import token_sums
from llmjax.objectives.pairs import ArrayExamples


def seq2seq_arrays(pairs: Iterable[tuple[np.ndarray, np.ndarray]], source_len: int,
                   target_len: int, tokenizer: Tokenizer, pack: bool = False) -> ArrayExamples:
    """ArrayExamples in the layout above from (source tokens, target tokens) pairs (without
    special tokens); <eos> is kept when a side is cut. `pack`: consecutive pairs share
    a row while both sides fit (next-fit, as t5x packs), the k-th pair of a row segment k on
    both sides, so the encoder, the decoder and cross-attention keep pairs apart."""
    bos, eos = tokenizer.bos_id, tokenizer.eos_id
    cut = [(np.append(source[: source_len - 1], eos), target[: target_len - 1])
           for source, target in pairs]
    rows: list[list[int]] = []
    used = (source_len, target_len)  # a full row: the first pair starts one
    for i, (source, target) in enumerate(cut):
        need = (len(source), len(target) + 1)
        if not pack or used[0] + need[0] > source_len or used[1] + need[1] > target_len:
            rows.append([])
            used = (0, 0)
        rows[-1].append(i)
        used = (used[0] + need[0], used[1] + need[1])
    arrays = {name: np.zeros((len(rows), length), np.int32) for name, length in (
        ("inputs", source_len), ("input_segments", source_len), ("decoder_inputs", target_len),
        ("targets", target_len), ("target_segments", target_len))}
    arrays["weights"] = np.zeros((len(rows), target_len), np.float32)
    for r, members in enumerate(rows):
        at_source = at_target = 0
        for segment, i in enumerate(members, start=1):
            source, target = cut[i]
            s, t = len(source), len(target) + 1
            arrays["inputs"][r, at_source:at_source + s] = source
            arrays["input_segments"][r, at_source:at_source + s] = segment
            arrays["decoder_inputs"][r, at_target:at_target + t] = np.append(bos, target)
            arrays["targets"][r, at_target:at_target + t] = np.append(target, eos)
            arrays["target_segments"][r, at_target:at_target + t] = segment
            arrays["weights"][r, at_target:at_target + t] = 1.0
            at_source, at_target = at_source + s, at_target + t
    if tokenizer.pad_id:  # padding positions hold the tokenizer's pad id
        for name in ("inputs", "decoder_inputs", "targets"):
            segments = arrays["input_segments" if name == "inputs" else "target_segments"]
            arrays[name][segments == 0] = tokenizer.pad_id
    return ArrayExamples(arrays)


def prompt_completion_arrays(prompts: Sequence[np.ndarray], completions: Sequence[np.ndarray],
                             length: int, pad_id: int, pack: bool = False) -> ArrayExamples:
    """A decoder's ArrayExamples (the layout above): each prompt then its completion, right-
    padded to `length`, weighted where the completion is predicted. `pack`: consecutive pairs
    share a row while they fit (next-fit), segments 1, 2, ... keeping them apart (attention
    and positions restart at each), so short pairs waste few padded positions."""
    return trained_sequence_arrays(
        [np.concatenate([p, c]) for p, c in zip(prompts, completions, strict=True)],
        [np.arange(len(p) + len(c)) >= len(p) for p, c in zip(prompts, completions,
                                                                         strict=True)],
        length, pad_id, pack)


def trained_sequence_arrays(sequences: Sequence[np.ndarray], trained: Sequence[np.ndarray],
                            length: int, pad_id: int, pack: bool = False) -> ArrayExamples:
    """ArrayExamples of token sequences (cut to `length` + 1 tokens), each weighted where
    its `trained` [n] bool tokens are predicted; `pack` as prompt_completion_arrays'."""
    sequences = [s[: length + 1] for s in sequences]
    rows: list[list[int]] = []
    used = length  # a full row: the first sequence starts one
    for i, sequence in enumerate(sequences):
        n = len(sequence) - 1  # positions a sequence takes (inputs, shifted)
        if not pack or used + n > length:
            rows.append([])
            used = 0
        rows[-1].append(i)
        used += n
    count = len(rows)
    arrays = {name: np.full((count, length), pad_id, np.int32) for name in ("inputs", "targets")}
    arrays["segment_ids"] = np.zeros((count, length), np.int32)
    arrays["weights"] = np.zeros((count, length), np.float32)
    for r, members in enumerate(rows):
        at = 0
        for segment, i in enumerate(members, start=1):
            sequence = sequences[i]
            n = len(sequence) - 1
            arrays["inputs"][r, at:at + n] = sequence[:-1]
            arrays["targets"][r, at:at + n] = sequence[1:]
            arrays["segment_ids"][r, at:at + n] = segment
            arrays["weights"][r, at:at + n] = trained[i][1: n + 1]
            at += n
    return ArrayExamples(arrays)


def decoder_examples(sources: Sequence[str], targets: Sequence[str],
                     config: ml_collections.ConfigDict, tokenizer: Tokenizer, *,
                     train: bool = False) -> ArrayExamples:
    """A decoder's examples: prompts of `seq_len` tokens at most, completions of
    `target_len` (data/chat.py's layout); training examples packed with data.pack_pairs."""
    layout = prompt_layout(config, tokenizer)
    return prompt_completion_arrays(
        layout.prompts(sources, tokenizer, config.seq_len),
        layout.completions(targets, tokenizer, config.target_seq_len),
        config.seq_len + config.target_seq_len, tokenizer.pad_id,
        pack=train and config.data.pack_pairs)


def conversation_examples(conversations: Sequence[list[dict]],
                          config: ml_collections.ConfigDict, tokenizer: Tokenizer, *,
                          train: bool = False) -> ArrayExamples:
    """A decoder's examples of whole conversations (data.messages_column), laid out by the
    chat template and cut to `seq_len + target_seq_len` tokens, weighted on every answer."""
    laid_out = prompt_layout(config, tokenizer).conversations(conversations, tokenizer)
    return trained_sequence_arrays([c.ids for c in laid_out], [c.trained for c in laid_out],
                                   config.seq_len + config.target_seq_len, tokenizer.pad_id,
                                   pack=train and config.data.pack_pairs)


def encoder_decoder_examples(sources: Sequence[str], targets: Sequence[str],
                             config: ml_collections.ConfigDict, tokenizer: Tokenizer, *,
                             train: bool = False) -> ArrayExamples:
    pairs = zip(tokenizer.encode_batch(list(sources)), tokenizer.encode_batch(list(targets)),
                strict=True)
    return seq2seq_arrays(pairs, config.seq_len, config.target_seq_len, tokenizer,
                          pack=train and config.data.pack_pairs)


# model.arch -> its example layout (module docstring)
EXAMPLE_LAYOUTS = {"encoder_decoder": encoder_decoder_examples, "decoder": decoder_examples}


def seq2seq_loss(model, batch: dict[str, jax.Array], rng: jax.Array | None,
                 regularizers: Regularizers = NO_REGULARIZERS) -> MetricSums:
    """Teacher-forced cross-entropy and token accuracy over the weighted target tokens, for
    either layout (an encoder-decoder's batches have `decoder_inputs`)."""
    if "decoder_inputs" in batch:
        hidden = model.target_hidden_states(batch["inputs"], batch["decoder_inputs"],
                                            segment_ids=batch["input_segments"],
                                            decoder_segment_ids=batch["target_segments"],
                                            rng=rng)
    else:
        hidden = model.hidden_states(batch["inputs"], segment_ids=batch["segment_ids"], rng=rng)
    weights = batch["weights"]
    loss_sum, correct = token_sums(model, hidden, batch["targets"], weights, regularizers)
    count = weights.sum()
    return {"loss": (loss_sum, count), "token_accuracy": (correct, count)}


def record_conversations(records: Sequence[dict], config: ml_collections.ConfigDict
                         ) -> list[list[dict]]:
    """The conversations of `records` (data.messages_column)."""
    return [record_messages(r, config.data.messages_column, i)
            for i, r in enumerate(iter_records(records))]


def source_target_texts(records: Sequence[dict], config: ml_collections.ConfigDict
                        ) -> tuple[list[str], list[str]]:
    """(sources, targets); of conversations, the message before each one's last answer and
    that answer."""
    d = config.data
    if d.messages_column:
        pairs = [_last_exchange(c) for c in record_conversations(records, config)]
        return [s for s, _ in pairs], [t for _, t in pairs]
    sources, targets = [], []
    for record in iter_records(records):
        sources.append(column_text(record, d.source_column))
        targets.append(column_text(record, d.target_column))
    return sources, targets


def _last_exchange(messages: list[dict]) -> tuple[str, str]:
    last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
    return (messages[last - 1]["content"] if last else ""), messages[last]["content"]


class Seq2Seq:
    name = "seq2seq"
    chunks_logits = True  # its loss honours model.logits_chunks (lm_loss.token_sums)
    decodes = True  # generate answers a prompt laid out as a source

    @staticmethod
    def host_eval() -> type:
        """What evaluation adds on the host: the sources decoded and scored (BLEU, ...)."""
        from llmjax.evaluation.decoding import DecodingEval

        return DecodingEval

    @staticmethod
    def example_length(config: ml_collections.ConfigDict) -> int:
        """Tokens per example, for FLOP counts: a decoder reads source and target as one
        sequence (an encoder-decoder's are counted per side)."""
        return config.seq_len + config.target_seq_len

    def model_kwargs(self, config: ml_collections.ConfigDict) -> dict:
        return {}

    def tokenizer_texts(self, records: Sequence[dict], config: ml_collections.ConfigDict,
                        limit_chars: int) -> list[str]:
        """Both sides, for one shared vocabulary (alternating, so a cut keeps both); every
        message of a conversation."""
        d = config.data
        if d.messages_column:
            groups = ([m["content"] for m in messages]
                      for messages in record_conversations(records, config))
        else:
            groups = ([column_text(r, d.source_column), column_text(r, d.target_column)]
                      for r in iter_records(records))
        return texts_up_to(groups, limit_chars)

    def make_examples(self, records: Sequence[dict], tokenizer: Tokenizer,
                      config: ml_collections.ConfigDict, *, train: bool) -> ArrayExamples:
        if config.data.messages_column:
            return conversation_examples(record_conversations(records, config), config,
                                         tokenizer, train=train)
        sources, targets = source_target_texts(records, config)
        return EXAMPLE_LAYOUTS[config.model.arch](sources, targets, config, tokenizer,
                                                  train=train)

    def loss(self, model, batch: dict[str, jax.Array], rng: jax.Array | None,
             regularizers: Regularizers = NO_REGULARIZERS) -> MetricSums:
        return seq2seq_loss(model, batch, rng, regularizers)
