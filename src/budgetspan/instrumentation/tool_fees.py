"""Built-in tool fees of one model call: OpenAI's Responses API tools and Anthropic's server tools.

A ``FeePlan`` is made from the request: the built-in tools it enables give the worst case held
before the call (``A.TOOL_FEES_WORST_CASE``: one use of each enabled tool, or ``max_tool_calls`` /
``max_uses`` uses where the request bounds them, and one code container); a tool type no price
is known for is named once in the log and on the span. As the response arrives, the plan counts
the uses it reports (OpenAI's ``*_call`` output items, Anthropic's ``usage.server_tool_use`` and
``server_tool_use`` blocks) and prices them (``accounting.tool_fees``); the sum goes into the
call's cost (``Spend.tool_fees_usd``) and onto its span.
"""

from __future__ import annotations

import logging
from typing import Any

from budgetspan import attributes as A
from budgetspan.accounting import tool_fees as fees
from budgetspan.accounting.ledger import Spend
from budgetspan.instrumentation.patching import given, positive_int
from budgetspan.instrumentation.usage import count, field

log = logging.getLogger(__name__)

#: Request tool types billed by their tokens alone (no per-use fee).
_OPENAI_FREE = frozenset(
    {"function", "custom", "mcp", "computer", "computer_use_preview", "local_shell", "apply_patch"}
    | {"namespace"}
)
_OPENAI_TOOLS = {  # request tool type -> fee name
    "web_search": "web_search",
    "web_search_2025_08_26": "web_search",
    "web_search_preview": "web_search_preview",
    "web_search_preview_2025_03_11": "web_search_preview",
    "file_search": "file_search",
    "code_interpreter": "code_interpreter",
    "image_generation": "image_generation",
}
#: Response output items that are a use of a tool billed by tokens alone.
_OPENAI_FREE_ITEMS = frozenset(
    {"function_call", "computer_call", "local_shell_call", "shell_call", "apply_patch_call"}
    | {"mcp_call", "custom_tool_call"}
)
_ANTHROPIC_CLIENT_PREFIXES = ("bash_", "text_editor_", "computer_", "memory_")
_ANTHROPIC_TOOLS = {
    "web_search_": "web_search",
    "web_fetch_": "web_fetch",
    "code_execution_": "code_execution",
}
_CODE_EXECUTION = frozenset({"code_execution", "bash_code_execution", "text_editor_code_execution"})
_SERVER_COUNTS = {"web_search_requests": "web_search", "web_fetch_requests": "web_fetch"}

#: Containers already charged (one fee per container, whichever call used it first); bounded.
_charged_containers: dict[str, None] = {}
_warned: set[tuple[str | None, str]] = set()


