"""A TFDS builder for local tab-separated files with a header row (`tsv:GLOB`), e.g. GLUE's
SST-2 `sentence<TAB>label`. Every column is kept as text; fields are not quoted (GLUE style).
Splits: `train` (the first 1 - f of the rows) and `validation` (the last f); `all` reads both.
Like the text builder, its config name hashes the files, so edits are never silently ignored.
"""

from __future__ import annotations

import tensorflow_datasets as tfds
from etils import epath

from llmjax.data.text_builder import DataError, content_hash, read_text, resolve_files


def read_rows(files: list[epath.Path]) -> tuple[list[str], list[list[str]]]:
    """(header, rows) of all files; every file must share the header and every row its width."""
    header: list[str] | None = None
    rows: list[list[str]] = []
    for f in files:
        lines = read_text(f).splitlines()
        if not lines:
            raise DataError(f"{f} is empty; a TSV file needs a header row")
        head = lines[0].split("\t")
        if header is not None and head != header:
            raise DataError(f"{f}: header {head} differs from {header} of {files[0]}")
        header = head
        for number, line in enumerate(lines[1:], start=2):
            if not line:
                continue
            fields = line.split("\t")
            if len(fields) != len(header):
                raise DataError(f"{f}:{number}: {len(fields)} tab-separated fields, the header "
                                f"has {len(header)} ({header}); fix that row")
            rows.append(fields)
    if not rows:
        raise DataError(f"{[str(f) for f in files]} have a header but no rows")
    return header, rows


class LocalTsv(tfds.core.GeneratorBasedBuilder):
    """Local TSV files as a TFDS dataset; construct through `prepare_local_tsv`. Subclasses
    read other row formats into the same (header, rows) table (jsonl_builder.py)."""

    VERSION = tfds.core.Version("1.0.0")
    pkg_dir_path = epath.Path(__file__).parent  # see text_builder.LocalText
    read_rows = staticmethod(read_rows)

    def __init__(self, *, files: list[epath.Path], validation_fraction: float, **kwargs):
        self._files = files
        self._validation_fraction = validation_fraction
        self._header, self._rows = self.read_rows(files)
        name = content_hash(files, repr(validation_fraction))
        super().__init__(config=tfds.core.BuilderConfig(name=name), **kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        features = {column: tfds.features.Text() for column in self._header}
        return self.dataset_info_from_configs(features=tfds.features.FeaturesDict(features),
                                              disable_shuffling=True)

    def _split_generators(self, dl_manager):
        cut = int(len(self._rows) * (1.0 - self._validation_fraction))
        bounds = {"train": (0, cut), "validation": (cut, len(self._rows))}
        # tfds refuses empty splits: a file of a row or two has no validation part
        return {name: self._generate_examples(lo, hi) for name, (lo, hi) in bounds.items()
                if hi > lo}

    def _generate_examples(self, lo: int, hi: int):
        for i in range(lo, hi):
            yield i, dict(zip(self._header, self._rows[i], strict=True))


def prepare_local_tsv(pattern: str, validation_fraction: float, data_dir: str | None,
                      what: str, builder_class: type[LocalTsv] = LocalTsv
                      ) -> tfds.core.DatasetBuilder:
    builder = builder_class(files=resolve_files(pattern, what),
                            validation_fraction=validation_fraction, data_dir=data_dir)
    builder.download_and_prepare(file_format="array_record")
    return builder
