"""Plain-text tables for the terminal and job logs (the CLI's listings, benchmark and sweep tables)."""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any


def format_table(headers: Sequence[str], rows: Iterable[Sequence[Any]], *, align_right: Iterable[int] = (),
                 rule: bool = True) -> str:
    """Columns padded to their widest cell, `align_right` columns right-aligned, a rule of dashes under
    the header unless `rule` is False; trailing spaces trimmed."""
    rows = [[str(cell) for cell in row] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(headers)]
    right = set(align_right)

    def line(cells):
        return "  ".join(c.rjust(w) if i in right else c.ljust(w)
                         for i, (c, w) in enumerate(zip(cells, widths, strict=True))).rstrip()

    return "\n".join([line(headers), *([line(["-" * w for w in widths])] if rule else []), *map(line, rows)])
