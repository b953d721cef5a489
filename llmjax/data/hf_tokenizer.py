"""Hugging Face `tokenizers` models: byte-level BPE and WordPiece that llmjax trains, and any
tokenizer a Hugging Face folder holds (tokenizer.json, BERT's vocab.txt, T5's spiece.model),
with its special tokens found by name and its chat template."""

from __future__ import annotations

import functools
import json
from collections.abc import Iterable, Sequence

import numpy as np
from etils import epath

from llmjax.data.tokenizers import (
    CONFIG_FILE,
    SPECIAL_ROLES,
    SPECIALS,
    Tokenizer,
    TokenizerFileError,
)

_WORD_START = "\u2581"  # marks word starts while a WordPiece vocabulary is learnt
# Names a Hugging Face vocabulary gives each role, most specific first (BERT, RoBERTa/BART, GPT-2).
_HF_SPECIAL_NAMES = {
    "pad": ("[PAD]", "<pad>", "<|endoftext|>", "<|finetune_right_pad_id|>"),
    "bos": ("[CLS]", "<s>", "<bos>", "<|begin_of_text|>", "<|endoftext|>"),
    "eos": ("[SEP]", "</s>", "<eos>", "<|end_of_text|>", "<|endoftext|>"),
    "unk": ("[UNK]", "<unk>", "<|endoftext|>"),
    "mask": ("[MASK]", "<mask>"),
}