class FeePlan:
    """One call's built-in tools: what the request enables, what the response used. Made for
    every Responses and Messages call, so nothing is made until a tool is seen (class defaults)."""

    search = "web_search_preview"  # which search fee a web_search_call is (the dearer when unsaid)
    container_memory: Any = None
    image: tuple[Any, Any] = (None, None)  # the request's image quality and size
    unknown: tuple[str, ...] = ()  # tool types with no known fee
    uses: dict[str, int] | None = None  # uses by tool
    charges: dict[str, float] | None = None  # USD by tool
    estimated = False
    code = False  # Anthropic code execution used, its container not charged yet
    container_id: Any = None
    _seen: set[str] | None = None  # item ids counted (a stream restates them)
    blocks: dict[str, int] | None = None  # Anthropic server tool blocks by name

    def __init__(self, provider: str | None) -> None:
        self.provider = provider

    @property
    def usd(self) -> float:
        return sum(self.charges.values()) if self.charges else 0.0

    def add(self, tool: str, usd: float | None, n: int = 1, estimated: bool = False) -> None:
        """``n`` more uses of ``tool`` at ``usd`` each (None: no known price)."""
        if usd is None:
            self.not_priced(tool)
            return
        if self.uses is None or self.charges is None:
            self.uses, self.charges = {}, {}
        self.uses[tool] = self.uses.get(tool, 0) + n
        self.charges[tool] = self.charges.get(tool, 0.0) + usd * n
        self.estimated = self.estimated or estimated or (fees.family(self.provider), tool) in fees.ESTIMATED

    def reported(self, tool: str, n: int) -> None:
        """A cumulative count of uses the provider reported (a stream restates it: not added)."""
        had = self.uses.get(tool, 0) if self.uses else 0
        if n > had:
            self.add(tool, fees.fee(self.provider, tool), n - had)

    def not_priced(self, tool: str) -> None:
        if tool not in self.unknown:
            self.unknown = (*self.unknown, tool)
        key = (self.provider, tool)
        if key not in _warned and len(_warned) < 100:
            _warned.add(key)
            log.warning(
                "budgetspan: %r's built-in tool %r has no known per-use price; its uses are not "
                "counted in dollars (the span says %s)",
                self.provider,
                tool,
                A.TOOL_FEES_UNPRICED,
            )

    def container(self, container_id: Any, usd: float | None, tool: str) -> None:
        """A code container used: charged once per container id (a new one if none is said)."""
        if isinstance(container_id, str):
            if container_id in _charged_containers:
                return
            if len(_charged_containers) > 4096:
                _charged_containers.clear()
            _charged_containers[container_id] = None
        self.add(tool, usd)

    def into(self, spend: Spend | None) -> Spend | None:
        """``spend`` with the fees counted so far (its cost is priced with them)."""
        if self.code:
            self.code = False
            self.container(self.container_id, fees.fee(self.provider, "code_execution"), "code_execution")
        if spend is not None and self.uses:
            spend.tool_fees_usd = self.usd
        return spend

    def write(self, attributes: dict[str, Any]) -> None:
        """The span attributes of the fees used (at the end of the call)."""
        if self.uses:
            attributes[A.TOOL_FEES_USD] = self.usd
            attributes[A.TOOL_FEES_USES] = [f"{tool}={n}" for tool, n in sorted(self.uses.items())]
        if self.estimated:
            attributes[A.TOOL_FEES_ESTIMATED] = True
        if self.unknown:
            attributes[A.TOOL_FEES_UNPRICED] = list(self.unknown)

    def first(self, key: Any) -> bool:
        """Whether an item with id ``key`` is seen the first time (no id: always)."""
        if not isinstance(key, str):
            return True
        if self._seen is None:
            self._seen = set()
        elif key in self._seen:
            return False
        self._seen.add(key)
        return True


def _requested_tools(kwargs: dict[str, Any]) -> list[Any] | tuple[Any, ...]:
    """The request's ``tools`` when given as a list or tuple; never a caller's iterator (reading
    it here would leave the SDK nothing to send)."""
    tools = kwargs.get("tools")
    return tools if isinstance(tools, (list, tuple)) else ()


def _hold(
    plan: FeePlan, attributes: dict[str, Any], per_use: list[float], bound: int | None, container: float
) -> None:
    """The worst case: one use of each per-use tool, or ``bound`` uses of the dearest (OpenAI's
    ``max_tool_calls`` bounds them all together); plus one code container. Tools with no known
    fee are named before the call is sent, so ``BUDGETSPAN_UNPRICED=refuse`` can refuse it
    (``calls.pricing.check_unpriced``)."""
    if plan.unknown:
        attributes[A.TOOL_FEES_UNPRICED] = list(plan.unknown)
    if per_use or container:
        total = (max(per_use) * bound if bound else sum(per_use)) if per_use else 0.0
        attributes[A.TOOL_FEES_WORST_CASE] = total + container


# --- OpenAI Responses API -------------------------------------------------------------------


def openai_plan(provider: str | None, kwargs: dict[str, Any], attributes: dict[str, Any]) -> FeePlan:
    """The plan of a Responses request; its worst case into ``attributes``."""
    plan = FeePlan(provider)
    per_use: list[float] = []
    container = 0.0
    for tool in _requested_tools(kwargs):
        kind = field(tool, "type")
        if kind == "shell":  # the hosted shell runs in a container: a fee no price is known for
            if field(field(tool, "environment"), "type") == "container_auto":
                plan.not_priced("shell (container_auto)")
            continue
        if not isinstance(kind, str) or kind in _OPENAI_FREE:
            continue
        name = _OPENAI_TOOLS.get(kind)
        price = None if name is None else fees.fee(provider, name)
        if name is None or price is None:
            plan.not_priced(kind)
        elif name == "code_interpreter":
            plan.container_memory = field(field(tool, "container"), "memory_limit")
            container = fees.container_fee(plan.container_memory)
        elif name == "image_generation":
            plan.image = (field(tool, "quality"), field(tool, "size"))
            per_use.append(fees.image_fee(*plan.image)[0])
        else:
            per_use.append(price)
            if name == "web_search":
                plan.search = name
    _hold(plan, attributes, per_use, positive_int(given(kwargs.get("max_tool_calls"))), container)
    return plan


