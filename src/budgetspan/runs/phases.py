"""The phases of an agent run, and the phase each kind of call gets when nothing says otherwise."""

from __future__ import annotations

from enum import Enum


class Phase(str, Enum):
    CONTEXT_ASSEMBLY = "context_assembly"
    MODEL_DECISION = "model_decision"
    TOOL_EXECUTION = "tool_execution"
    VERIFICATION = "verification"
    APPROVAL = "approval"
    FINAL_RESPONSE = "final_response"


PHASES: tuple[str, ...] = tuple(p.value for p in Phase)

# Default phase by gen_ai.operation.name; an enclosing budgetspan.phase(...) overrides it.
DEFAULT_PHASE_BY_OPERATION: dict[str, str] = {
    "chat": Phase.MODEL_DECISION.value,
    "text_completion": Phase.MODEL_DECISION.value,
    "generate_content": Phase.MODEL_DECISION.value,
    "embeddings": Phase.CONTEXT_ASSEMBLY.value,
    "retrieval": Phase.CONTEXT_ASSEMBLY.value,
    "execute_tool": Phase.TOOL_EXECUTION.value,
}


def check_phase(name: str) -> str:
    """Accept a Phase or one of its names; anything else is a clear error."""
    value = name.value if isinstance(name, Phase) else str(name)
    if value not in PHASES:
        raise ValueError(f"unknown phase {name!r}; expected one of: {', '.join(PHASES)}")
    return value
