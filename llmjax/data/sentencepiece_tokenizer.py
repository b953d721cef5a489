"""SentencePiece tokenizer (T5-style; unigram by default), trained on the data or loaded from a
`spiece.model` / `*.model` file.

A vocabulary llmjax trains has ids 0..4 = <pad>, <bos>, <eos>, <unk>, <mask> like every llmjax
tokenizer. A loaded one keeps its ids and finds its special pieces by role (T5's spiece.model:
<pad> 0, </s> 1, <unk> 2, no <bos>: its decoder starts from <pad>, so bos = pad, as in T5).
Training uses one thread, so the same text gives the same vocabulary.
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Sequence

import numpy as np
from etils import epath

from llmjax.data.tokenizers import SPECIALS, Tokenizer, TokenizerFileError

MODEL_FILE = "spiece.model"
_MAX_SENTENCE_CHARS = 4000  # sentencepiece skips longer training sentences: cut them


class SentencePieceTokenizer(Tokenizer):
    kind = "sentencepiece"

    def __init__(self, model_proto: bytes, lowercase: bool = False):
        import sentencepiece as spm

        super().__init__(lowercase)
        self.proto = model_proto
        self.sp = spm.SentencePieceProcessor(model_proto=model_proto)
        ids = {"pad": self.sp.pad_id(), "bos": self.sp.bos_id(), "eos": self.sp.eos_id(),
               "unk": self.sp.unk_id(), "mask": self.sp.piece_to_id("<mask>")}
        if ids["eos"] < 0 or ids["unk"] < 0:
            raise TokenizerFileError("the SentencePiece model has no </s> or <unk> piece; "
                                     "llmjax needs both")
        if ids["pad"] < 0:
            ids["pad"] = ids["eos"]
        if ids["bos"] < 0:  # T5: the decoder starts from <pad>
            ids["bos"] = ids["pad"]
        if ids["mask"] == ids["unk"]:  # piece_to_id gives <unk> for a missing piece
            ids["mask"] = None
        for role, i in ids.items():
            setattr(self, f"{role}_id", i)

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int, lowercase: bool = False,
              model_type: str = "unigram") -> SentencePieceTokenizer:
        import sentencepiece as spm

        def sentences():
            for text in texts:
                for line in (text.lower() if lowercase else text).splitlines():
                    while line:
                        yield line[:_MAX_SENTENCE_CHARS]
                        line = line[_MAX_SENTENCE_CHARS:]

        model = io.BytesIO()
        spm.SentencePieceTrainer.train(
            sentence_iterator=sentences(), model_writer=model, vocab_size=vocab_size,
            model_type=model_type, pad_id=0, bos_id=1, eos_id=2, unk_id=3,
            pad_piece=SPECIALS[0], bos_piece=SPECIALS[1], eos_piece=SPECIALS[2],
            unk_piece=SPECIALS[3], user_defined_symbols=[SPECIALS[4]],
            character_coverage=1.0, num_threads=1, hard_vocab_limit=False, minloglevel=2)
        return cls(model.getvalue(), lowercase)

    @property
    def special_ids(self) -> list[int]:
        roles = {self.pad_id, self.bos_id, self.eos_id, self.unk_id, self.mask_id}
        control = {i for i in range(self.vocab_size) if self.sp.is_control(i)}
        return sorted((roles | control) - {None})

    @property
    def vocab_size(self) -> int:
        return self.sp.get_piece_size()

    def word_starts(self) -> np.ndarray:
        """Pieces that begin with '▁' start words."""
        return np.array([self.sp.id_to_piece(i).startswith("\u2581")
                         for i in range(self.vocab_size)])

    def _encode_array(self, text: str) -> np.ndarray:
        return np.asarray(self.sp.encode(text), np.int32)

    def encode_batch(self, texts: Sequence[str]) -> list[np.ndarray]:
        texts = [t.lower() for t in texts] if self.lowercase else list(texts)
        return [np.asarray(ids, np.int32) for ids in self.sp.encode(texts)]

    def decode(self, ids: Iterable[int]) -> str:
        special = set(self.special_ids)
        return self.sp.decode([int(i) for i in ids if 0 <= i < self.vocab_size
                               and int(i) not in special])

    def _save(self, directory: epath.Path) -> None:
        (directory / MODEL_FILE).write_bytes(self.proto)

    @classmethod
    def load(cls, directory_or_file: str | epath.Path, lowercase: bool = False
             ) -> SentencePieceTokenizer:
        path = epath.Path(directory_or_file)
        if path.is_dir():
            path = path / MODEL_FILE
        return cls(path.read_bytes(), lowercase)
