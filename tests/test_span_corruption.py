"""Span corruption: invertible, T5's lengths, the configured noise density and span length."""

import numpy as np
import pytest
from conftest import tiny_config

from llmjax.data.tokenizers import CharTokenizer
from llmjax.objectives.span_corruption import (
    SpanCorruption,
    corrupt_tokens,
    raw_length,
    span_counts,
    uncorrupt,
)

SENTINELS = [999 - k for k in range(100)]


def spans_of(tokens, inputs, targets):
    """(noise mask over the original tokens, span lengths) recovered from a corrupted pair."""
    mask, lengths = [], []
    sentinel_set = set(SENTINELS)
    spans, current = {}, None
    for t in targets:
        if t in sentinel_set:
            current = spans.setdefault(t, [])
        else:
            current.append(t)
    for t in inputs:
        if t in sentinel_set:
            mask += [True] * len(spans[t])
            lengths.append(len(spans[t]))
        else:
            mask.append(False)
    assert len(mask) == len(tokens)
    return np.array(mask), lengths


@pytest.mark.parametrize("length", [2, 3, 10, 57, 114])
def test_input_and_target_reconstruct_the_text(length):
    rng = np.random.default_rng(length)
    for _ in range(50):
        tokens = rng.integers(5, 900, length)
        inputs, targets = corrupt_tokens(tokens, 0.15, 3.0, SENTINELS, rng)
        assert uncorrupt(inputs, targets, SENTINELS) == tokens.tolist()
        # sentinels appear in order, once each side, and spans are never empty
        used = [t for t in inputs if t in SENTINELS]
        assert used == [t for t in targets if t in SENTINELS] == SENTINELS[: len(used)]


def test_raw_length_matches_t5():
    # T5's random_spans_helper: inputs 512 at density 0.15, mean span 3 -> 568 raw tokens,
    # targets 114
    assert raw_length(512, 114, 0.15, 3.0) == 568
    noise, spans = span_counts(568, 0.15, 3.0)
    assert (568 - noise + spans + 1, noise + spans + 1) == (512, 114)


@pytest.mark.parametrize("density,mean_span", [(0.15, 3.0), (0.3, 5.0)])
def test_noise_density_and_span_length_match_the_settings(density, mean_span):
    rng = np.random.default_rng(0)
    noise_total = token_total = 0
    span_lengths, position_hits = [], np.zeros(100)
    for _ in range(2000):
        tokens = rng.integers(5, 900, 100)
        inputs, targets = corrupt_tokens(tokens, density, mean_span, SENTINELS, rng)
        mask, lengths = spans_of(tokens, inputs, targets)
        noise_total += mask.sum()
        token_total += len(tokens)
        span_lengths += lengths
        position_hits += mask
    assert abs(noise_total / token_total - density) < 0.01
    assert abs(np.mean(span_lengths) - mean_span) < 0.2
    # every mask with these counts is equally likely: away from the ends each position is noise
    # at about the density, and the two ends alike (T5's original mask always ended in noise)
    frequency = position_hits / 2000
    interior = frequency[10:-10]
    assert interior.min() > density * 0.8 and interior.max() < density * 1.2
    assert abs(frequency[0] - frequency[-1]) < 0.05


def test_examples_fill_the_seq2seq_layout():
    c = tiny_config(**{"model.arch": "encoder_decoder", "objective": "span_corruption",
                       "seq_len": 24, "target_seq_len": 8, "tokenizer.extra_ids": 10})
    text = "the quick brown fox jumps over the lazy dog " * 20
    tokenizer = CharTokenizer.train([text])
    c.model.vocab_size = tokenizer.vocab_size + 10
    examples = SpanCorruption().make_examples([{"text": text}], tokenizer, c, train=True)
    batch = examples.corrupt(examples[np.arange(4)], np.random.default_rng(0))
    assert batch["inputs"].shape == (4, 24) and batch["targets"].shape == (4, 8)
    sentinels = set(range(c.model.vocab_size - 10, c.model.vocab_size))
    for row in range(4):
        n_in, n_out = batch["input_segments"][row].sum(), batch["target_segments"][row].sum()
        inputs = batch["inputs"][row, : n_in - 1].tolist()  # without <eos>
        targets = batch["targets"][row, : n_out - 1].tolist()
        assert batch["targets"][row, n_out - 1] == tokenizer.eos_id
        assert batch["decoder_inputs"][row, 0] == tokenizer.bos_id
        np.testing.assert_array_equal(batch["decoder_inputs"][row, 1:n_out],
                                      batch["targets"][row, : n_out - 1])
        assert set(inputs) & sentinels and targets[0] in sentinels
        original = uncorrupt(inputs, targets, sorted(sentinels, reverse=True))
        np.testing.assert_array_equal(original, examples.chunks[row])
    assert batch["weights"].sum() == batch["target_segments"].sum()