def chat_plan(provider: str | None, kwargs: dict[str, Any], attributes: dict[str, Any]) -> FeePlan | None:
    """Chat Completions with ``web_search_options`` (the search models): each request searches
    the web first, one search at the preview rate, counted with the call (estimated: the fee is
    per search, and one per request is what the docs describe); None for any other chat call."""
    if given(kwargs.get("web_search_options")) is None:
        return None
    plan = FeePlan(provider)
    price = fees.fee(provider, "web_search_preview")
    plan.add("web_search_preview", price, estimated=True)
    if price is not None:
        attributes[A.TOOL_FEES_WORST_CASE] = price
    return plan


def openai_response(plan: FeePlan, response: Any) -> None:
    """Count the built-in tool calls among a Response's output items."""
    provider = plan.provider
    items = field(response, "output")
    for item in items if isinstance(items, list) else ():
        kind = field(item, "type")
        if not isinstance(kind, str) or not kind.endswith("_call") or kind in _OPENAI_FREE_ITEMS:
            continue
        if not plan.first(field(item, "id")):
            continue
        if kind == "web_search_call":
            plan.add(plan.search, fees.fee(provider, plan.search))
        elif kind == "file_search_call":
            plan.add("file_search", fees.fee(provider, "file_search"))
        elif kind == "code_interpreter_call" and fees.family(provider) == "openai":
            usd = fees.container_fee(plan.container_memory)
            plan.container(field(item, "container_id"), usd, "code_interpreter")
        elif kind == "image_generation_call" and fees.family(provider) == "openai":
            quality, size = field(item, "quality"), field(item, "size")
            usd, estimated = fees.image_fee(quality or plan.image[0], size or plan.image[1])
            plan.add("image_generation", usd, estimated=estimated)
        else:
            plan.not_priced(kind)


# --- Anthropic Messages API -----------------------------------------------------------------


def anthropic_plan(provider: str | None, kwargs: dict[str, Any], attributes: dict[str, Any]) -> FeePlan:
    """The plan of a Messages request (``max_uses`` bounds each server tool apart)."""
    plan = FeePlan(provider)
    per_use: list[float] = []
    container = 0.0
    for tool in _requested_tools(kwargs):
        kind = field(tool, "type")
        if not isinstance(kind, str) or kind == "custom" or kind.startswith(_ANTHROPIC_CLIENT_PREFIXES):
            continue
        name = next((n for prefix, n in _ANTHROPIC_TOOLS.items() if kind.startswith(prefix)), None)
        price = None if name is None else fees.fee(provider, name)
        if price is None:
            plan.not_priced(kind)
        elif name == "code_execution":
            container = price
        else:
            per_use.append(price * (positive_int(field(tool, "max_uses")) or 1))
    _hold(plan, attributes, per_use, None, container)
    return plan


def anthropic_usage(plan: FeePlan, usage: Any) -> None:
    """``usage.server_tool_use``: cumulative counts of searches and fetches (and any newer one)."""
    counts = field(usage, "server_tool_use")
    if counts is None:  # (most answers: first, it is the cheap test)
        return
    if isinstance(counts, dict):
        names: Any = counts
    elif isinstance(getattr(counts, "__dict__", None), dict):  # an SDK model (and its extras)
        names = {**vars(counts), **(getattr(counts, "__pydantic_extra__", None) or {})}
    else:
        return  # absent, or not what the API sends
    for key in names:
        n = count(field(counts, key))
        if not n or not isinstance(key, str) or not key.endswith("_requests"):
            continue
        tool = _SERVER_COUNTS.get(key)
        if tool is None:
            plan.not_priced(key.removesuffix("_requests"))
        else:
            plan.reported(tool, n)


def anthropic_block(plan: FeePlan, block: Any) -> None:
    """A ``server_tool_use`` content block: code execution (charged by container), a search or
    fetch (counted here too, in case ``usage`` does not say: the larger count stands), or a tool
    with no known fee."""
    if field(block, "type") != "server_tool_use" or not plan.first(field(block, "id")):
        return
    name = field(block, "name")
    if not isinstance(name, str):
        return
    if name in _CODE_EXECUTION:
        plan.code = True
    elif name in ("web_search", "web_fetch"):
        if plan.blocks is None:
            plan.blocks = {}
        plan.blocks[name] = n = plan.blocks.get(name, 0) + 1
        plan.reported(name, n)
    else:
        plan.not_priced(name)


def anthropic_container(plan: FeePlan, container: Any) -> None:
    """The code container a Message (or a stream's ``message_delta``) names."""
    container_id = field(container, "id")
    if isinstance(container_id, str):
        plan.container_id = container_id
