"""Encoder-decoder end to end: a generated transduction task learnt to >= 95% exact match,
generate (greedy and beam) and eval through the CLI, parallel files, TFDS translation and
summarisation data, and fine-tuning from a span-corruption run."""

import json
import types

import jax
import numpy as np
import pytest
from conftest import optimised, tiny_config
from flax import nnx

import llmjax
from llmjax import commands
from llmjax.data import sources
from llmjax.data.text_builder import DataError
from llmjax.train.loop import train_and_evaluate


def seq2seq_config(**overrides):
    base = {"model.arch": "encoder_decoder", "objective": "seq2seq", "seq_len": 16,
            "target_seq_len": 16, "model.max_len": 16, "model.position_embedding": "relative",
            "model.emb_dim": 64, "model.num_heads": 4, "model.mlp_dim": 128,
            "tokenizer.extra_ids": 0, "batch_size": 32, "optimizer.warmup_steps": 50,
            "generate.temperature": 0.0}
    return tiny_config(**{**base, **overrides})


@pytest.fixture(scope="module")
def reverse_run(tmp_path_factory):
    """A tiny encoder-decoder trained to reverse strings of 1..8 letters (measured: exact match
    0.995 after these 500 steps, 0.98 with XLA's default -O2 instead of the tests' -O1; 400
    steps at lr 1e-2 gave 0.985 at -O2 and 0.945 at -O1, too close to the bound)."""
    workdir = tmp_path_factory.mktemp("reverse")
    c = seq2seq_config(**{"data.source": "generated:reverse", "num_train_steps": 500,
                          "optimizer.learning_rate": 6e-3,
                          "data.generated.max_pair_length": 8,
                          "data.generated.train_documents": 5000,
                          "data.generated.eval_documents": 200, "eval_every_steps": 500,
                          "log_every_steps": 100, "checkpoint_every_steps": 500})
    metrics = train_and_evaluate(optimised(c), workdir)
    return workdir, metrics


def test_reversal_is_learnt_to_exact_match(reverse_run):
    workdir, metrics = reverse_run
    assert metrics["eval/exact_match"] >= 0.95, metrics
    assert metrics["eval/token_accuracy"] >= 0.95
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert any("eval/bleu" in r for r in rows)


def test_generate_and_eval_through_the_api_and_cli(reverse_run, capsys):
    workdir, metrics = reverse_run
    run = llmjax.load(workdir)
    assert run.generate("abcdefg", beam_size=4) == run.generate("abcdefg") == "gfedcba"
    # log p(target | source): the reversal is near-certain, a copy is not; batch = one by one
    ll = run.log_likelihood(["abcdefg", "hij"], ["gfedcba", "hij"])
    assert ll[0] > np.log(0.5) and ll[1] < np.log(0.01)
    np.testing.assert_allclose(ll[1], run.log_likelihood(["hij"], ["hij"])[0], atol=1e-5)
    sources = ["abcdefg", "hij", "kalbe"]  # a batch: each as if decoded alone
    assert run.generate(sources) == run.generate(sources, beam_size=4) == [
        "gfedcba", "jih", "eblak"]
    flags = types.SimpleNamespace(workdir=str(workdir), step=None, config=run.config,
                                  prompt="hgfe", messages=None, max_new_tokens=None,
                                  temperature=None, top_k=None, top_p=None, seed=None,
                                  beam_size=4)
    commands.generate(flags)  # what `llmjax generate --beam_size=4` runs
    assert capsys.readouterr().out.strip() == "efgh"  # the output alone, not the prompt
    assert run.hidden_states(["abc", "a"]).shape == (2, 4, 64)  # text + <eos>
    run.config.generate.beam_size = 2
    run.config.eval_decode_metrics = "exact_match,rouge,chrf"
    flags = types.SimpleNamespace(workdir=str(workdir), step=None, config=run.config,
                                  split=None)
    commands.eval(flags)  # `llmjax eval --config.generate.beam_size=2 --config.eval_decode_...`
    out = capsys.readouterr().out
    evaluated = json.loads(out[out.index("{"):])
    assert evaluated["eval/exact_match"] >= 0.95 and "eval/bleu" not in evaluated
    # each output is one word: ROUGE (a mean over examples) scores an exact match 100 and a
    # miss at most partly; chrF counts character n-grams over the corpus, misses spoil it
    for name in ("rouge1", "rougeL", "rougeLsum"):
        assert 100 * evaluated["eval/exact_match"] <= evaluated[f"eval/{name}"] <= 100
    assert evaluated["eval/rouge2"] == 0.0  # one word has no bigram
    assert 90 < evaluated["eval/chrf"] <= 100
    assert (evaluated["eval/chrf"] == 100) == (evaluated["eval/exact_match"] == 1)
    np.testing.assert_allclose(evaluated["eval/loss"], metrics["eval/loss"], rtol=1e-5)


