"""Tokenizers: the common interface, char and byte (exact, numpy-fast), and training or loading
any kind. Byte-level BPE and WordPiece (HF `tokenizers`) live in hf_tokenizer.py, SentencePiece
in sentencepiece_tokenizer.py.

A tokenizer llmjax trains reserves ids 0..4 for <pad>, <bos>, <eos>, <unk>, <mask> (<bos>/<eos>
double as BERT's [CLS]/[SEP]). One loaded from a Hugging Face `tokenizer.json` or BERT
`vocab.txt` (`tokenizer.path`) keeps that vocabulary's ids and finds its special tokens by name
([CLS]/[SEP]/[PAD]/[UNK]/[MASK], <s>/</s>/<pad>/<unk>/<mask>, <|endoftext|>). Code reads the
special ids from the tokenizer (`tokenizer.bos_id`, ...), never assumes 0..4. Every tokenizer
saves to / loads from a directory (WORKDIR/tokenizer).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence

import numpy as np
from etils import epath

SPECIALS = ("<pad>", "<bos>", "<eos>", "<unk>", "<mask>")
PAD_ID, BOS_ID, EOS_ID, UNK_ID, MASK_ID = range(5)
CONFIG_FILE = "tokenizer_config.json"
SPECIAL_ROLES = ("pad", "bos", "eos", "unk", "mask")


class TokenizerFileError(ValueError):
    """A tokenizer file that llmjax cannot use; the message names what is missing."""


class TokenizerMismatchError(TokenizerFileError):
    """A saved tokenizer that this llmjax version would read with other ids."""


class Tokenizer:
    """Common interface; subclasses implement _encode_array, decode, vocab_size, _save."""

    kind = ""
    pad_id, bos_id, eos_id, unk_id = PAD_ID, BOS_ID, EOS_ID, UNK_ID
    mask_id: int | None = MASK_ID  # None: the vocabulary has no mask token (no MLM)
    chat_template: str | None = None  # a Hugging Face folder's (jinja), kept when saved

    def __init__(self, lowercase: bool = False):
        self.lowercase = lowercase

    @property
    def special_ids(self) -> list[int]:
        """Ids that are never text: never masked, never a random MLM replacement."""
        return list(range(len(SPECIALS)))

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

    def encode_batch_spans(self, texts: Sequence[str]
                           ) -> list[tuple[np.ndarray, np.ndarray | None]]:
        """encode_batch's ids of each text with each token's character span in it [N, 2]
        (start, end); None where the tokenizer cannot tell (here: always)."""
        return [(ids, None) for ids in self.encode_batch(texts)]

    def _same_length_text(self, text: str) -> str | None:
        """The text as encoded (lower-cased or not), or None when lower-casing changed its
        length (a few Unicode letters), so that spans in it are not the text's."""
        encoded = text.lower() if self.lowercase else text
        return encoded if len(encoded) == len(text) else None

    @property
    def pair_separator(self) -> tuple[int, ...]:
        """The special tokens between the two texts of a pair: (<eos>,) as BERT's [SEP]."""
        return (self.eos_id,)

    @property
    def words_take_prefix_space(self) -> bool:
        """Whether a sentence given as words tokenizes each of them, the first too, with a
        space before it: byte-level BPE, for which transformers' `is_split_into_words` needs
        `add_prefix_space=True` (RoBERTa's tagging); elsewhere the first word has none."""
        return False

    def word_starts(self) -> np.ndarray | None:
        """[vocab_size] bool: does the token begin a word? None when ids do not tell (char,
        byte); used by whole-word masking."""
        return None

    def _encode_array(self, text: str) -> np.ndarray:
        raise NotImplementedError

    def decode(self, ids: Iterable[int]) -> str:
        """Text of `ids`; special tokens are dropped."""
        raise NotImplementedError

    def token_text(self, token_id: int | None) -> str | None:
        """A special token's text (what a chat template writes for it); None if unknown."""
        if token_id is None or not 0 <= token_id < len(SPECIALS):
            return None
        return SPECIALS[token_id]

    def decode_output(self, ids: Iterable[int], stop_id: int | None = None) -> str:
        """Text of a decoded row: up to its first <eos> (or `stop_id`), without ids beyond this
        vocabulary (an encoder-decoder's sentinels)."""
        kept = []
        for i in ids:
            if int(i) in (self.eos_id, stop_id):
                break
            if int(i) < self.vocab_size:
                kept.append(int(i))
        return self.decode(kept)

    def save(self, directory: str | epath.Path) -> None:
        directory = epath.Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        config = {"kind": self.kind, "lowercase": self.lowercase, "vocab_size": self.vocab_size,
                  "special_ids": {r: getattr(self, f"{r}_id") for r in SPECIAL_ROLES}}
        if self.chat_template:
            config["chat_template"] = self.chat_template
        self._save(directory)
        (directory / CONFIG_FILE).write_text(json.dumps(config, indent=2))

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

    def encode_batch_spans(self, texts: Sequence[str]
                           ) -> list[tuple[np.ndarray, np.ndarray | None]]:
        """One token per character: token i spans characters [i, i + 1)."""
        out = []
        for text in texts:
            ids, same = self.encode_array(text), self._same_length_text(text)
            spans = None if same is None else np.stack([np.arange(len(text))] * 2, -1) + [0, 1]
            out.append((ids, spans))
        return out

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

    def encode_batch_spans(self, texts: Sequence[str]
                           ) -> list[tuple[np.ndarray, np.ndarray | None]]:
        """One token per UTF-8 byte: each byte spans its character."""
        out = []
        for text in texts:
            ids, same = self.encode_array(text), self._same_length_text(text)
            spans = None
            if same is not None:
                sizes = [len(c.encode("utf-8")) for c in same]
                char = np.repeat(np.arange(len(same)), sizes).astype(np.int64)
                spans = np.stack([char, char + 1], -1).reshape(-1, 2)
            out.append((ids, spans))
        return out

    def decode(self, ids: Iterable[int]) -> str:
        data = bytes(i - len(SPECIALS) for i in ids if len(SPECIALS) <= i < self.vocab_size)
        return data.decode("utf-8", errors="replace")

    def _save(self, directory: epath.Path) -> None:
        pass


