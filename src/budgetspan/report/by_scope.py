"""``budgetspan report --by tenant`` (or ``--by user``): runs, outcomes and cost per tenant.

Read from the run spans' ``budgetspan.tenant.id`` and ``user.id``; the per-tenant view that the
metrics leave out (tenant ids are no metric label by default). A run stopped by a scope budget says
so in its explanation ("Stopped: tenant acme has spent ..."): counted as ``scope stops``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

from budgetspan.report.results import RunStat
from budgetspan.report.text import safe

BY = ("tenant", "user")  # report --by tenant | user (the default groups by workflow)
NONE = "(none)"


@dataclass
class ScopeRow:
    name: str
    runs: int = 0
    succeeded: int = 0
    budget_exhausted: int = 0
    scope_stops: int = 0
    cost_usd: float = 0.0

    @property
    def cost_per_success(self) -> float | None:
        return self.cost_usd / self.succeeded if self.succeeded else None


def rows(runs: Sequence[RunStat], by: str) -> list[ScopeRow]:
    """One row per tenant (or user), most spent first."""
    found: dict[str, ScopeRow] = {}
    names = {r.run_id: (r.tenant if by == "tenant" else r.user) or NONE for r in runs}
    by_id = {r.run_id: r for r in runs} if any(r.late for r in runs) else {}
    for r in runs:
        name = names[r.run_id]
        row = found.get(name)
        if row is None:
            row = found[name] = ScopeRow(name)
        row.runs += 1
        # A nested run's calls are in its parent's figures too: counted once per tenant.
        if r.parent_id is None or names.get(r.parent_id) != name:
            row.cost_usd += r.cost_usd  # the run's ledger figure (else its calls'), and its late calls'
        elif r.late:  # its calls that ended after the outer run of its tenant are not in its figure
            top = _outermost(r, by_id, names)
            row.cost_usd += sum(c for end, c in r.late if end > top.end_ns)
        row.succeeded += r.outcome == "success"
        row.budget_exhausted += r.outcome == "budget_exhausted"
        row.scope_stops += bool(r.explanation and r.explanation.startswith(f"Stopped: {by} "))
    return sorted(found.values(), key=lambda row: (-row.cost_usd, row.name))


def _outermost(r: RunStat, by_id: dict[str, RunStat], names: dict[str, str]) -> RunStat:
    """The outermost run around ``r`` of the same tenant (or user): its figure holds ``r``'s."""
    while r.parent_id is not None and r.parent_id in by_id and names.get(r.parent_id) == names[r.run_id]:
        r = by_id[r.parent_id]
    return r


def render_by(runs: Sequence[RunStat], by: str, fmt: str) -> str:
    table = rows(runs, by)
    if fmt == "json":
        import json

        return (
            json.dumps(
                {"by": by, "rows": [{**asdict(r), "cost_per_success": r.cost_per_success} for r in table]}
            )
            + "\n"
        )
    head = [by, "runs", "succeeded", "budget exhausted", "scope stops", "cost", "cost per success"]
    body = [
        [
            safe(r.name),
            str(r.runs),
            str(r.succeeded),
            str(r.budget_exhausted),
            str(r.scope_stops),
            f"${r.cost_usd:.4f}",
            "-" if r.cost_per_success is None else f"${r.cost_per_success:.4f}",
        ]
        for r in table
    ]
    if fmt == "markdown":
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in body]
        return f"## Runs by {by}\n\n" + "\n".join(lines) + "\n"
    widths = [max(len(row[i]) for row in [head, *body]) for i in range(len(head))]
    return (
        "\n".join(
            "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
            for row in [head, *body]
        )
        + "\n"
    )
