"""Tokenizers loaded from Hugging Face files (tokenizer.path): BERT's vocab.txt and a
tokenizer.json, with the special ids of that vocabulary used everywhere."""

import json

import numpy as np
import pytest
from conftest import tiny_config

from llmjax.configs import ConfigError
from llmjax.data import pipeline
from llmjax.data.tokenizers import TokenizerFileError, load_tokenizer, train_tokenizer
from llmjax.objectives import get_objective
from llmjax.train.loop import train_and_evaluate

WORDS = ["the", "cat", "sat", "on", "mat", "a", "dog", "ran", "un", "##aff", "##able", "##s",
         "hello", "world", ",", "!", "."]


def bert_vocab(folder):
    """A vocab.txt laid out as bert-base-uncased's: [PAD] 0, [unused*], [UNK] 100, [CLS] 101,
    [SEP] 102, [MASK] 103, then pieces and single characters in both forms."""
    chars = sorted(set("".join(w.lstrip("#") for w in WORDS)))
    lines = (["[PAD]"] + [f"[unused{i}]" for i in range(99)] + ["[UNK]", "[CLS]", "[SEP]",
             "[MASK]"] + WORDS + chars + [f"##{c}" for c in chars])
    folder.mkdir(exist_ok=True)
    (folder / "vocab.txt").write_text("\n".join(dict.fromkeys(lines)) + "\n")
    return folder


def test_bert_vocab_txt_keeps_its_ids_and_lowercases(tmp_path):
    tok = load_tokenizer(bert_vocab(tmp_path / "bert") / "vocab.txt", lowercase=True)
    assert (tok.kind, tok.pad_id, tok.unk_id, tok.bos_id, tok.eos_id, tok.mask_id) == \
        ("wordpiece", 0, 100, 101, 102, 103)
    ids = tok.encode("Hello, UNAFFABLE Cats!")
    vocab = tok.hf.get_vocab()
    assert ids == [vocab[p] for p in ["hello", ",", "un", "##aff", "##able", "cat", "##s", "!"]]
    assert tok.encode("Zebra") == [100]  # no piece for 'z': the word is [UNK], as BERT does
    assert {0, 100, 101, 102, 103} <= set(tok.special_ids)
    assert tok.decode([101, *ids, 102]) == "hello, unaffable cats!"
    cased = load_tokenizer(tmp_path / "bert", lowercase=False)
    assert cased.encode("Hello") == [100]
    # a Hugging Face tokenizer_config.json that says do_lower_case lower-cases too
    (tmp_path / "bert/tokenizer_config.json").write_text(json.dumps({"do_lower_case": True}))
    assert load_tokenizer(tmp_path / "bert").encode("Hello") == [vocab["hello"]]


def test_mlm_run_with_a_bert_vocabulary_uses_its_special_ids(tmp_path):
    folder = bert_vocab(tmp_path / "bert")
    text = tmp_path / "corpus.txt"
    rng = np.random.default_rng(0)
    text.write_text("\n".join(" ".join(rng.choice(WORDS[:8], 10)) for _ in range(300)) + "\n")
    c = tiny_config(**{"model.arch": "encoder", "objective": "mlm", "model.norm_position": "post",
                       "data.source": f"text:{text}", "tokenizer.path": str(folder),
                       "tokenizer.lowercase": True, "num_train_steps": 2, "log_every_steps": 1,
                       "eval_every_steps": 2, "checkpoint_every_steps": 2})
    metrics = train_and_evaluate(c, tmp_path / "run")
    assert np.isfinite(metrics["eval/loss"])
    saved = load_tokenizer(tmp_path / "run/tokenizer")
    assert (saved.bos_id, saved.eos_id, saved.mask_id, saved.vocab_size) == \
        (101, 102, 103, load_tokenizer(folder, lowercase=True).vocab_size)
    c.model.vocab_size = saved.vocab_size
    obj = get_objective("mlm")
    stream = pipeline.load_examples(c, saved, obj, c.data.source, "train", train=True,
                                    shard=pipeline.HostShard()).windows.tokens
    assert stream[0] == 101 and 102 in stream
    assert not np.isin(stream, [1, 2, 4]).any()  # llmjax's own special ids mean nothing here
    batch = next(iter(pipeline.train_dataset(c, saved, obj)))
    chosen = batch["weights"] > 0
    assert not np.isin(batch["tokens"][chosen], [0, 100, 101, 102, 103]).any()
    assert (batch["inputs"][chosen] == 103).mean() > 0.5  # [MASK], not llmjax's id 4
    swapped = chosen & (batch["inputs"] != 103) & (batch["inputs"] != batch["tokens"])
    assert swapped.any() and not np.isin(batch["inputs"][swapped], [0, 100, 101, 102, 103]).any()


