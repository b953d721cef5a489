"""Data sources -> records and documents. Every source is read as a TFDS dataset (ArrayRecord,
random access, no TensorFlow): `generated` (Markov text) and `generated:TASK` (transduction
pairs), `tfds:NAME[/CONFIG]` from the catalog, and local `text:GLOB`, `tsv:GLOB`, `jsonl:GLOB`,
`parquet:GLOB` and `parallel:SRC_GLOB|TGT_GLOB` files.

A document is one string; records that carry a `document` field (local files, generated text)
are chunks of one, joined back here. Each host reads only its shard of the records.
"""

from __future__ import annotations

import inspect
import json
import os
import socket
import urllib.parse
import urllib.request
from collections.abc import Iterable, Iterator, Sequence

import jax
import ml_collections
import numpy as np
import tensorflow_datasets as tfds

from llmjax.data.text_builder import DataError, prepare_local_text

# Below this many records per host, records are long texts (tiny_shakespeare has one record
# per split): every host reads them all and shards the token windows instead.
MIN_RECORDS_PER_SHARD = 64


def _data_dir(config: ml_collections.ConfigDict) -> str | None:
    return config.data.tfds_data_dir or os.environ.get("TFDS_DATA_DIR")


def _prepared_builder(spec: str, config: ml_collections.ConfigDict) -> tfds.core.DatasetBuilder:
    """The TFDS builder of `spec`, prepared (as ArrayRecord) if it was not already."""
    kind, _, arg = spec.partition(":")
    data_dir = _data_dir(config)
    if kind == "generated" and arg:
        from llmjax.data.generated_pairs import GeneratedPairs

        builder = GeneratedPairs(task=arg, generated=config.data.generated, data_dir=data_dir)
        builder.download_and_prepare(file_format="array_record")
    elif kind == "generated":
        from llmjax.data.generated import GeneratedMarkov

        builder = GeneratedMarkov(generated=config.data.generated, data_dir=data_dir)
        builder.download_and_prepare(file_format="array_record")
    elif kind == "parallel":
        from llmjax.data.parallel_builder import prepare_local_parallel

        builder = prepare_local_parallel(arg, config.data.validation_fraction, data_dir)
    elif kind == "text":
        builder = prepare_local_text(arg, config.data.validation_fraction, data_dir,
                                     what="data source")
    elif kind == "tsv":
        from llmjax.data.tsv_builder import prepare_local_tsv

        builder = prepare_local_tsv(arg, config.data.validation_fraction, data_dir,
                                    what="data source")
    elif kind == "jsonl":
        from llmjax.data.jsonl_builder import LocalJsonl
        from llmjax.data.tsv_builder import prepare_local_tsv

        builder = prepare_local_tsv(arg, config.data.validation_fraction, data_dir,
                                    what="data source", builder_class=LocalJsonl)
    elif kind == "parquet":
        from llmjax.data.parquet_builder import LocalParquet
        from llmjax.data.tsv_builder import prepare_local_tsv

        builder = prepare_local_tsv(arg, config.data.validation_fraction, data_dir,
                                    what="data source", builder_class=LocalParquet)
    elif kind == "tfds":
        _import_catalog_modules(arg)
        try:
            builder = tfds.builder(arg, data_dir=data_dir)
        except tfds.core.registered.DatasetNotFoundError as e:
            raise DataError(f"data source 'tfds:{arg}': {str(e).splitlines()[0]}") from None
        if not builder.is_prepared():
            if _download_is_real(builder):
                check_download_hosts(builder.url_infos or {}, spec, builder.data_dir)
            builder.download_and_prepare(file_format="array_record")
    else:
        raise DataError(f"data source {spec!r}: use generated, generated:reverse|sort|copy, "
                        "tfds:NAME[/CONFIG], text:GLOB, tsv:GLOB, jsonl:GLOB, parquet:GLOB or "
                        "parallel:SRC_GLOB|TGT_GLOB")
    return builder


_TFDS_DOWNLOAD_AND_PREPARE = inspect.getattr_static(tfds.core.DatasetBuilder,
                                                    "download_and_prepare")