def test_parallel_files_pair_line_by_line(tmp_path):
    (tmp_path / "a.en").write_text("one\ntwo\nthree\n")
    (tmp_path / "a.de").write_text("eins\nzwei\ndrei\n")
    c = seq2seq_config(**{"data.validation_fraction": 0.0})
    records = sources.open_split(f"parallel:{tmp_path}/*.en|{tmp_path}/*.de", "train", c)
    assert [(r["source"], r["target"]) for r in (records[i] for i in range(3))] == [
        (b"one", b"eins"), (b"two", b"zwei"), (b"three", b"drei")]
    (tmp_path / "b.de").write_text("vier\n")
    with pytest.raises(DataError, match="3 lines .* 4"):
        sources.open_split(f"parallel:{tmp_path}/*.en|{tmp_path}/*.de", "train", c)
    with pytest.raises(DataError, match=r"parallel:SOURCE_GLOB\|TARGET_GLOB"):
        sources.open_split(f"parallel:{tmp_path}/a.en", "train", c)


@pytest.mark.slow
def test_tfds_translation_catalog_with_mock_data(tmp_path):
    import tensorflow_datasets as tfds

    c = seq2seq_config(**{"data.source": "tfds:wmt14_translate/de-en", "data.source_column": "en",
                          "data.target_column": "de", "tokenizer.kind": "byte",
                          "num_train_steps": 4, "eval_every_steps": 4, "eval_steps": 1,
                          "eval_decode_examples": 8, "seq_len": 32, "target_seq_len": 32,
                          "model.max_len": 32})
    with tfds.testing.mock_data(num_examples=64):
        metrics = train_and_evaluate(c, tmp_path / "wmt")
    assert np.isfinite(metrics["eval/loss"]) and 0.0 <= metrics["eval/bleu"] <= 100.0


@pytest.mark.slow
def test_tfds_summarisation_catalog_scored_by_rouge_with_mock_data(tmp_path):
    import tensorflow_datasets as tfds

    c = seq2seq_config(**{"data.source": "tfds:samsum", "data.source_column": "dialogue",
                          "data.target_column": "summary", "tokenizer.kind": "byte",
                          "num_train_steps": 4, "eval_every_steps": 4, "eval_steps": 1,
                          "eval_decode_examples": 8, "eval_decode_metrics": "rouge",
                          "seq_len": 32, "target_seq_len": 32, "model.max_len": 32})
    with tfds.testing.mock_data(num_examples=64):
        metrics = train_and_evaluate(c, tmp_path / "samsum")
    assert np.isfinite(metrics["eval/loss"])
    assert all(0.0 <= metrics[f"eval/{n}"] <= 100.0
               for n in ("rouge1", "rouge2", "rougeL", "rougeLsum"))


@pytest.mark.slow
def test_seq2seq_fine_tunes_from_a_span_corruption_run(tmp_path):
    pretrain = tiny_config(**{"model.arch": "encoder_decoder", "objective": "span_corruption",
                              "seq_len": 24, "target_seq_len": 8, "tokenizer.extra_ids": 8,
                              "model.position_embedding": "relative", "num_train_steps": 10})
    train_and_evaluate(pretrain, tmp_path / "pre")
    pre = llmjax.load(tmp_path / "pre")
    # learning rate 0: after one step the parameters are still exactly the pretrained ones
    c = seq2seq_config(**{"data.source": "generated:copy", "tokenizer.extra_ids": 8,
                          "init.workdir": str(tmp_path / "pre"), "num_train_steps": 1,
                          "optimizer.learning_rate": 0.0, "optimizer.end_learning_rate": 0.0,
                          "eval_decode_examples": 4, "seq_len": 24, "target_seq_len": 8,
                          "model.max_len": 64, "model.emb_dim": 32, "model.num_heads": 2,
                          "model.mlp_dim": 64})
    train_and_evaluate(c, tmp_path / "ft")
    ft = llmjax.load(tmp_path / "ft")
    assert (tmp_path / "ft" / "tokenizer" / "vocab.json").read_text() == (
        tmp_path / "pre" / "tokenizer" / "vocab.json").read_text()
    for a, b in zip(jax.tree.leaves(nnx.state(pre.model)), jax.tree.leaves(nnx.state(ft.model)),
                    strict=True):
        np.testing.assert_array_equal(a, b)


