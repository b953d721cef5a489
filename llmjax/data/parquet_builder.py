"""A TFDS builder for local Parquet files (`parquet:GLOB`), the format of Hugging Face Hub
dataset repositories (`huggingface-cli download --repo-type dataset NAME`, or the Hub's
`refs/convert/parquet` branch): GLOB picks a split's files, e.g.
`parquet:glue/sst2/train-*.parquet`. Every file must have the first file's columns; values are
kept as jsonl: keeps them (text as is, numbers, lists and dicts as JSON text: a label 1 reads
as "1", SQuAD's `answers` or a chat's `messages` as the JSON the objectives parse). Read with
pyarrow, which tensorflow-datasets already installs. Splits and content hashing are the TSV
builder's."""

from __future__ import annotations

from etils import epath

from llmjax.data.jsonl_builder import field_text
from llmjax.data.text_builder import DataError
from llmjax.data.tsv_builder import LocalTsv


def read_parquet_rows(files: list[epath.Path]) -> tuple[list[str], list[list[str]]]:
    """(columns, rows) of all files, in the first file's column order."""
    import pyarrow
    import pyarrow.parquet as pq

    header: list[str] | None = None
    rows: list[list[str]] = []
    for f in files:
        try:
            with f.open("rb") as stream:
                table = pq.read_table(stream)
        except pyarrow.ArrowInvalid as e:
            raise DataError(f"{f}: not a Parquet file ({e}); parquet: reads Parquet files, "
                            "jsonl: JSON Lines") from None
        if header is None:
            header = table.column_names
        if set(table.column_names) != set(header):
            raise DataError(f"{f}: columns {table.column_names} differ from {header} of "
                            f"{files[0]}; a parquet: GLOB must match one split's files")
        columns = [table.column(name).to_pylist() for name in header]
        rows += [[field_text(value) for value in row] for row in zip(*columns, strict=True)]
    if not rows:
        raise DataError(f"{[str(f) for f in files]} hold no rows")
    return header, rows


class LocalParquet(LocalTsv):
    """Local Parquet files as a TFDS dataset; construct through `prepare_local_tsv`."""

    read_rows = staticmethod(read_parquet_rows)