def test_tokenizer_json_without_a_mask_token(tmp_path):
    """A GPT-2-like byte-level BPE: <|endoftext|> is bos, eos and padding; MLM is refused."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    hf = Tokenizer(models.BPE())
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf.decoder = decoders.ByteLevel()
    hf.train_from_iterator(["the cat sat on the mat"] * 50, trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<|endoftext|>"], show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    (tmp_path / "gpt").mkdir()
    hf.save(str(tmp_path / "gpt/tokenizer.json"))
    tok = load_tokenizer(tmp_path / "gpt")
    assert tok.kind == "bpe" and tok.bos_id == tok.eos_id == tok.pad_id == 0
    assert tok.mask_id is None and tok.decode(tok.encode("the cat")) == "the cat"
    text = tmp_path / "corpus.txt"
    text.write_text("the cat sat on the mat\n" * 200)
    c = tiny_config(**{"data.source": f"text:{text}", "tokenizer.path": str(tmp_path / "gpt"),
                       "num_train_steps": 2, "eval_every_steps": 2, "log_every_steps": 1})
    assert np.isfinite(train_and_evaluate(c, tmp_path / "lm")["eval/loss"])
    c = tiny_config(**{"model.arch": "encoder", "objective": "mlm", "data.source": f"text:{text}",
                       "tokenizer.path": str(tmp_path / "gpt")})
    with pytest.raises(ConfigError, match="needs a mask token"):
        train_and_evaluate(c, tmp_path / "mlm")


def test_tokenizer_config_names_the_special_tokens(tmp_path):
    """Special tokens under names llmjax does not know, named in the folder's
    tokenizer_config.json; no pad token: eos pads; the saved copy keeps the ids."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    hf = Tokenizer(models.BPE())
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf.decoder = decoders.ByteLevel()
    hf.train_from_iterator(["the cat sat on the mat"] * 50, trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<|start|>", "<|stop|>"], show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    folder = tmp_path / "hf"
    folder.mkdir()
    hf.save(str(folder / "tokenizer.json"))
    with pytest.raises(TokenizerFileError, match=r"no bos token \(looked for <bos>, \[CLS\]"):
        load_tokenizer(folder)
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "bos_token": "<|start|>", "eos_token": {"content": "<|stop|>", "special": True}}))
    tok = load_tokenizer(folder)
    assert (tok.bos_id, tok.eos_id, tok.pad_id, tok.unk_id, tok.mask_id) == (0, 1, 1, None, None)
    tok.save(tmp_path / "saved")
    again = load_tokenizer(tmp_path / "saved")
    assert (again.bos_id, again.eos_id, again.pad_id, again.unk_id) == (0, 1, 1, None)
    assert again.encode("the cat") == tok.encode("the cat")


def test_missing_tokenizer_files_are_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError,
                       match="holding tokenizer.json, vocab.txt or spiece.model"):
        load_tokenizer(tmp_path)
    # a vocabulary without an unknown-token piece
    (tmp_path / "vocab.txt").write_text("[PAD]\n[CLS]\n[SEP]\nthe\ncat\n")
    with pytest.raises(TokenizerFileError, match="has no unk token .* needs bos, eos, unk tokens"):
        load_tokenizer(tmp_path)


def test_trained_wordpiece_is_deterministic():
    """HF's WordPieceTrainer gives a different vocabulary from run to run (tokenizers#1794)."""
    rng = np.random.default_rng(0)
    words = ["".join(rng.choice(list("abcdefgh"), rng.integers(2, 9))) for _ in range(300)]
    texts = [" ".join(rng.choice(words, 12)) for _ in range(500)]
    first = train_tokenizer("wordpiece", texts, 300).hf.to_str()
    assert all(train_tokenizer("wordpiece", texts, 300).hf.to_str() == first for _ in range(5))
    tok = train_tokenizer("wordpiece", texts, 200)
    assert tok.vocab_size == 200
    assert tok.decode([tok.bos_id, *tok.encode(texts[0]), tok.eos_id, tok.pad_id]) == texts[0]
    assert tok.encode("<mask>") == [tok.mask_id]  # specials are never split