def test_a_decoder_example_is_prompt_then_completion_with_loss_on_the_completion():
    from llmjax.data.tokenizers import ByteTokenizer
    from llmjax.objectives.seq2seq import decoder_examples

    tok = ByteTokenizer()
    bos, eos, pad = tok.bos_id, tok.eos_id, tok.pad_id
    source, target = tok.encode_array("abc"), tok.encode_array("xy")
    a, b, c, x, y = (*source, *target)
    arrays = decoder_examples(["abc", "abcdefgh"], ["xy", "xy"],
                              tiny_config(**{"seq_len": 5, "target_seq_len": 4}), tok).arrays
    np.testing.assert_array_equal(arrays["inputs"][0], [bos, a, b, c, eos, x, y, pad, pad])
    np.testing.assert_array_equal(arrays["targets"][0], [a, b, c, eos, x, y, eos, pad, pad])
    np.testing.assert_array_equal(arrays["weights"][0], [0, 0, 0, 0, 1, 1, 1, 0, 0])
    np.testing.assert_array_equal(arrays["segment_ids"][0], [1] * 7 + [0, 0])
    # a source cut to seq_len = 5 tokens with <bos> and <eos>: the first three letters kept
    np.testing.assert_array_equal(arrays["inputs"][1][:5], [bos, a, b, c, eos])


@pytest.mark.slow  # 13 s; packed encoder-decoder pairs run by default below
def test_packed_pairs_share_rows_and_give_the_loss_of_unpacked_ones():
    """data.pack_pairs: consecutive pairs fill a row while they fit, each its own segment;
    the loss sums and token counts of a model over packed rows equal those over one pair per
    row (attention and positions restart at each segment)."""
    from llmjax.data.tokenizers import ByteTokenizer
    from llmjax.objectives.seq2seq import decoder_examples, seq2seq_loss
    from llmjax.train.state import build_model

    tok = ByteTokenizer()
    c = tiny_config(**{"objective": "seq2seq", "seq_len": 6, "target_seq_len": 4,
                       "data.pack_pairs": True, "model.position_embedding": "rotary",
                       "model.vocab_size": tok.vocab_size})
    sources, targets = ["ab", "c", "d", "efgh", "ij"], ["x", "y", "z", "uvw", "t"]
    packed = decoder_examples(sources, targets, c, tok, train=True).arrays
    one_each = decoder_examples(sources, targets, c, tok, train=False).arrays
    # rows of 10: 5 + 4 positions, then 4, then 8 (the cut source), then 4
    np.testing.assert_array_equal(packed["segment_ids"][0], [1] * 5 + [2] * 4 + [0])
    assert len(packed["inputs"]) == 4 and len(one_each["inputs"]) == 5
    # <bos> a b <eos> | x <eos>, then <bos> c <eos> | y <eos>: weight where x, y and <eos> come
    np.testing.assert_array_equal(packed["weights"][0], [0, 0, 0, 1, 1, 0, 0, 1, 1, 0])
    model = build_model(c)
    graphdef, params = nnx.split(model)

    def sums(arrays):
        metrics = seq2seq_loss(nnx.merge(graphdef, params),
                               {k: jax.numpy.asarray(v) for k, v in arrays.items()}, None)
        return [float(x) for x in metrics["loss"]]

    np.testing.assert_allclose(sums(packed), sums(one_each), rtol=1e-5)


@pytest.mark.parametrize("positions", ["relative", pytest.param("learned",
                                                                marks=pytest.mark.slow)])
