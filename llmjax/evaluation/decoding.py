"""Decoding-based evaluation of seq2seq runs: the eval sources are decoded (beam search when
`generate.beam_size` > 1, else greedy) and the detokenized outputs scored against the raw
reference texts with the metrics `eval_decode_metrics` names (text_metrics.py: BLEU, chrF,
ROUGE, exact match). An
encoder-decoder encodes each source; a decoder continues its prompt (<bos> source <eos>, or
the chat template's: data/chat.py)."""

from __future__ import annotations

import jax
import ml_collections
import numpy as np
from flax import nnx

from llmjax.data import sources
from llmjax.data.chat import prompt_layout
from llmjax.decoding.decoder import continue_prompts
from llmjax.decoding.encoder_decoder import decode
from llmjax.evaluation.text_metrics import reported_names, text_metrics
from llmjax.objectives.seq2seq import (
    record_conversations,
    seq2seq_arrays,
    source_target_texts,
)


class _EncoderSources:
    """An encoder-decoder: each source (+ <eos>, right-padded) is encoded once, then the target
    is decoded from <bos>."""

    @staticmethod
    def layout(texts: list[str], config: ml_collections.ConfigDict, tokenizer
               ) -> tuple[np.ndarray, np.ndarray]:
        empty = np.zeros((0,), np.int32)
        encoded = tokenizer.encode_batch(texts)
        arrays = seq2seq_arrays(((s, empty) for s in encoded), config.seq_len, 1,
                                tokenizer).arrays
        return arrays["inputs"], arrays["input_segments"]

    @staticmethod
    def stop_id(config: ml_collections.ConfigDict, tokenizer) -> int:
        return tokenizer.eos_id

    @staticmethod
    def answer(text: str, config: ml_collections.ConfigDict, tokenizer) -> str:
        return text

    @staticmethod
    def decode(graphdef, params, inputs, segments, config, tokenizer, **options) -> jax.Array:
        return decode(graphdef, params, inputs, segments, jax.random.PRNGKey(0),
                      bos_id=tokenizer.bos_id, **options)


class _DecoderPrompts:
    """A decoder: each prompt <bos> source <eos>, left-padded to seq_len, is continued over the
    KV cache; with data.messages_column, each conversation up to its last answer."""

    @staticmethod
    def layout(texts: list[str], config: ml_collections.ConfigDict, tokenizer
               ) -> tuple[np.ndarray, np.ndarray]:
        prompts = prompt_layout(config, tokenizer).prompts(texts, tokenizer, config.seq_len)
        return _left_padded(prompts, config.seq_len, tokenizer.pad_id)

    @staticmethod
    def conversation_layout(conversations: list[list[dict]], config: ml_collections.ConfigDict,
                            tokenizer) -> tuple[np.ndarray, np.ndarray]:
        """Each conversation up to its last answer, as training lays it out; a longer one
        than seq_len keeps its last seq_len tokens (the latest turns)."""
        laid_out = prompt_layout(config, tokenizer).conversations(conversations, tokenizer)
        return _left_padded([c.ids[: c.last_answer_at][-config.seq_len:] for c in laid_out],
                            config.seq_len, tokenizer.pad_id)

    @staticmethod
    def stop_id(config: ml_collections.ConfigDict, tokenizer) -> int:
        return prompt_layout(config, tokenizer).stop_id(tokenizer)

    @staticmethod
    def answer(text: str, config: ml_collections.ConfigDict, tokenizer) -> str:
        return prompt_layout(config, tokenizer).answer(text)

    @staticmethod
    def decode(graphdef, params, inputs, valid, config, tokenizer, **options) -> jax.Array:
        return continue_prompts(graphdef, params, inputs, valid, jax.random.PRNGKey(0),
                                cache_len=config.seq_len + config.target_seq_len, **options)


def _left_padded(prompts: list[np.ndarray], length: int, pad_id: int
                 ) -> tuple[np.ndarray, np.ndarray]:
    """(inputs, valid) [len(prompts), length]: each prompt at the right end of its row."""
    inputs = np.full((len(prompts), length), pad_id, np.int32)
    valid = np.zeros((len(prompts), length), np.int32)
    for i, prompt in enumerate(prompts):
        inputs[i, -len(prompt):], valid[i, -len(prompt):] = prompt, 1
    return inputs, valid


# model.arch -> how its eval sources are laid out and decoded
SOURCE_DECODERS = {"encoder_decoder": _EncoderSources, "decoder": _DecoderPrompts}


class DecodingEval:
    """Holds the (sources, references) of an eval split; `__call__(params)` scores a model."""

    @staticmethod
    def metric_names(config: ml_collections.ConfigDict) -> tuple[str, ...]:
        """What __call__ reports."""
        return reported_names(config.eval_decode_metrics)

    def __init__(self, config: ml_collections.ConfigDict, tokenizer, graphdef: nnx.GraphDef,
                 source: str, split: str):
        self.config, self.tokenizer, self.graphdef = config, tokenizer, graphdef
        records = sources.first_records(source, split, config, config.eval_decode_examples)
        self.sources, self.references = source_target_texts(records, config)
        self.decoder = SOURCE_DECODERS[config.model.arch]
        if config.data.messages_column:  # the last answer of each conversation
            self.inputs, self.segments = self.decoder.conversation_layout(
                record_conversations(records, config), config, tokenizer)
        else:
            self.inputs, self.segments = self.decoder.layout(self.sources, config, tokenizer)
        self.stop_id = self.decoder.stop_id(config, tokenizer)

    def hypotheses(self, params: nnx.State) -> list[str]:
        """The decoded text of every eval source."""
        c, tok = self.config, self.tokenizer
        batch = c.batch_size
        out = []
        for lo in range(0, len(self.inputs), batch):
            inputs, segments = self.inputs[lo: lo + batch], self.segments[lo: lo + batch]
            n = len(inputs)
            if n < batch:  # one compiled shape: fill the last batch with copies of its first row
                inputs = np.concatenate([inputs, np.repeat(inputs[:1], batch - n, axis=0)])
                segments = np.concatenate([segments, np.repeat(segments[:1], batch - n, 0)])
            tokens = self.decoder.decode(
                self.graphdef, params, inputs, segments, c, tok, max_new_tokens=c.target_seq_len,
                beam_size=c.generate.beam_size, alpha=c.generate.length_penalty,
                eos_id=self.stop_id, pad_id=tok.pad_id)
            out += [self.decoder.answer(tok.decode_output(row, self.stop_id), c, tok)
                    for row in np.asarray(tokens)[:n]]
        return out

    def __call__(self, params: nnx.State) -> tuple[dict[str, float], list[tuple[str, str, str]]]:
        """({metric: score} of eval_decode_metrics, [(source, reference, hypothesis)] for the
        first eval_samples)."""
        hyps = self.hypotheses(params)
        samples = list(zip(self.sources, self.references, hyps, strict=True))
        return (text_metrics(self.config.eval_decode_metrics, hyps, self.references),
                samples[: self.config.eval_samples])