class HFTokenizer(Tokenizer):
    """A Hugging Face `tokenizers` model (tokenizer.json); special ids found in its vocabulary
    (llmjax-trained ones have ours at 0..4).

    `special_tokens` names a role's token ({'bos': '<|begin_of_text|>', ...}, from the folder's
    tokenizer_config.json) before the usual names are tried. The `required` roles must exist;
    a vocabulary without a pad token pads with eos (as Hugging Face fine-tuning recipes set
    pad = eos for LLaMA), one without unk (byte-level BPE never needs it) or mask has None.
    """

    required = ("bos", "eos")

    def __init__(self, hf_tokenizer, lowercase: bool = False,
                 special_tokens: dict[str, str] | None = None):
        super().__init__(lowercase)
        self.hf = hf_tokenizer
        vocab = hf_tokenizer.get_vocab()
        special_tokens = special_tokens or {}
        for role, names in _HF_SPECIAL_NAMES.items():
            ours = SPECIALS[SPECIAL_ROLES.index(role)]
            candidates = [t for t in (special_tokens.get(role), ours, *names) if t]
            found = [vocab[n] for n in candidates if n in vocab]
            if not found and role in self.required:
                raise TokenizerFileError(f"the tokenizer vocabulary has no {role} token "
                                         f"(looked for {', '.join(candidates)}); llmjax "
                                         f"needs {', '.join(self.required)} tokens")
            setattr(self, f"{role}_id", found[0] if found else None)
        if self.pad_id is None:
            self.pad_id = self.eos_id
        self._pair_separator = self._post_processor_separator()

    def _post_processor_separator(self) -> tuple[int, ...]:
        """What the tokenizer's own post-processor puts between a pair's texts (RoBERTa's
        `</s></s>`, BERT's `[SEP]`); (<eos>,) when it adds nothing there (no post-processor)."""
        pair = self.hf.encode("a", "b", add_special_tokens=True)
        sequence = pair.sequence_ids
        if 0 not in sequence or 1 not in sequence:
            return (self.eos_id,)
        last_a = max(i for i, s in enumerate(sequence) if s == 0)
        first_b = sequence.index(1)
        between = tuple(pair.ids[last_a + 1: first_b])
        return between or (self.eos_id,)

    @property
    def pair_separator(self) -> tuple[int, ...]:
        return self._pair_separator

    @functools.cached_property
    def words_take_prefix_space(self) -> bool:
        return _has_type(json.loads(self.hf.to_str()).get("pre_tokenizer"), "ByteLevel")

    @property
    def special_ids(self) -> list[int]:
        added = {i for i, t in self.hf.get_added_tokens_decoder().items() if t.special}
        roles = {getattr(self, f"{r}_id") for r in SPECIAL_ROLES}
        return sorted((added | roles) - {None})

    @property
    def vocab_size(self) -> int:
        return self.hf.get_vocab_size()

    def _encode_array(self, text: str) -> np.ndarray:
        return np.asarray(self.hf.encode(text, add_special_tokens=False).ids, np.int32)

    def encode_batch(self, texts: Sequence[str]) -> list[np.ndarray]:
        texts = [t.lower() for t in texts] if self.lowercase else list(texts)
        encodings = self.hf.encode_batch(texts, add_special_tokens=False)
        return [np.asarray(e.ids, np.int32) for e in encodings]

    def encode_batch_spans(self, texts: Sequence[str]
                           ) -> list[tuple[np.ndarray, np.ndarray | None]]:
        """The tokenizer's own offsets (a normaliser's, e.g. BERT's lower-casing and accent
        stripping, map back to the original text)."""
        encoded = [t.lower() if self.lowercase else t for t in texts]
        encodings = self.hf.encode_batch(encoded, add_special_tokens=False)
        return [(np.asarray(e.ids, np.int32),
                 np.asarray(e.offsets, np.int64).reshape(-1, 2) if len(x) == len(t) else None)
                for e, x, t in zip(encodings, encoded, texts, strict=True)]

    def decode(self, ids: Iterable[int]) -> str:
        return self.hf.decode([int(i) for i in ids], skip_special_tokens=True)

    def token_text(self, token_id: int | None) -> str | None:
        return None if token_id is None else self.hf.id_to_token(token_id)

    def _save(self, directory: epath.Path) -> None:
        (directory / "tokenizer.json").write_text(self.hf.to_str())

    @classmethod
    def load(cls, directory: epath.Path, lowercase: bool) -> HFTokenizer:
        """The tokenizer as saved, with the special ids it was saved with."""
        from tokenizers import Tokenizer as HFTokenizerModel

        hf = HFTokenizerModel.from_str((directory / "tokenizer.json").read_text())
        saved = json.loads((directory / CONFIG_FILE).read_text()).get("special_ids", {})
        tokens = {role: hf.id_to_token(i) for role, i in saved.items() if i is not None}
        return cls(hf, lowercase, {role: t for role, t in tokens.items() if t is not None})


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
    required = ("bos", "eos", "unk")  # words outside the vocabulary become unk

    def word_starts(self) -> np.ndarray:
        """Every piece but the '##' continuations starts a word."""
        starts = np.zeros(self.vocab_size, bool)
        for piece, i in self.hf.get_vocab().items():
            starts[i] = not piece.startswith("##")
        return starts

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int, lowercase: bool = False
              ) -> WordPieceTokenizer:
        """A WordPiece vocabulary learnt as BPE over words marked at their start (U+2581).

        HF's WordPieceTrainer is not deterministic (tokenizers#1794: the '##' pieces get ids in
        hash-map order, which breaks ties between merges differently each run), so this trains
        a plain BPE on words prefixed with '▁' (deterministic) and renames its pieces:
        '▁ab' -> 'ab' (starts a word), 'ab' -> '##ab'. Every character gets both forms, so
        only characters never seen in training become <unk>. The BPE learns some spare pieces
        (single characters take two slots here, one there); the last-learnt are dropped.
        """
        from tokenizers import Tokenizer as HFTokenizerModel
        from tokenizers import models, pre_tokenizers, trainers

        bpe = HFTokenizerModel(models.BPE(unk_token="<unk>"))
        bpe.normalizer = _bert_normalizer(lowercase)
        bpe.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.BertPreTokenizer(),
            pre_tokenizers.Metaspace(replacement=_WORD_START, prepend_scheme="always")])
        spare = vocab_size // 8 + 64
        trainer = trainers.BpeTrainer(vocab_size=vocab_size + spare,
                                      special_tokens=list(SPECIALS), show_progress=False)
        bpe.train_from_iterator(texts, trainer=trainer)
        learnt = [p for p, _ in sorted(bpe.get_vocab().items(), key=lambda kv: kv[1])
                  if p not in SPECIALS and p != _WORD_START]
        chars = sorted({p.lstrip(_WORD_START) for p in learnt
                        if len(p.lstrip(_WORD_START)) == 1})
        longer = [p[1:] if p.startswith(_WORD_START) else "##" + p for p in learnt
                  if len(p.lstrip(_WORD_START)) > 1]
        longer = longer[: max(vocab_size - len(SPECIALS) - 2 * len(chars), 0)]
        pieces = [*SPECIALS, *chars, *(f"##{c}" for c in chars), *longer]
        hf = wordpiece_tokenizer({p: i for i, p in enumerate(dict.fromkeys(pieces))}, "<unk>",
                                 lowercase)
        hf.add_special_tokens(list(SPECIALS))  # never split from text, dropped by decode
        return cls(hf, lowercase=False)


def _has_type(component: object, name: str) -> bool:
    """Whether a tokenizer.json component (say the pre_tokenizer, maybe a Sequence of them)
    is or holds one of type `name`."""
    if isinstance(component, dict):
        return component.get("type") == name or any(_has_type(v, name)
                                                     for v in component.values())
    if isinstance(component, list):
        return any(_has_type(v, name) for v in component)
    return False


