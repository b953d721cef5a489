"""SentencePiece: deterministic training with llmjax's special ids, exact round trips, save /
load, and a T5-style spiece.model (no <bos>: the decoder starts from <pad>)."""

import io

import numpy as np
import sentencepiece as spm

from llmjax.data.sentencepiece_tokenizer import SentencePieceTokenizer
from llmjax.data.tokenizers import load_tokenizer, train_tokenizer

TEXTS = ["Ein Mann fährt Fahrrad.", "A man rides a bike.", "Zwei Hunde spielen im Schnee.",
         "Two dogs play in the snow.", "Eine Frau liest ein Buch im Park."] * 40


def test_training_is_deterministic_with_our_special_ids(tmp_path):
    a = train_tokenizer("sentencepiece", TEXTS, 120)
    b = train_tokenizer("sentencepiece", TEXTS, 120)
    assert a.proto == b.proto
    assert (a.pad_id, a.bos_id, a.eos_id, a.unk_id, a.mask_id) == (0, 1, 2, 3, 4)
    text = "Zwei Männer fahren Fahrrad im Schnee."
    assert a.decode(a.encode(text)) == text
    assert a.decode([a.bos_id, *a.encode("Two dogs"), a.eos_id, a.pad_id]) == "Two dogs"
    a.save(tmp_path / "tok")
    loaded = load_tokenizer(tmp_path / "tok")
    assert loaded.kind == "sentencepiece" and loaded.encode(text) == a.encode(text)


def test_t5_style_model_file_keeps_its_ids(tmp_path):
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(TEXTS), model_writer=model,
                                   vocab_size=100, pad_id=0, eos_id=1, unk_id=2, bos_id=-1,
                                   num_threads=1, minloglevel=2, hard_vocab_limit=False)
    (tmp_path / "spiece.model").write_bytes(model.getvalue())
    for path in (tmp_path, tmp_path / "spiece.model"):  # the folder or the file
        tok = load_tokenizer(path)
        assert isinstance(tok, SentencePieceTokenizer)
        assert (tok.pad_id, tok.eos_id, tok.unk_id, tok.bos_id, tok.mask_id) == (0, 1, 2, 0, None)
    sp = spm.SentencePieceProcessor(model_proto=model.getvalue())
    text = "Ein Mann liest im Park."
    np.testing.assert_array_equal(tok.encode_array(text), sp.encode(text))
