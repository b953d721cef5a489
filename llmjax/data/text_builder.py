"""A TFDS builder for local UTF-8 text files (`text:GLOB`), prepared as ArrayRecord.

The builder's config name is a hash of the files' paths and contents (and the validation
fraction), so editing a file prepares a fresh copy instead of silently reusing an old one.
Splits: `train` (the first 1 - f of the characters) and `validation` (the last f); tfds's
`train+validation` (or `all`) reads everything.
Records are chunks of whole lines (<= CHUNK_CHARS) tagged with their file (= document) index,
so a split's records joined per document give back its text exactly.
"""

from __future__ import annotations

import hashlib
import os

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

CHUNK_CHARS = 4096


class DataError(ValueError):
    """Missing, empty or malformed data; the message names the file and the fix."""


def resolve_files(pattern: str, what: str) -> list[epath.Path]:
    """Sorted files matching a glob (local or gs://); a clear error when none match."""
    path = epath.Path(pattern)
    anchor = path.parent if any(ch in path.name for ch in "*?[") else None
    files = sorted(anchor.glob(path.name)) if anchor else ([path] if path.exists() else [])
    files = [f for f in files if f.is_file()]
    if not files:
        raise DataError(f"{what}: '{pattern}' matches no file; check the path (globs such as "
                        "data/*.txt are allowed)")
    return files


def read_text(file: epath.Path) -> str:
    data = file.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{file}: bytes at offset {e.start} are not UTF-8; re-encode the file as "
                        "UTF-8 (e.g. iconv -f latin1 -t utf-8)") from None


def content_hash(files: list[epath.Path], *extra: str) -> str:
    """A builder config name that changes whenever a file's path or content does."""
    digest = hashlib.sha256("|".join(extra).encode())
    for f in files:
        digest.update(os.fspath(f).encode())
        digest.update(hashlib.sha256(f.read_bytes()).digest())
    return digest.hexdigest()[:16]


def _chunks(text: str) -> list[str]:
    """Consecutive pieces of `text`, each of whole lines and at most ~CHUNK_CHARS characters."""
    lines = text.splitlines(keepends=True)
    chunks, current, size = [], [], 0
    for line in lines:
        if size + len(line) > CHUNK_CHARS and current:
            chunks.append("".join(current))
            current, size = [], 0
        current.append(line)
        size += len(line)
    if current:
        chunks.append("".join(current))
    return chunks


class LocalText(tfds.core.GeneratorBasedBuilder):
    """Local text files as a TFDS dataset; construct through `prepare_local_text`."""

    VERSION = tfds.core.Version("1.0.0")
    # tfds looks for builder metadata next to the defining package; say where that is
    # (an editable install hides it from importlib.resources).
    pkg_dir_path = epath.Path(__file__).parent

    def __init__(self, *, files: list[epath.Path], validation_fraction: float, **kwargs):
        self._files = files
        self._validation_fraction = validation_fraction
        name = content_hash(files, repr(validation_fraction))
        super().__init__(config=tfds.core.BuilderConfig(name=name), **kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(
            features=tfds.features.FeaturesDict({"text": tfds.features.Text(),
                                                 "document": np.int64}),
            disable_shuffling=True,  # records keep file order, so documents read back in order
        )

    def _split_generators(self, dl_manager):
        texts = [read_text(f) for f in self._files]
        total = sum(len(t) for t in texts)
        if total == 0:
            raise DataError(f"text files {[os.fspath(f) for f in self._files]} are empty; point "
                            "the data source at files that hold text")
        cut = int(total * (1.0 - self._validation_fraction))
        train, validation, start = [], [], 0
        for doc, text in enumerate(texts):
            lo, hi = start, start + len(text)
            if lo < cut:
                train.append((doc, text[: cut - lo]))
            if hi > cut:
                validation.append((doc, text[max(cut - lo, 0):]))
            start = hi
        splits = {"train": train, "validation": validation}
        return {name: self._generate_examples(docs) for name, docs in splits.items()
                if any(text for _, text in docs)}  # tfds refuses empty splits

    def _generate_examples(self, documents):
        key = 0
        for doc, text in documents:
            for chunk in _chunks(text):
                yield key, {"text": chunk, "document": doc}
                key += 1


def prepare_local_text(pattern: str, validation_fraction: float, data_dir: str | None,
                       what: str) -> tfds.core.DatasetBuilder:
    files = resolve_files(pattern, what)
    builder = LocalText(files=files, validation_fraction=validation_fraction, data_dir=data_dir)
    builder.download_and_prepare(file_format="array_record")
    return builder
