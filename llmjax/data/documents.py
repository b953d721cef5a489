"""Documents made of segments (paragraph lines), for sentence-pair objectives (NSP).

A local text file holds many documents: in the WikiText layout it is split at top-level
`= Title =` headings; without such headings at empty lines (BERT's pretraining format: one
segment per line, a blank line between documents). A catalog record (a Wikipedia article, ...)
is one document whose lines are its segments. Section headings (`= = Section = =`) and empty
lines are dropped.
"""

from __future__ import annotations

import re

_TITLE = re.compile(r"^\s*=\s[^=].*[^=]\s=\s*$")  # ' = Title = ', not ' = = Section = = '
_HEADING = re.compile(r"^\s*=(\s=)*\s.*\s=(\s=)*\s*$")


def record_documents(texts: list[str], whole_files: bool) -> list[list[str]]:
    """Documents of segments from the texts of a split: `whole_files` (local text files)
    hold many documents each (split_documents); otherwise each text is one document."""
    if whole_files:
        return [doc for text in texts for doc in split_documents(text)]
    return [doc for doc in map(segments, texts) if doc]


def segments(text: str) -> list[str]:
    """One document's segments: its lines that are neither empty nor headings."""
    return [line.strip() for line in text.splitlines()
            if line.strip() and not _HEADING.match(line)]


def split_documents(text: str) -> list[list[str]]:
    """[[segment, ...], ...] of `text`; documents with no segment are dropped."""
    lines = text.splitlines()
    by_title = any(_TITLE.match(line) for line in lines)
    docs: list[list[str]] = [[]]
    for line in lines:
        starts_doc = _TITLE.match(line) if by_title else not line.strip()
        if starts_doc:
            docs.append([])
        elif line.strip() and not _HEADING.match(line):
            docs[-1].append(line.strip())
    return [d for d in docs if d]