def _download_is_real(builder: tfds.core.DatasetBuilder) -> bool:
    """False under tfds.testing.mock_data, which replaces download_and_prepare with a no-op
    that downloads nothing (so there is no host to probe)."""
    method = inspect.getattr_static(type(builder), "download_and_prepare")
    return method is _TFDS_DOWNLOAD_AND_PREPARE


# How long a catalog dataset's download host may take to accept a connection. Without the
# probe, tfds retries an unreachable URL for many minutes without a word (10 retries, each
# waiting for the system's connect timeout).
DOWNLOAD_PROBE_SECONDS = 10.0


def check_download_hosts(urls: Iterable[str], spec: str, data_dir: str) -> None:
    """Raises DataError, with the offline fix, when a host of `urls` cannot be reached. Skipped
    behind a proxy (tfds downloads through it; a direct probe would fail)."""
    if urllib.request.getproxies():
        return
    for host, port in sorted({_host_and_port(url) for url in urls}):
        try:
            socket.create_connection((host, port), timeout=DOWNLOAD_PROBE_SECONDS).close()
        except OSError as e:
            name = spec.removeprefix("tfds:")
            raise DataError(
                f"data source {spec!r} is not prepared in {data_dir} and its download host "
                f"{host}:{port} cannot be reached ({e}). Offline: prepare it where there is "
                f"network access (`tfds build {name} --data_dir=DIR`, or this same command), "
                "copy DIR here and set data.tfds_data_dir=DIR (or TFDS_DATA_DIR); or use "
                "data.source=text:FILE") from None


def _host_and_port(url: str) -> tuple[str, int]:
    parts = urllib.parse.urlparse(url)
    return parts.hostname or "", parts.port or (443 if parts.scheme == "https" else 80)


def _prepared_in_turn(prepare):
    """Several hosts sharing a data dir must not write the same dataset at once: process 0
    prepares first, the others after a barrier (finding it ready, or preparing their own copy
    on a disk of their own)."""
    if jax.process_count() == 1:
        return prepare()
    from jax.experimental import multihost_utils

    builder = prepare() if jax.process_index() == 0 else None
    multihost_utils.sync_global_devices("llmjax: datasets prepared by process 0")
    return builder if builder is not None else prepare()


def open_split(spec: str, split: str, config: ml_collections.ConfigDict) -> Sequence[dict]:
    """A random-access sequence of record dicts for `split` of source `spec` (of a mixture:
    every member's records, one member after the other)."""
    from llmjax.data import mixture

    if mixture.is_mixture(spec):
        return mixture.MixedRecords([open_split(member, split, config)
                                     for member, _ in mixture.members(spec)])
    spec = mixture.members(spec)[0][0]  # one source, perhaps written with a weight
    tfds.disable_progress_bar()
    builder = _prepared_in_turn(lambda: _prepared_builder(spec, config))
    names = [part.split("[")[0].strip() for part in split.split("+")]
    known = builder.info.splits  # empty under tfds.testing.mock_data: nothing to check
    if known and split != "all" and any(name not in known for name in names):
        raise DataError(f"data source {spec!r} has no split {split!r}; it has "
                        f"{sorted(known)} (choose with data.train_split, data.eval_split or "
                        "eval's --split)")
    return builder.as_data_source(split=split)


def _import_catalog_modules(name: str) -> None:
    """Some catalog builders live in modules tfds does not import eagerly."""
    family = name.split("/")[0].split(":")[0]
    modules = {"glue": "tensorflow_datasets.text.glue",
               "wmt14_translate": "tensorflow_datasets.translate.wmt14",
               "wikipedia": "tensorflow_datasets.text.wikipedia"}
    if family in modules:
        __import__(modules[family])


def first_records(spec: str, split: str, config: ml_collections.ConfigDict,
                  limit: int | None) -> Sequence[dict]:
    """open_split(spec, split), cut to its first `limit` records (None or 0: all of them)."""
    records = open_split(spec, split, config)
    return RecordSlice(records, 0, min(limit, len(records))) if limit else records


