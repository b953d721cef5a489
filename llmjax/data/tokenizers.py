"""Tokenizers: char and byte (exact, numpy-fast), byte-level BPE and WordPiece (HF `tokenizers`).

Every tokenizer reserves ids 0..4 for <pad>, <bos>, <eos>, <unk>, <mask> (<bos>/<eos> double as
BERT's [CLS]/[SEP]), is trained on training text
when no vocabulary is given, and saves to / loads from a directory (WORKDIR/tokenizer).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence

import numpy as np
from etils import epath

SPECIALS = ("<pad>", "<bos>", "<eos>", "<unk>", "<mask>")
PAD_ID, BOS_ID, EOS_ID, UNK_ID, MASK_ID = range(5)
_CONFIG_FILE = "tokenizer_config.json"


class Tokenizer:
    """Common interface; subclasses implement _encode_array, decode, vocab_size, _save."""

    kind = ""
    pad_id, bos_id, eos_id, unk_id, mask_id = PAD_ID, BOS_ID, EOS_ID, UNK_ID, MASK_ID

    def __init__(self, lowercase: bool = False):
        self.lowercase = lowercase

    @property
    def vocab_size(self) -> int:
        raise NotImplementedError

    def encode(self, text: str) -> list[int]:
        return self.encode_array(text).tolist()

    def encode_array(self, text: str) -> np.ndarray:
        """Token ids [N] int32, no special tokens added."""
        return self._encode_array(text.lower() if self.lowercase else text)

    def encode_batch(self, texts: Sequence[str]) -> list[np.ndarray]:
        return [self.encode_array(t) for t in texts]

    def word_starts(self) -> np.ndarray | None:
        """[vocab_size] bool: does the token begin a word? None when ids do not tell (char,
        byte); used by whole-word masking."""
        return None

    def _encode_array(self, text: str) -> np.ndarray:
        raise NotImplementedError

    def decode(self, ids: Iterable[int]) -> str:
        """Text of `ids`; special tokens are dropped."""
        raise NotImplementedError

    def save(self, directory: str | epath.Path) -> None:
        directory = epath.Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        config = {"kind": self.kind, "lowercase": self.lowercase, "vocab_size": self.vocab_size}
        self._save(directory)
        (directory / _CONFIG_FILE).write_text(json.dumps(config, indent=2))

    def _save(self, directory: epath.Path) -> None:
        raise NotImplementedError


class CharTokenizer(Tokenizer):
    """One id per Unicode character seen in training; unseen characters map to <unk>."""

    kind = "char"

    def __init__(self, chars: Sequence[str], lowercase: bool = False):
        super().__init__(lowercase)
        self.chars = sorted(set(chars))
        self._codepoints = np.array([ord(c) for c in self.chars], np.int64)
        self._to_char = list(SPECIALS) + self.chars

    @classmethod
    def train(cls, texts: Iterable[str], lowercase: bool = False) -> CharTokenizer:
        seen: set[str] = set()
        for text in texts:
            seen.update(text.lower() if lowercase else text)
        return cls(sorted(seen), lowercase)

    @property
    def vocab_size(self) -> int:
        return len(SPECIALS) + len(self.chars)

    def _encode_array(self, text: str) -> np.ndarray:
        cps = np.frombuffer(text.encode("utf-32-le"), np.uint32).astype(np.int64)
        pos = np.searchsorted(self._codepoints, cps)
        pos = np.minimum(pos, len(self._codepoints) - 1)
        found = self._codepoints[pos] == cps
        return np.where(found, pos + len(SPECIALS), UNK_ID).astype(np.int32)

    def decode(self, ids: Iterable[int]) -> str:
        return "".join(self._to_char[i] for i in ids if i >= len(SPECIALS) and i < self.vocab_size)

    def _save(self, directory: epath.Path) -> None:
        (directory / "vocab.json").write_text(json.dumps(self.chars, ensure_ascii=False))

    @classmethod
    def load(cls, directory: epath.Path, lowercase: bool) -> CharTokenizer:
        return cls(json.loads((directory / "vocab.json").read_text()), lowercase)


class ByteTokenizer(Tokenizer):
    """UTF-8 bytes, id = byte + 5; needs no training and never produces <unk>."""

    kind = "byte"

    @property
    def vocab_size(self) -> int:
        return len(SPECIALS) + 256

    def _encode_array(self, text: str) -> np.ndarray:
        return np.frombuffer(text.encode("utf-8"), np.uint8).astype(np.int32) + len(SPECIALS)

    def decode(self, ids: Iterable[int]) -> str:
        data = bytes(i - len(SPECIALS) for i in ids if len(SPECIALS) <= i < self.vocab_size)
        return data.decode("utf-8", errors="replace")

    def _save(self, directory: epath.Path) -> None:
        pass


class HFTokenizer(Tokenizer):
    """A Hugging Face `tokenizers` model with our special tokens at ids 0..4 (tokenizer.json)."""

    def __init__(self, hf_tokenizer, lowercase: bool = False):
        super().__init__(lowercase)
        self.hf = hf_tokenizer

    @property
    def vocab_size(self) -> int:
        return self.hf.get_vocab_size()

    def _encode_array(self, text: str) -> np.ndarray:
        return np.asarray(self.hf.encode(text, add_special_tokens=False).ids, np.int32)

    def encode_batch(self, texts: Sequence[str]) -> list[np.ndarray]:
        texts = [t.lower() for t in texts] if self.lowercase else list(texts)
        encodings = self.hf.encode_batch(texts, add_special_tokens=False)
        return [np.asarray(e.ids, np.int32) for e in encodings]

    def decode(self, ids: Iterable[int]) -> str:
        return self.hf.decode([int(i) for i in ids], skip_special_tokens=True)

    def _save(self, directory: epath.Path) -> None:
        (directory / "tokenizer.json").write_text(self.hf.to_str())

    @classmethod
    def load(cls, directory: epath.Path, lowercase: bool) -> HFTokenizer:
        from tokenizers import Tokenizer as HFTokenizerModel

        return cls(HFTokenizerModel.from_str((directory / "tokenizer.json").read_text()),
                   lowercase)


class BPETokenizer(HFTokenizer):
    """Byte-level BPE (GPT-2 style)."""

    kind = "bpe"

    def word_starts(self) -> np.ndarray:
        """Pieces that begin with a space ('Ġ') start words."""
        vocab = self.hf.get_vocab()
        starts = np.zeros(self.vocab_size, bool)
        for piece, i in vocab.items():
            starts[i] = piece.startswith("\u0120")
        return starts

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int, lowercase: bool = False
              ) -> BPETokenizer:
        from tokenizers import Tokenizer as HFTokenizerModel
        from tokenizers import decoders, models, pre_tokenizers, trainers

        hf = HFTokenizerModel(models.BPE(unk_token="<unk>"))
        hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        hf.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIALS),
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                      show_progress=False)
        hf.train_from_iterator((t.lower() if lowercase else t for t in texts), trainer=trainer)
        return cls(hf, lowercase)


class WordPieceTokenizer(HFTokenizer):
    """BERT's WordPiece: whitespace/punctuation pre-splitting, '##' continuation pieces."""

    kind = "wordpiece"

    def word_starts(self) -> np.ndarray:
        """Every piece but the '##' continuations starts a word."""
        starts = np.zeros(self.vocab_size, bool)
        for piece, i in self.hf.get_vocab().items():
            starts[i] = not piece.startswith("##")
        return starts

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int, lowercase: bool = False
              ) -> WordPieceTokenizer:
        from tokenizers import Tokenizer as HFTokenizerModel
        from tokenizers import decoders, models, normalizers, pre_tokenizers, trainers

        hf = HFTokenizerModel(models.WordPiece(unk_token="<unk>"))
        hf.normalizer = normalizers.BertNormalizer(lowercase=lowercase, clean_text=True,
                                                   handle_chinese_chars=True)
        hf.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        hf.decoder = decoders.WordPiece()
        trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=list(SPECIALS),
                                            show_progress=False)
        hf.train_from_iterator(texts, trainer=trainer)
        return cls(hf, lowercase=False)  # the normaliser lower-cases