def test_packed_encoder_decoder_pairs_give_the_loss_and_gradients_of_unpacked_ones(positions):
    """data.pack_pairs with an encoder-decoder: pairs share a row while both sides fit, the
    k-th pair segment k of source and target, and cross-attention keeps pairs apart: loss
    sums, token counts and gradients equal those of one pair per row."""
    from llmjax.data.tokenizers import ByteTokenizer
    from llmjax.objectives.seq2seq import encoder_decoder_examples, seq2seq_loss
    from llmjax.train.state import build_model

    tok = ByteTokenizer()
    c = seq2seq_config(**{"seq_len": 8, "target_seq_len": 6, "model.max_len": 8,
                          "data.pack_pairs": True, "model.position_embedding": positions,
                          "model.vocab_size": tok.vocab_size, "model.emb_dim": 32,
                          "model.mlp_dim": 64})
    sources, targets = ["ab", "c", "defghijkl", "m", "no"], ["x", "yz", "u", "vw", "t"]
    packed = encoder_decoder_examples(sources, targets, c, tok, train=True).arrays
    one_each = encoder_decoder_examples(sources, targets, c, tok, train=False).arrays
    # sources + <eos> take 3, 2, 8 (cut), 2, 3 positions of 8; <bos> + targets 2, 3, 2, 3, 2 of 6
    assert len(packed["inputs"]) == 3 and len(one_each["inputs"]) == 5
    np.testing.assert_array_equal(packed["input_segments"][0], [1, 1, 1, 2, 2, 0, 0, 0])
    np.testing.assert_array_equal(packed["target_segments"][0], [1, 1, 2, 2, 2, 0])
    np.testing.assert_array_equal(packed["input_segments"][2], [1, 1, 2, 2, 2, 0, 0, 0])
    graphdef, params = nnx.split(build_model(c))

    @jax.jit
    def value_and_grads(p, batch):
        return jax.value_and_grad(
            lambda p: seq2seq_loss(nnx.merge(graphdef, p), batch, None)["loss"],
            has_aux=True)(p)

    def loss_and_grads(arrays):
        (total, count), grads = value_and_grads(params, arrays)
        return float(total), float(count), grads

    packed_loss, packed_count, packed_grads = loss_and_grads(packed)
    loss, count, grads = loss_and_grads(one_each)
    assert packed_count == count == 12  # each target and its <eos>
    np.testing.assert_allclose(packed_loss, loss, rtol=1e-5)
    for a, b in zip(jax.tree.leaves(packed_grads), jax.tree.leaves(grads), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


@pytest.fixture(scope="module")
def decoder_reverse_run(tmp_path_factory):
    """A tiny decoder fine-tuned on source -> target pairs (prompt <bos> source <eos>, loss on
    the target alone) to reverse strings of 1..6 letters."""
    workdir = tmp_path_factory.mktemp("decoder_reverse")
    rng = np.random.default_rng(0)
    items = []
    for _ in range(40):  # which of reverse, copy, rotation is the target: the reverse
        word = "".join(rng.choice(list("abcdefghijkl"), rng.integers(3, 7), replace=False))
        options = [word[::-1], word, word[1:] + word[0]]
        order = rng.permutation(3)
        items.append({"context": word, "choices": [options[i] for i in order],
                      "label": int(np.flatnonzero(order == 0)[0])})
    choices_file = workdir / "choices.jsonl"
    choices_file.write_text("".join(json.dumps(i) + "\n" for i in items))
    c = tiny_config(**{"objective": "seq2seq", "data.source": "generated:reverse",
                       "seq_len": 8, "target_seq_len": 8, "model.max_len": 16,
                       "model.position_embedding": "rotary", "model.emb_dim": 64,
                       "model.num_heads": 4, "model.mlp_dim": 128, "batch_size": 32,
                       "num_train_steps": 500, "optimizer.learning_rate": 6e-3,
                       "optimizer.warmup_steps": 50, "generate.temperature": 0.0,
                       "data.generated.max_pair_length": 6,
                       "data.generated.train_documents": 5000,
                       "data.generated.eval_documents": 200, "eval_every_steps": 500,
                       "log_every_steps": 100, "checkpoint_every_steps": 500,
                       "data.extra_eval_sources": "copy=generated:copy",
                       "data.choice_eval_sources": f"mc=jsonl:{choices_file}"})
    return workdir, train_and_evaluate(optimised(c), workdir)


def test_a_decoder_learns_source_to_target_pairs(decoder_reverse_run, capsys):
    workdir, metrics = decoder_reverse_run
    assert metrics["eval/exact_match"] >= 0.9, metrics
    # an extra eval set is decoded too: a reverser copies only palindromes (one letter, ...)
    assert metrics["eval_copy/exact_match"] < 0.5 and "eval_copy/bleu" in metrics
    # multiple choice scores each choice as the target of the prompt: the reverse wins
    assert metrics["eval_mc/choice_accuracy"] >= 0.9, metrics
    run = llmjax.load(workdir)
    assert run.answers_prompts and not run.is_seq2seq
    # generate answers the prompt: the same outputs greedy and with beams, as the eval decodes
    assert run.generate(["abcdef", "hij"]) == run.generate(["abcdef", "hij"], beam_size=3) == [
        "fedcba", "jih"]
    ll = run.log_likelihood(["abcdef", "hij"], ["fedcba", "hij"])
    assert ll[0] > np.log(0.5) and ll[1] < np.log(0.01)
    flags = types.SimpleNamespace(workdir=str(workdir), step=None, config=run.config,
                                  prompt="hgfe", messages=None, max_new_tokens=None,
                                  temperature=None, top_k=None, top_p=None, seed=None,
                                  beam_size=None)
    commands.generate(flags)
    assert capsys.readouterr().out.strip() == "efgh"  # the output alone, not the prompt
