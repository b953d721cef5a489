"""Speculative decoding: the acceptance rule keeps the target's distribution; greedy output with
any draft model equals the target's own greedy output (left-padded batches whose rows keep
different numbers of drafts, <eos>, sliding windows, latent attention, a mixture); a draft
equal to the target is always accepted; the multi-token-prediction module decodes over its
cache as in training and drafts for its own model; the API, CLI flags and refusals."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import jitted, tiny_config
from flax import nnx

import llmjax
from llmjax.api import Run
from llmjax.configs import ConfigError
from llmjax.data.tokenizers import CharTokenizer
from llmjax.decoding.decoder import continue_prompts, speculate_prompts
from llmjax.decoding.speculative import cache_slots, verify
from llmjax.train.state import build_model

VOCAB = 40


def test_greedy_verification_keeps_the_drafts_the_target_agrees_with():
    # the target's argmax after the pending token and after each draft: 5, 6, 7, 8
    target = jax.nn.one_hot(jnp.asarray([[5, 6, 7, 8]] * 3), 10)
    drafts = jnp.asarray([[5, 6, 7], [5, 9, 7], [1, 6, 7]])
    accepted, next_token = verify(target, jnp.zeros((3, 3, 10)), drafts, jax.random.PRNGKey(0),
                                  temperature=0.0)
    assert accepted.tolist() == [3, 1, 0]
    assert next_token.tolist() == [8, 6, 5]  # after all three: the target's own next token


@pytest.mark.parametrize("filters", [
    {}, pytest.param({"top_k": 3, "temperature": 0.7}, marks=pytest.mark.slow)])
def test_sampled_verification_emits_the_targets_distribution(filters):
    """With context-free distributions p (target) and q (draft), every emitted token, the
    first and the second alike, is drawn from p (filtered as sampling filters it), whatever
    q proposes."""
    k, draws = 2, 40_000
    rng = np.random.default_rng(0)
    p_logits = jnp.asarray(rng.normal(size=6) * 1.5, jnp.float32)
    q_logits = jnp.asarray(rng.normal(size=6) * 1.5, jnp.float32)
    options = {"temperature": 1.0, **filters}
    temperature = options.pop("temperature")

    def one(key):
        draft_key, verify_key = jax.random.split(key)
        drafts = jax.random.categorical(
            draft_key, _filtered(q_logits, temperature, **options), shape=(1, k))
        accepted, next_token = verify(
            jnp.broadcast_to(p_logits, (1, k + 1, 6)), jnp.broadcast_to(q_logits, (1, k, 6)),
            drafts, verify_key, temperature=temperature, **options)
        emitted = jnp.concatenate([drafts[0], jnp.zeros((1,), drafts.dtype)])
        emitted = emitted.at[accepted[0]].set(next_token[0])
        return emitted[0], emitted[1], accepted[0]

    first, second, accepted = jax.vmap(one)(jax.random.split(jax.random.PRNGKey(1), draws))
    expected = np.asarray(jax.nn.softmax(_filtered(p_logits, temperature, **options)))
    np.testing.assert_allclose(np.bincount(first, minlength=6) / draws, expected, atol=0.01)
    two = np.asarray(accepted) >= 1  # rows that emitted a second token
    np.testing.assert_allclose(np.bincount(np.asarray(second)[two], minlength=6) / two.sum(),
                               expected, atol=0.015)
    assert 0.2 < two.mean() < 0.99  # the draft was neither always rejected nor always kept


def _filtered(logits, temperature, top_k=0):
    from llmjax.decoding.sampling import filter_logits

    return filter_logits(logits / temperature, top_k=top_k)


def _decoder(seed: int, **overrides):
    # untied: a random tied model's greedy output repeats its last token
    config = tiny_config(**{"model.vocab_size": VOCAB, "model.tie_embeddings": False,
                            **overrides})
    return build_model(config, seed=seed)


def _perturbed(model, scale: float, seed: int):
    """A copy of `model` with noise added to every parameter: a draft that agrees with it
    often, not always."""
    graphdef, params = nnx.split(model)
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.PRNGKey(seed), len(leaves))
    noisy = [x + scale * jax.random.normal(k, x.shape, x.dtype)
             for x, k in zip(leaves, keys, strict=True)]
    return nnx.merge(graphdef, jax.tree.unflatten(tree, noisy))


PROMPTS = jnp.asarray([[0, 0, 0, 1, 7, 3], [1, 5, 9, 2, 2, 4], [0, 1, 12, 30, 8, 8]])
VALID = (jnp.arange(6)[None] >= jnp.asarray([[3], [0], [1]])).astype(jnp.int32)


def _greedy(target, max_new, eos_id):
    graphdef, params = nnx.split(target)
    return continue_prompts(graphdef, params, PROMPTS, VALID, jax.random.PRNGKey(0),
                            cache_len=PROMPTS.shape[1] + max_new, max_new_tokens=max_new,
                            eos_id=eos_id, temperature=0.0)


def _speculative(target, draft, max_new, eos_id, k, **sampling):
    graphdef, params = nnx.split(target)
    draft_graphdef, draft_params = nnx.split(draft)
    slots = cache_slots(PROMPTS.shape[1], max_new, k)
    return speculate_prompts(graphdef, params, draft_graphdef, draft_params, PROMPTS, VALID,
                             jax.random.PRNGKey(0), cache_len=slots, draft_tokens=k,
                             max_new_tokens=max_new, eos_id=eos_id,
                             **({"temperature": 0.0} | sampling))


@pytest.mark.parametrize("overrides", [
    {},
    {"model.attention_window": 5},  # each row's window from its own write index
    pytest.param({"model.kv_lora_rank": 16, "model.qk_rope_head_dim": 8,
                  "model.position_embedding": "rotary"}, marks=pytest.mark.slow),
    pytest.param({"model.num_experts": 4, "model.num_experts_per_token": 2},
                 marks=pytest.mark.slow),
], ids=["rotary", "window", "latent", "mixture"])
def test_greedy_speculative_decoding_is_the_targets_greedy_decoding(overrides):
    """A draft that often agrees with the target (rows keep different numbers of drafts, so
    their caches' write indices part), and a smaller one that seldom does, give the target's
    greedy tokens; rows that reach <eos> stop there as they do without a draft."""
    target = _decoder(0, **overrides)
    max_new = 12
    plain = np.asarray(_greedy(target, max_new, eos_id=-1))
    eos = int(plain[1, 4])
    expected = np.asarray(_greedy(target, max_new, eos_id=eos))
    for row, tokens in zip(plain, expected, strict=True):  # cut after each row's first <eos>
        end = list(row).index(eos) + 1 if eos in row else max_new
        assert tokens[:end].tolist() == row[:end].tolist() and not tokens[end:].any()
    assert not expected[1, 5:].any()
    close = _perturbed(target, 0.003, seed=3)
    smaller = _decoder(2, **{**overrides, "model.num_layers": 1})
    calls = {}
    for name, draft, k in (("close", close, 3), ("smaller", smaller, 2)):
        tokens, calls[name] = _speculative(target, draft, max_new, eos, k)
        np.testing.assert_array_equal(np.asarray(tokens), expected)
        assert 1 <= int(calls[name]) <= max_new - 1
    assert int(calls["close"]) < int(calls["smaller"])


def test_a_draft_equal_to_the_target_is_always_accepted():
    """Greedy or sampled, the target's own copy as the draft has every proposal kept: each call
    of the target gives K + 1 tokens, and the greedy tokens are the target's."""
    target = _decoder(0)
    max_new, k = 13, 3
    tokens, calls = _speculative(target, target, max_new, -1, k)
    np.testing.assert_array_equal(np.asarray(tokens), np.asarray(_greedy(target, max_new, -1)))
    assert int(calls) == -(-(max_new - 1) // (k + 1))  # after the prompt's call: 3
    tokens, calls = _speculative(target, target, max_new, -1, k, temperature=1.0, top_p=0.9)
    assert int(calls) == 3 and np.asarray(tokens).shape == (3, max_new)


@pytest.fixture(scope="module")
def runs():
    """A target run and a draft run (another initialisation) over one char vocabulary."""
    tokenizer = CharTokenizer.train(["abcdefghij klmnopqrstuvwxyz.,"])
    config = tiny_config(**{"model.vocab_size": tokenizer.vocab_size})
    target = Run(config=config, tokenizer=tokenizer, model=build_model(config, seed=0), step=0)
    draft = Run(config=config, tokenizer=tokenizer, model=build_model(config, seed=5), step=0)
    return target, draft


def test_run_generate_with_a_draft_gives_the_greedy_continuation(runs):
    target, draft = runs
    prompts = ["abc", "hello world", "z"]
    expected = target.generate(prompts, max_new_tokens=10, temperature=0.0)
    assert target.generate(prompts, max_new_tokens=10, temperature=0.0, draft=draft,
                           draft_tokens=3) == expected
    sampled = target.generate(prompts, max_new_tokens=10, temperature=1.0, seed=2, draft=draft)
    assert sampled == target.generate(prompts, max_new_tokens=10, temperature=1.0, seed=2,
                                      draft=draft)  # reproducible with its seed


def test_a_draft_of_another_vocabulary_or_with_beam_search_is_refused(runs):
    target, draft = runs
    other = CharTokenizer.train(["abcdefghij klmnopqrstuvwxyz.;"])  # one character differs
    with pytest.raises(ConfigError, match="the draft model's tokenizer is not this run's"):
        target.generate("abc", draft=Run(config=draft.config, tokenizer=other,
                                         model=draft.model, step=0))
    with pytest.raises(ConfigError, match="speculative decoding samples or decodes greedily"):
        target.generate("abc", beam_size=2, draft=draft)
    with pytest.raises(ConfigError, match="draft_tokens=0 must be at least 1"):
        target.generate("abc", draft=draft, draft_tokens=0)


def test_the_mtp_module_decodes_over_its_cache_as_in_training():
    """mtp_decode fed a prompt, then a token at a time, beside decode's states gives the
    logits the training forward's first multi-token-prediction depth gives."""
    model = _decoder(0, **{"model.mtp_depth": 1})
    tokens = jax.random.randint(jax.random.PRNGKey(1), (2, 12), 1, VOCAB)
    after = jax.random.randint(jax.random.PRNGKey(2), (2, 12), 1, VOCAB)  # any "next tokens"
    _, depths = jitted(model, "multi_token_states")(tokens, after)
    expected = jitted(model, "output_logits")(depths[0])
    graphdef, params = nnx.split(model)

    @jax.jit
    def step(tokens_BxT, after_BxT, cache):
        m = nnx.merge(graphdef, params)
        _, states, new_cache = m.decode(tokens_BxT, cache, with_states=True)
        logits, mtp_cache = m.mtp_decode(states, after_BxT, cache)
        return logits, {**new_cache, "mtp": mtp_cache}

    cache, steps = model.init_cache(2, 16, mtp=True), []
    for lo, hi in [(0, 5)] + [(t, t + 1) for t in range(5, 12)]:
        logits, cache = step(tokens[:, lo:hi], after[:, lo:hi], cache)
        steps.append(logits)
    np.testing.assert_allclose(jnp.concatenate(steps, axis=1), expected, atol=1e-5)


@pytest.fixture(scope="module")
def mtp_workdir(tmp_path_factory):
    """A briefly trained run with one multi-token-prediction module."""
    from llmjax.train.loop import train_and_evaluate

    workdir = tmp_path_factory.mktemp("mtp")
    train_and_evaluate(tiny_config(**{"model.mtp_depth": 1, "num_train_steps": 40,
                                      "model.position_embedding": "rotary"}), workdir)
    return workdir


def test_self_speculation_keeps_exactly_the_drafts_the_module_predicts(mtp_workdir):
    """Greedy self-speculation (draft=mtp) gives the run's greedy tokens, in as many calls as
    the training forward's module predictions say: the draft for output token c is the
    module's argmax at position c - 2 of prompt + output, kept when it is that token."""
    from llmjax.decoding.decoder import self_speculate_prompts

    mtp_run = llmjax.load(mtp_workdir)
    model, max_new = mtp_run.model, 16
    prompts = [mtp_run.tokenizer.encode_array(t) for t in ("abcab", "ba", "cacb")]
    length = max(len(p) for p in prompts)
    tokens = jnp.asarray([[0] * (length - len(p)) + list(p) for p in prompts], jnp.int32)
    valid = jnp.asarray([[0] * (length - len(p)) + [1] * len(p) for p in prompts], jnp.int32)
    graphdef, params = nnx.split(model)
    expected = np.asarray(continue_prompts(
        graphdef, params, tokens, valid, jax.random.PRNGKey(0), cache_len=length + max_new,
        max_new_tokens=max_new, eos_id=-1, temperature=0.0))
    out, calls = self_speculate_prompts(
        graphdef, params, tokens, valid, jax.random.PRNGKey(0),
        cache_len=cache_slots(length, max_new, 1), max_new_tokens=max_new, eos_id=-1)
    np.testing.assert_array_equal(np.asarray(out), expected)
    rounds = []
    forward, head = jitted(model, "multi_token_states"), jitted(model, "output_logits")
    for prompt, output in zip(prompts, expected, strict=True):
        text = np.concatenate([prompt, output])[None]
        after = np.concatenate([text[:, 1:], [[0]]], axis=1)
        _, depths = forward(jnp.asarray(text), jnp.asarray(after))
        predicted = np.asarray(head(depths[0]).argmax(-1))[0]
        count, n = 1, 0
        while count < max_new:
            kept = predicted[len(prompt) + count - 2] == output[count]
            count, n = count + (2 if kept else 1), n + 1
        rounds.append(n)
    assert int(calls) == max(rounds) and min(rounds) < max_new - 1  # some drafts were kept


def test_draft_mtp_needs_the_module(runs):
    with pytest.raises(ConfigError, match="this run has none .model.mtp_depth=0"):
        runs[0].generate("abc", draft="mtp")


def test_the_draft_flag_and_key_load_a_draft(mtp_workdir, capsys):
    """`generate --draft=DIR --draft_tokens=K` loads DIR as the draft (here the run itself,
    whose every proposal is kept), and the generate.draft_workdir key takes `mtp`; the output
    is the run's greedy output without a draft."""
    import types

    from llmjax import commands, workdir_config

    run = llmjax.load(mtp_workdir)
    expected = run.generate("abc", max_new_tokens=8, temperature=0.0)
    flags = {"workdir": str(mtp_workdir), "step": None, "prompt": "abc", "messages": None,
             "max_new_tokens": 8, "temperature": 0.0, "draft": str(mtp_workdir),
             "draft_tokens": 2, "config": workdir_config.get_config(str(mtp_workdir))}
    capsys.readouterr()
    commands.generate(types.SimpleNamespace(**flags))
    assert capsys.readouterr().out == "abc" + expected + "\n"
    run.config.generate.draft_workdir = "mtp"
    assert run.generate("abc", max_new_tokens=8, temperature=0.0) == expected
