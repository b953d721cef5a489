"""Documents made of segments (paragraph lines), for sentence-pair objectives (NSP).

Text in the WikiText layout is split at top-level `= Title =` headings; text without such
headings is split at empty lines (BERT's pretraining format: one segment per line, a blank
line between documents). Section headings (`= = Section = =`) and empty lines are dropped.
"""

from __future__ import annotations

import re

_TITLE = re.compile(r"^\s*=\s[^=].*[^=]\s=\s*$")  # ' = Title = ', not ' = = Section = = '
_HEADING = re.compile(r"^\s*=(\s=)*\s.*\s=(\s=)*\s*$")


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
