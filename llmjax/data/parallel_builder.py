"""A TFDS builder for local parallel text (`parallel:SRC_GLOB|TGT_GLOB`): line i of the source
files pairs with line i of the target files (each side's files concatenated in sorted order),
as in Multi30k's train.en / train.de. Records are {'source', 'target'}. Splits: `train` (the
first 1 - f of the pairs) and `validation` (the last f); `all` reads both. The config name
hashes the files, so an edit prepares a fresh copy."""

from __future__ import annotations

import tensorflow_datasets as tfds
from etils import epath

from llmjax.data.text_builder import DataError, content_hash, read_text, resolve_files


def read_pairs(source_files: list[epath.Path], target_files: list[epath.Path]
               ) -> list[tuple[str, str]]:
    def lines(files):
        out = []
        for f in files:
            out += read_text(f).splitlines()
        return out

    sources, targets = lines(source_files), lines(target_files)
    if len(sources) != len(targets):
        raise DataError(f"parallel data: the source files {[str(f) for f in source_files]} have "
                        f"{len(sources)} lines and the target files "
                        f"{[str(f) for f in target_files]} {len(targets)}; line i of one side "
                        "must translate line i of the other")
    if not sources:
        raise DataError(f"parallel data {[str(f) for f in source_files]} is empty")
    return list(zip(sources, targets, strict=True))


class LocalParallel(tfds.core.GeneratorBasedBuilder):
    """Local parallel files as a TFDS dataset; construct through `prepare_local_parallel`."""

    VERSION = tfds.core.Version("1.0.0")
    pkg_dir_path = epath.Path(__file__).parent  # see text_builder.LocalText

    def __init__(self, *, source_files: list[epath.Path], target_files: list[epath.Path],
                 validation_fraction: float, **kwargs):
        self._pairs = read_pairs(source_files, target_files)
        self._validation_fraction = validation_fraction
        name = content_hash(source_files + target_files, repr(validation_fraction),
                            str(len(source_files)))
        super().__init__(config=tfds.core.BuilderConfig(name=name), **kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(
            features=tfds.features.FeaturesDict({"source": tfds.features.Text(),
                                                 "target": tfds.features.Text()}),
            disable_shuffling=True)

    def _split_generators(self, dl_manager):
        cut = int(len(self._pairs) * (1.0 - self._validation_fraction))
        bounds = {"train": (0, cut), "validation": (cut, len(self._pairs))}
        return {name: self._generate_examples(lo, hi) for name, (lo, hi) in bounds.items()
                if hi > lo}  # tfds refuses empty splits

    def _generate_examples(self, lo: int, hi: int):
        for i in range(lo, hi):
            source, target = self._pairs[i]
            yield i, {"source": source, "target": target}


def prepare_local_parallel(spec: str, validation_fraction: float, data_dir: str | None
                           ) -> tfds.core.DatasetBuilder:
    """The builder of `SRC_GLOB|TGT_GLOB`, prepared."""
    source_glob, sep, target_glob = spec.partition("|")
    if not sep or not source_glob or not target_glob:
        raise DataError(f"data source 'parallel:{spec}': write parallel:SOURCE_GLOB|TARGET_GLOB, "
                        "e.g. parallel:data/train.en|data/train.de")
    builder = LocalParallel(source_files=resolve_files(source_glob, "parallel source side"),
                            target_files=resolve_files(target_glob, "parallel target side"),
                            validation_fraction=validation_fraction, data_dir=data_dir)
    builder.download_and_prepare(file_format="array_record")
    return builder
