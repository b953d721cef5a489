"""Decoding-based evaluation of seq2seq runs: the eval sources are decoded (beam search when
`generate.beam_size` > 1, else greedy) and the detokenized outputs scored against the raw
reference texts: BLEU (sacrebleu's corpus BLEU, 13a tokenization) and exact match. An
encoder-decoder encodes each source; a decoder continues its prompt (<bos> source <eos>)."""

from __future__ import annotations

import jax
import ml_collections
import numpy as np
import sacrebleu
from flax import nnx

from llmjax.data import sources
from llmjax.decoding.decoder import continue_prompts
from llmjax.decoding.encoder_decoder import decode
from llmjax.objectives.seq2seq import prompt_ids, seq2seq_arrays, source_target_texts


class DecodingEval:
    """Holds the (sources, references) of an eval split; `__call__(params)` scores a model."""

    metric_names = ("bleu", "exact_match")  # what __call__ reports

    def __init__(self, config: ml_collections.ConfigDict, tokenizer, graphdef: nnx.GraphDef,
                 source: str, split: str):
        self.config, self.tokenizer, self.graphdef = config, tokenizer, graphdef
        records = sources.open_split(source, split, config)
        limit = config.eval_decode_examples
        if limit:  # None or 0: all of them
            records = sources.RecordSlice(records, 0, min(limit, len(records)))
        self.sources, self.references = source_target_texts(records, config)
        encoded = tokenizer.encode_batch(self.sources)
        if config.model.arch == "decoder":  # prompts left-padded to seq_len, `segments` valid
            self.inputs = np.full((len(encoded), config.seq_len), tokenizer.pad_id, np.int32)
            self.segments = np.zeros((len(encoded), config.seq_len), np.int32)
            for i, source in enumerate(encoded):
                prompt = prompt_ids(source, config.seq_len, tokenizer)
                self.inputs[i, -len(prompt):], self.segments[i, -len(prompt):] = prompt, 1
            return
        empty = np.zeros((0,), np.int32)
        pairs = ((s, empty) for s in encoded)
        arrays = seq2seq_arrays(pairs, len(self.sources), config.seq_len, 1, tokenizer).arrays
        self.inputs, self.segments = arrays["inputs"], arrays["input_segments"]

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
            options = dict(max_new_tokens=c.target_seq_len, beam_size=c.generate.beam_size,
                           alpha=c.generate.length_penalty, eos_id=tok.eos_id,
                           pad_id=tok.pad_id)
            if c.model.arch == "decoder":
                tokens = continue_prompts(self.graphdef, params, inputs, segments,
                                          jax.random.PRNGKey(0),
                                          cache_len=c.seq_len + c.target_seq_len, **options)
            else:
                tokens = decode(self.graphdef, params, inputs, segments, jax.random.PRNGKey(0),
                                bos_id=tok.bos_id, **options)
            out += [tok.decode_output(row) for row in np.asarray(tokens)[:n]]
        return out

    def __call__(self, params: nnx.State) -> tuple[dict[str, float], list[tuple[str, str, str]]]:
        """({bleu, exact_match}, [(source, reference, hypothesis)] for the first eval_samples)."""
        hyps = self.hypotheses(params)
        bleu = sacrebleu.corpus_bleu(hyps, [self.references]).score
        exact = np.mean([h.strip() == r.strip() for h, r in zip(hyps, self.references,
                                                                 strict=True)])
        samples = list(zip(self.sources, self.references, hyps, strict=True))
        return ({"bleu": float(bleu), "exact_match": float(exact)},
                samples[: self.config.eval_samples])