def _bert_normalizer(lowercase: bool):
    from tokenizers import normalizers

    return normalizers.BertNormalizer(lowercase=lowercase, clean_text=True,
                                      handle_chinese_chars=True)


def wordpiece_tokenizer(vocab: dict[str, int], unk_token: str, lowercase: bool):
    """A HF WordPiece tokenizer as BERT's: BERT normaliser (lower-casing and stripping accents
    when `lowercase`), punctuation/whitespace pre-splitting, greedy longest-match pieces."""
    from tokenizers import Tokenizer as HFTokenizerModel
    from tokenizers import decoders, models, pre_tokenizers

    hf = HFTokenizerModel(models.WordPiece(vocab, unk_token=unk_token))
    hf.normalizer = _bert_normalizer(lowercase)
    hf.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    hf.decoder = decoders.WordPiece()
    return hf


def _hf_kind(hf) -> str:
    model = type(hf.model).__name__  # WordPiece, BPE, Unigram, ...
    return {"WordPiece": "wordpiece", "BPE": "bpe"}.get(model, model.lower())


def load_hf_tokenizer(path: str | epath.Path, lowercase: bool = False) -> Tokenizer:
    """A Hugging Face tokenizer: `spiece.model` (SentencePiece, T5), `tokenizer.json`, or a
    BERT `vocab.txt` (WordPiece with BERT's
    normaliser; lower-cases and strips accents when `lowercase` or the folder's Hugging Face
    tokenizer_config.json says do_lower_case). `path` is the file or a folder holding it."""
    from tokenizers import Tokenizer as HFTokenizerModel
    from tokenizers import models

    path = epath.Path(path)
    spiece = path / "spiece.model" if path.is_dir() else path
    if spiece.name.endswith(".model") and spiece.exists():  # T5's SentencePiece vocabulary
        from llmjax.data.sentencepiece_tokenizer import SentencePieceTokenizer

        return SentencePieceTokenizer.load(spiece, lowercase)
    folder = path if path.is_dir() else path.parent
    hf_config = folder / CONFIG_FILE
    folder_config = json.loads(hf_config.read_text()) if hf_config.exists() else {}
    lowercase = lowercase or bool(folder_config.get("do_lower_case"))
    if path.is_dir():
        path = next((path / n for n in ("tokenizer.json", "vocab.txt") if (path / n).exists()),
                    path / "tokenizer.json")
    if not path.exists():
        raise FileNotFoundError(f"no tokenizer at {path}: tokenizer.path takes a folder holding "
                                "tokenizer.json, vocab.txt or spiece.model (or an llmjax "
                                "tokenizer folder), or one of those files")
    if path.name.endswith(".json"):
        hf = HFTokenizerModel.from_file(str(path))
        # a saved tokenizer.json may pad or cut every encoding (sentence-transformers' do):
        # packing and pairs decide lengths here
        hf.no_padding()
        hf.no_truncation()
        hf_lowercase = lowercase  # its own normaliser is in the file; lower-case on top if asked
    else:
        vocab = models.WordPiece.read_file(str(path))
        unk = next((n for n in ("[UNK]", "<unk>") if n in vocab), "[UNK]")
        hf = wordpiece_tokenizer(vocab, unk, lowercase)
        specials = [n for names in _HF_SPECIAL_NAMES.values() for n in names if n in vocab]
        hf.add_special_tokens(sorted(set(specials)))  # never split, skipped by decode
        hf_lowercase = False  # the normaliser lower-cases
    kinds = {"wordpiece": WordPieceTokenizer, "bpe": BPETokenizer}
    tokenizer = kinds.get(_hf_kind(hf), HFTokenizer)(hf, hf_lowercase,
                                                     _named_special_tokens(folder_config))
    tokenizer.chat_template = _chat_template(folder, folder_config)
    return tokenizer


def _chat_template(folder: epath.Path, tokenizer_config: dict) -> str | None:
    """A Hugging Face folder's chat template: chat_template.jinja (transformers >= 4.43 writes
    it apart), else tokenizer_config.json's chat_template (a string, or named templates of
    which 'default' is taken)."""
    if (folder / "chat_template.jinja").exists():
        return (folder / "chat_template.jinja").read_text()
    template = tokenizer_config.get("chat_template")
    if isinstance(template, list):
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        template = named.get("default") or next(iter(named.values()), None)
    return template if isinstance(template, str) else None


def _named_special_tokens(tokenizer_config: dict) -> dict[str, str]:
    """{role: token} of a Hugging Face tokenizer_config.json ('bos_token': '<s>' or
    {'content': '<s>', ...})."""
    named = {}
    for role in SPECIAL_ROLES:
        value = tokenizer_config.get(f"{role}_token")
        value = value.get("content") if isinstance(value, dict) else value
        if isinstance(value, str):
            named[role] = value
    return named