def train_tokenizer(kind: str, texts: Iterable[str], vocab_size: int,
                    lowercase: bool = False) -> Tokenizer:
    """A new tokenizer of `kind` fitted to `texts`."""
    if kind == "char":
        return CharTokenizer.train(texts, lowercase)
    if kind == "byte":
        return ByteTokenizer(lowercase)
    if kind in ("bpe", "wordpiece"):
        from llmjax.data.hf_tokenizer import BPETokenizer, WordPieceTokenizer

        kinds = {"bpe": BPETokenizer, "wordpiece": WordPieceTokenizer}
        return kinds[kind].train(texts, vocab_size, lowercase)
    if kind == "sentencepiece":
        from llmjax.data.sentencepiece_tokenizer import SentencePieceTokenizer

        return SentencePieceTokenizer.train(texts, vocab_size, lowercase)
    raise ValueError(f"tokenizer.kind={kind!r}: use char, byte, bpe, wordpiece or sentencepiece")


def same_vocabulary(a: Tokenizer, b: Tokenizer) -> bool:
    """Do `a` and `b` give every id the same meaning (kind, size, casing, special ids, and
    each id's text)? What two models need to share tokens (speculative decoding)."""
    if (a.kind, a.vocab_size, a.lowercase) != (b.kind, b.vocab_size, b.lowercase):
        return False
    if any(getattr(a, f"{r}_id") != getattr(b, f"{r}_id") for r in SPECIAL_ROLES):
        return False
    return all(a.decode([i]) == b.decode([i]) for i in range(a.vocab_size))


def load_tokenizer(directory: str | epath.Path, lowercase: bool = False) -> Tokenizer:
    """The tokenizer in `directory`: one written by Tokenizer.save, or a Hugging Face
    tokenizer (see load_hf_tokenizer; `lowercase` applies to those only)."""
    from llmjax.data.hf_tokenizer import BPETokenizer, WordPieceTokenizer, load_hf_tokenizer

    directory = epath.Path(directory)
    config_file = directory / CONFIG_FILE
    config = json.loads(config_file.read_text()) if config_file.exists() else {}
    if config.get("kind") in (None, ""):  # not written by llmjax, or a plain HF tokenizer
        return load_hf_tokenizer(directory, lowercase)
    kind, lowercase = config["kind"], config.get("lowercase", False)
    if kind == "char":
        tokenizer = CharTokenizer.load(directory, lowercase)
    elif kind == "byte":
        tokenizer = ByteTokenizer(lowercase)
    elif kind == "bpe":
        tokenizer = BPETokenizer.load(directory, lowercase)
    elif kind == "wordpiece":
        tokenizer = WordPieceTokenizer.load(directory, lowercase)
    elif kind == "sentencepiece":
        from llmjax.data.sentencepiece_tokenizer import SentencePieceTokenizer

        tokenizer = SentencePieceTokenizer.load(directory, lowercase)
    else:
        raise TokenizerFileError(f"{config_file}: unknown tokenizer kind {kind!r}")
    _check_same_ids(tokenizer, config, config_file)
    tokenizer.chat_template = config.get("chat_template")
    return tokenizer


def _check_same_ids(tokenizer: Tokenizer, saved: dict, config_file: epath.Path) -> None:
    """The loaded tokenizer must give the ids it was saved with: an llmjax version with another
    set of special tokens would shift every id, and the model would read the wrong embeddings
    (or past the end of the table) without a word."""
    now = {"vocab_size": tokenizer.vocab_size,
           "special_ids": {r: getattr(tokenizer, f"{r}_id") for r in SPECIAL_ROLES}}
    differ = [f"{key} {saved[key]} when saved, {now[key]} now" for key in now
              if key in saved and saved[key] != now[key]]
    if differ:
        raise TokenizerMismatchError(
            f"{config_file} describes another id layout than this llmjax version gives its "
            f"files ({'; '.join(differ)}): the tokenizer was written by an older llmjax whose "
            "special tokens differ. Use the llmjax version that trained it, or train again in "
            "a new --workdir.")