def train_tokenizer(kind: str, texts: Iterable[str], vocab_size: int,
                    lowercase: bool = False) -> Tokenizer:
    """A new tokenizer of `kind` fitted to `texts`."""
    if kind == "char":
        return CharTokenizer.train(texts, lowercase)
    if kind == "byte":
        return ByteTokenizer(lowercase)
    if kind == "bpe":
        return BPETokenizer.train(texts, vocab_size, lowercase)
    if kind == "wordpiece":
        return WordPieceTokenizer.train(texts, vocab_size, lowercase)
    raise ValueError(f"tokenizer.kind={kind!r}: use char, byte, bpe or wordpiece")


def load_tokenizer(directory: str | epath.Path) -> Tokenizer:
    """The tokenizer saved in `directory` (as written by Tokenizer.save)."""
    directory = epath.Path(directory)
    config_file = directory / _CONFIG_FILE
    if not config_file.exists():
        raise FileNotFoundError(f"no tokenizer in {directory} (expected {_CONFIG_FILE}); set "
                                "tokenizer.path to a directory written by llmjax, or unset it "
                                "to train a new one")
    config = json.loads(config_file.read_text())
    kind, lowercase = config["kind"], config.get("lowercase", False)
    if kind == "char":
        return CharTokenizer.load(directory, lowercase)
    if kind == "byte":
        return ByteTokenizer(lowercase)
    if kind == "bpe":
        return BPETokenizer.load(directory, lowercase)
    if kind == "wordpiece":
        return WordPieceTokenizer.load(directory, lowercase)
    raise ValueError(f"{config_file}: unknown tokenizer kind {kind!r}")
