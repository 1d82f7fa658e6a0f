"""Reading the project's own documents back in tests: headings' sections and markdown tables."""

from __future__ import annotations

import re


def sections(text: str, level: str) -> dict[str, str]:
    """The text under each heading of the given level ("##" or "###"), by heading."""
    parts = re.split(rf"^{level} (.+)$", text, flags=re.MULTILINE)
    return {heading.strip(): body for heading, body in zip(parts[1::2], parts[2::2], strict=True)}


def table(body: str) -> list[dict[str, str]]:
    """The first markdown table of `body`, as one dict per row keyed by the header's words."""
    lines = [line.strip() for line in body.splitlines()]
    start = next(i for i, line in enumerate(lines) if line.startswith("|"))
    rows = []
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip("|").split("|")])
    header, separator, *cells = rows
    assert all(set(cell) <= set("-:") for cell in separator), "second row must be |---|"
    assert all(len(row) == len(header) for row in cells), "a row has a stray `|` or lacks a cell"
    return [dict(zip(header, row, strict=True)) for row in cells]
