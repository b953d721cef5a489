"""BERT masking statistics: ~15% chosen, 80/10/10, specials and padding never chosen."""

import numpy as np

from llmjax.data.masking import mask_tokens, max_predictions

MASK = 4


def test_masking_statistics_and_exclusions():
    rng = np.random.default_rng(0)
    length, trials = 128, 400
    chosen = mask_count = random_count = kept = maskable_total = 0
    for _ in range(trials):
        tokens = rng.integers(10, 100, length)
        tokens[0], tokens[-20:] = 1, 0  # [CLS]-like special and padding
        maskable = (tokens >= 10)
        out = mask_tokens(tokens, rng, mask_id=MASK, random_ids=np.arange(10, 100),
                          maskable_L=maskable)
        w = out["weights"].astype(bool)
        assert w.sum() <= max_predictions(length), "the MLM loss gathers at most this many"
        assert not w[~maskable].any(), "special tokens and padding are never chosen"
        assert (out["inputs"][~w] == tokens[~w]).all(), "unchosen tokens are untouched"
        assert (out["targets"] == tokens).all()
        chosen += w.sum()
        maskable_total += maskable.sum()
        mask_count += (out["inputs"][w] == MASK).sum()
        kept += (out["inputs"][w] == tokens[w]).sum()
        random_count += ((out["inputs"][w] != MASK) & (out["inputs"][w] != tokens[w])).sum()
    assert abs(chosen / maskable_total - 0.15) < 0.005
    # random replacements equal to the original (~1/90 of them) count as kept
    assert abs(mask_count / chosen - 0.8) < 0.02
    assert abs(random_count / chosen - 0.1 * 89 / 90) < 0.015
    assert abs(kept / chosen - (0.1 + 0.1 / 90)) < 0.015


def test_whole_word_masking_takes_words_whole():
    rng = np.random.default_rng(1)
    tokens = np.arange(10, 70)
    starts = np.zeros(60, bool)
    starts[::3] = True  # 20 words of 3 tokens
    for _ in range(50):
        out = mask_tokens(tokens, rng, mask_id=MASK, random_ids=np.arange(10, 70),
                          maskable_L=np.ones(60, bool), word_starts_L=starts)
        per_word = out["weights"].reshape(20, 3)
        assert set(per_word.sum(axis=1)) <= {0.0, 3.0}
        assert per_word.sum() == 9  # round(0.15 * 60) = 9 tokens = 3 words


def test_whole_words_never_overshoot_the_count():
    """BERT's rule: a word that would take the chosen tokens past round(0.15 n) is skipped, so
    max_predictions bounds whole-word masking too (words of 1 to 7 tokens here)."""
    rng = np.random.default_rng(3)
    for _ in range(200):
        starts = rng.random(128) < 0.3
        out = mask_tokens(np.arange(10, 138), rng, mask_id=MASK, random_ids=np.arange(10, 138),
                          maskable_L=np.ones(128, bool), word_starts_L=starts)
        assert 0 < out["weights"].sum() <= round(0.15 * 128) <= max_predictions(128)


def test_each_call_draws_a_new_mask():
    rng = np.random.default_rng(2)
    tokens = np.arange(10, 110)
    draws = {mask_tokens(tokens, rng, mask_id=MASK, random_ids=tokens,
                         maskable_L=np.ones(100, bool))["weights"].tobytes() for _ in range(5)}
    assert len(draws) == 5
