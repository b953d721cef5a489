"""data.eval_window_stride: a causal LM's sliding-window evaluation scores every token once,
each with at least seq_len - stride tokens of context (Hugging Face's strided perplexity).
A trained model's sliding evaluation: test_train.py's generated-floor test."""

import numpy as np
import pytest
from conftest import tiny_config

from llmjax import configs, validation
from llmjax.data import packing
from llmjax.data.tokenizers import ByteTokenizer


def scored_targets(windows: packing.Windows, n: int) -> tuple[np.ndarray, list[int]]:
    """(how often each of the first n stream positions is a weighted target, the smallest
    in-window position of a weighted target in every window after the first)."""
    counts = np.zeros(len(windows.tokens), np.int64)
    earliest = []
    for i in range(len(windows)):
        weights = windows[np.asarray([i])]["weights"][0]
        start = (windows.lo + i) * windows.stride
        counts[start + 1 + np.flatnonzero(weights)] += 1
        if windows.lo + i > 0 and weights.any():
            earliest.append(int(np.flatnonzero(weights)[0]))
    assert not counts[n:].any()  # the padding past the stream is never a target
    return counts[:n], earliest


def test_sliding_windows_score_every_target_once_with_long_context():
    rng = np.random.default_rng(0)
    docs = [rng.integers(10, 60, n).astype(np.int32) for n in (23, 5, 40, 17)]
    tokens, doc_ids = packing.token_stream(docs, ByteTokenizer())
    L, S = 8, 3
    disjoint = packing.Windows(tokens, doc_ids, L, L, keep_partial=True)
    sliding = packing.Windows(tokens, doc_ids, L, S, keep_partial=True, scored_tail=S)
    once, _ = scored_targets(disjoint, len(tokens))
    counts, earliest = scored_targets(sliding, len(tokens))
    np.testing.assert_array_equal(counts, once)  # the same targets, each scored once
    assert once.sum() == sum(len(d) + 1 for d in docs)  # <bos> predicts the first, ... <eos>
    assert min(earliest) >= L - S  # at least L - S tokens before each
    # a host's shard of the windows: only the global first window scores its head
    halves = [scored_targets(sliding.shard(k, 2), len(tokens))[0] for k in range(2)]
    np.testing.assert_array_equal(halves[0] + halves[1], once)


def test_a_stride_longer_than_seq_len_is_refused():
    config = tiny_config(**{"data.eval_window_stride": 33})
    with pytest.raises(configs.ConfigError, match="eval_window_stride=33 is longer than"):
        validation.validate(config)
