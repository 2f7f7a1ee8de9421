"""Formatting for ``budgetspan report``'s text: money, durations, shares, aligned or Markdown
tables, and the JSON form of the report's dataclasses. Text from spans goes through ``text.safe``."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

from budgetspan.report.results import RunStat
from budgetspan.report.text import safe

# --- formatting helpers ---------------------------------------------------------------------


def money(x: float | None) -> str:
    if x is None:
        return "n/a"
    if x == 0:
        return "$0"
    return f"${x:,.2f}" if abs(x) >= 1 else f"${x:.4f}"


def secs(x: float) -> str:
    return f"{x * 1000:.0f} ms" if abs(x) < 1 else f"{x:.2f} s"


def pct(x: float) -> str:
    return f"{x * 100:.0f}%"


def num(x: float) -> str:
    return f"{x:g}" if float(x).is_integer() else f"{x:.2f}"


class Table:
    """Rows of cells rendered as aligned text or a Markdown table (numbers right-aligned)."""

    def __init__(self, headers: Sequence[str], right: Sequence[bool] | None = None) -> None:
        self.headers = list(headers)
        self.right = list(right) if right is not None else [False] + [True] * (len(headers) - 1)
        self.rows: list[list[str]] = []

    def add(self, *cells: object) -> None:
        self.rows.append([safe(str(c)) for c in cells])

    def render(self, markdown: bool = False) -> str:
        if markdown:
            out = ["| " + " | ".join(self.headers) + " |"]
            out.append("|" + "|".join("---:" if r else "---" for r in self.right) + "|")
            out += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in self.rows]
            return "\n".join(out)
        widths = [
            max(len(h), *(len(r[i]) for r in self.rows)) if self.rows else len(h)
            for i, h in enumerate(self.headers)
        ]

        def line(cells: Sequence[str]) -> str:
            parts = [
                c.rjust(w) if r else c.ljust(w) for c, w, r in zip(cells, widths, self.right, strict=True)
            ]
            return "  ".join(parts).rstrip()

        return "\n".join([line(self.headers), line(["-" * w for w in widths]), *(line(r) for r in self.rows)])


class Out:
    def __init__(self, markdown: bool) -> None:
        self.markdown = markdown
        self.parts: list[str] = []

    def heading(self, text: str, level: int = 2) -> None:
        text = safe(text)
        if self.markdown:
            self.parts.append("#" * level + " " + text + "\n")
        else:
            self.parts.append(text + "\n" + ("=" if level == 1 else "-") * len(text) + "\n")

    def text(self, text: str) -> None:
        self.parts.append(safe(text) + "\n")

    def table(self, table: Table) -> None:
        self.parts.append(table.render(self.markdown) + "\n")

    def render(self) -> str:
        return "\n".join(self.parts)


def to_jsonable(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        d = {f.name: to_jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
        if isinstance(obj, RunStat):
            d["wall_s"] = obj.wall_s
        return d
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(x) for x in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


_Out = Out  # the name render.py has always used