def as_text(value) -> str:
    # Real ArrayRecord data gives bytes, tfds.testing.mock_data gives str.
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


class RecordSlice(Sequence):
    """A contiguous block of a random-access source: this host's records."""

    def __init__(self, records: Sequence[dict], lo: int, hi: int):
        self.records, self.lo, self.hi = records, lo, hi

    def __len__(self) -> int:
        return self.hi - self.lo

    def __getitem__(self, i: int) -> dict:
        if not 0 <= i < len(self):
            raise IndexError(i)
        return self.records[self.lo + i]

    def __getitems__(self, keys: Sequence[int]) -> list[dict]:
        if any(not 0 <= i < len(self) for i in keys):
            raise IndexError(keys)
        return read_block(self.records, [self.lo + i for i in keys])


# Records read per call when a whole split is read in order. A TFDS ArrayRecord source reads a
# block of keys in one call ~6x faster than one key per call (SST-2's 67k rows: 15 s -> 2.5 s).
READ_BLOCK = 1024


def read_block(records: Sequence[dict], keys: list[int]) -> list[dict]:
    """records[k] for each of `keys`, in one call where the source reads blocks."""
    if hasattr(records, "__getitems__"):  # TFDS data sources (and RecordSlice)
        try:
            return list(records.__getitems__(keys))
        except TypeError:  # tfds.testing.mock_data's sources lack a working __getitems__
            pass
    return [records[i] for i in keys]


def iter_record_blocks(records: Sequence[dict]) -> Iterator[tuple[int, list[dict]]]:
    """(index of the first record, up to READ_BLOCK records), in order, covering `records`."""
    for lo in range(0, len(records), READ_BLOCK):
        yield lo, read_block(records, list(range(lo, min(lo + READ_BLOCK, len(records)))))


def iter_records(records: Sequence[dict]) -> Iterator[dict]:
    """Every record of `records` in order, read READ_BLOCK at a time."""
    for _, block in iter_record_blocks(records):
        yield from block


def shard_records(records: Sequence[dict], index: int, count: int) -> RecordSlice:
    """The index-th of `count` contiguous, disjoint blocks of records."""
    n = len(records)
    return RecordSlice(records, n * index // count, n * (index + 1) // count)


def column_text(record: dict, column: str) -> str:
    if column not in record:
        raise DataError(f"records have no column {column!r}; they have {sorted(record)} "
                        "(set data.text_column / data.text_pair_column / data.label_column)")
    return as_text(record[column])


def column_list(record: dict, column: str) -> list | None:
    """A list-valued field: a TFDS sequence (an array), or a JSON list held as text (a jsonl:
    file's list value); None when the field holds something else."""
    if column not in record:
        column_text(record, column)  # the error naming the columns
    value = record[column]
    if isinstance(value, (bytes, str)):
        try:
            value = json.loads(as_text(value))
        except json.JSONDecodeError:
            return None
    return list(value) if isinstance(value, (list, tuple, np.ndarray)) else None


def read_documents(records: Sequence[dict], text_column: str,
                   limit_chars: int | None = None) -> list[str]:
    """The documents of `records`, chunks joined per document (records with a `document`
    field); `limit_chars` stops once that much text is read (a tokenizer's training sample)."""
    if len(records) == 0:
        raise DataError("the data split is empty; point data.source at non-empty data")
    docs: list[str] = []
    last_doc, chars = None, 0
    for record in iter_records(records):
        text = column_text(record, text_column)
        doc = record.get("document")
        if doc is not None and doc == last_doc:
            docs[-1] += text
        else:
            docs.append(text)
        last_doc, chars = doc, chars + len(text)
        if limit_chars is not None and chars >= limit_chars:
            break
    return docs


def shard_plan(num_records: int, shard_index: int, shard_count: int) -> tuple[tuple, tuple]:
    """(record shard, window shard): which (index, count) slice of each this host takes."""
    if shard_count == 1 or num_records >= MIN_RECORDS_PER_SHARD * shard_count:
        return (shard_index, shard_count), (0, 1)
    return (0, 1), (shard_index, shard_count)
