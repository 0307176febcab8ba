"""Terminal tables that read well at 80 columns: no box drawing, main cells never wrap.

Columns are named ``"name"`` (a main column: kept on one line, whole) or ``"name~"`` (free
text such as a reason or notes: wraps at spaces within the width left).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from rich import box
from rich.console import Console
from rich.table import Table


def make(columns: Sequence[str], rows: Iterable[Sequence[str]], title: str | None = None) -> Table:
    table = Table(
        title=title,
        box=box.SIMPLE_HEAD,
        pad_edge=False,
        collapse_padding=True,  # one space between columns, not two
        title_justify="left",
    )
    for col in columns:
        if col.endswith("~"):
            table.add_column(col[:-1], min_width=14)  # wraps at spaces
        else:
            table.add_column(col, no_wrap=True)
    for row in rows:
        table.add_row(*row)
    return table


def show(*tables: Table) -> None:
    console = Console(highlight=False)
    for t in tables:
        console.print(t)
