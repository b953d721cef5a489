"""A TFDS builder for local JSON Lines files (`jsonl:GLOB`): one JSON object per line, e.g.
`{"text": "...", "label": "positive"}` or `{"source": "...", "target": "..."}` (what Hugging Face
`datasets` writes with `to_json`). Every row must have the first row's keys; values are kept as
text (numbers and booleans as JSON writes them, so a label 1 reads as "1"). Splits and content
hashing are the TSV builder's."""

from __future__ import annotations

import json

from etils import epath

from llmjax.data.text_builder import DataError, read_text
from llmjax.data.tsv_builder import LocalTsv


def field_text(value) -> str:
    """A record's value as the builders keep it: text as is, bytes decoded, anything else as
    JSON writes it (1 -> "1", a list of tokens or a dict of answers as JSON text)."""
    if isinstance(value, bytes):
        return value.decode("utf-8")
    return value if isinstance(value, str) else json.dumps(value, default=str)


def read_jsonl_rows(files: list[epath.Path]) -> tuple[list[str], list[list[str]]]:
    """(keys, rows) of all files, in the first object's key order."""
    header: list[str] | None = None
    rows: list[list[str]] = []
    for f in files:
        for number, line in enumerate(read_text(f).splitlines(), start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{f}:{number}: not JSON ({e.msg}, column {e.colno}); each line "
                                "of a jsonl: file is one JSON object") from None
            if not isinstance(record, dict):
                raise DataError(f"{f}:{number}: a JSON {type(record).__name__}, not an object; "
                                "each line of a jsonl: file is one JSON object")
            if header is None:
                header = list(record)
            if set(record) != set(header):
                missing = sorted(set(header) - set(record))
                extra = sorted(set(record) - set(header))
                raise DataError(f"{f}:{number}: keys differ from the first row's {header} "
                                f"(missing {missing}, extra {extra}); give every row the same "
                                "keys")
            rows.append([field_text(record[k]) for k in header])
    if not rows:
        raise DataError(f"{[str(f) for f in files]} hold no JSON objects")
    return header, rows


class LocalJsonl(LocalTsv):
    """Local JSON Lines files as a TFDS dataset; construct through `prepare_local_tsv`."""

    read_rows = staticmethod(read_jsonl_rows)
