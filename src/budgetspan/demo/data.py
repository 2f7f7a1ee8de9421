"""The demo's world: tickets, orders, customers and the support policy (all made up)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Ticket:
    id: str
    profile: str  # budget profile: interactive (chat) or background (queue)
    customer: str
    subject: str
    request: str  # what the customer asks for, as a noun phrase
    orders: tuple[str, ...]
    query: str  # what to search the policy for
    refund_usd: float = 0.0
    # The background worker predates the parallel lookups: it checks the order, then the history.
    parallel_lookups: bool = True
    story: str = ""  # what this ticket shows, printed by the demo
    # The agent keeps asking the carrier until the parcel moves (a loop when it never does).
    track_until_delivered: bool = False
    # At a limit, the supervisor (the run's on_limit policy) approves more model calls once.
    supervisor_extends: bool = False


@dataclass(frozen=True)
class Order:
    id: str
    status: str
    detail: str
    total_usd: float


@dataclass(frozen=True)
class Customer:
    id: str
    name: str
    since: str
    tier: str
    history: tuple[str, ...] = field(default_factory=tuple)


@dataclass(frozen=True)
class PolicyDoc:
    id: str
    title: str
    text: str
    keywords: frozenset[str]


POLICIES: tuple[PolicyDoc, ...] = (
    PolicyDoc(
        "POL-SHIP-2",
        "Late deliveries",
        "Standard deliveries take 3 to 5 business days; after 7 business days the customer may "
        "choose a free reshipment or a full refund of the order.",
        frozenset({"late", "delivery", "shipping", "parcel", "where", "tracking"}),
    ),
    PolicyDoc(
        "POL-RET-1",
        "Returns and exchanges",
        "Items can be returned or exchanged within 30 days of delivery if unused; exchanges for "
        "another size ship free of charge once the return is scanned by the carrier.",
        frozenset({"return", "exchange", "size", "wrong", "swap"}),
    ),
    PolicyDoc(
        "POL-REF-4",
        "Refunds and approval limits",
        "Agents may approve refunds up to 500 USD; larger refunds need a supervisor's approval, "
        "and the supervisor takes over the conversation.",
        frozenset({"refund", "damaged", "broken", "money", "charge"}),
    ),
    PolicyDoc(
        "POL-ACC-3",
        "Account closure and data",
        "Accounts are closed within 2 business days of a request; personal data is deleted "
        "within 30 days unless an open order or a legal hold requires keeping it.",
        frozenset({"close", "account", "delete", "data", "privacy"}),
    ),
    PolicyDoc(
        "POL-BILL-1",
        "Billing questions",
        "Duplicate charges are refunded automatically within 5 business days once confirmed "
        "against the payment processor's records.",
        frozenset({"billing", "charged", "twice", "invoice", "duplicate"}),
    ),
)

ORDERS: dict[str, Order] = {
    o.id: o
    for o in (
        Order(
            "A-1001",
            "in transit",
            "shipped on 18 Nov with UPS, tracking 1Z999AA10123456784; the carrier reports a weather delay",
            84.90,
        ),
        Order("A-1002", "delivered", "delivered on 20 Nov; running shoes, size 42", 129.00),
        Order(
            "A-1003",
            "delivered damaged",
            "delivered on 19 Nov; the customer reported a cracked screen on the same day",
            640.00,
        ),
        Order("A-2001", "delivered", "delivered on 2 Nov; desk lamp", 45.00),
        Order("A-2002", "in transit", "shipped on 21 Nov with DHL", 19.99),
        Order("A-2003", "delivered", "delivered on 12 Nov; office chair", 289.00),
        Order("A-2004", "cancelled", "cancelled on 10 Nov and refunded", 74.50),
        Order("A-2005", "processing", "payment received, waiting for stock", 112.00),
        Order("A-3001", "delivered", "delivered on 1 Oct; no open returns", 35.00),
        Order("A-3002", "delivered", "delivered on 14 Nov; charged twice by the card issuer", 58.40),
        Order("A-4001", "in transit", "shipped on 15 Nov with GLS; no scan since 17 Nov", 66.00),
        Order("A-5001", "delivered", "delivered on 3 Nov; garden hose", 24.90),
        Order("A-5002", "in transit", "shipped on 22 Nov with DPD", 310.00),
        Order("A-5003", "processing", "waiting for the second item of the order", 48.00),
    )
}

CUSTOMERS: dict[str, Customer] = {
    c.id: c
    for c in (
        Customer("C-101", "Dana Ruiz", "2021", "gold", ("two earlier tickets, both about deliveries",)),
        Customer("C-102", "Sam Okafor", "2024", "standard", ("first ticket",)),
        Customer("C-103", "Mei Tanaka", "2019", "gold", ("one refund in 2023",)),
        Customer("C-104", "Lars Berg", "2022", "standard", ("asked about several orders before",)),
        Customer("C-105", "Priya Nair", "2020", "standard", ("no open orders",)),
        Customer("C-106", "Tom Weber", "2023", "standard", ("first ticket",)),
        Customer("C-107", "Ana Silva", "2018", "gold", ("one billing question in 2022",)),
        Customer("C-108", "Omar Haddad", "2022", "standard", ("first ticket",)),
        Customer("C-109", "Julia Novak", "2017", "gold", ("asked about several orders before",)),
    )
}

TICKETS: tuple[Ticket, ...] = (
    Ticket(
        "T-1001",
        "interactive",
        "C-101",
        "Where is my parcel?",
        "the delivery of order A-1001",
        ("A-1001",),
        "late delivery where is my parcel tracking",
        story="a late parcel: a straightforward answer",
    ),
    Ticket(
        "T-1002",
        "interactive",
        "C-102",
        "Wrong size",
        "exchanging the shoes from order A-1002",
        ("A-1002",),
        "exchange wrong size",
        story="the customer-history service fails once and is retried",
    ),
    Ticket(
        "T-1003",
        "interactive",
        "C-103",
        "Screen arrived broken",
        "a refund for order A-1003",
        ("A-1003",),
        "refund damaged broken",
        refund_usd=640.00,
        story="a refund above the agent's limit: the supervisor takes over",
    ),
    Ticket(
        "T-1004",
        "interactive",
        "C-104",
        "Five orders, five questions",
        "the status of orders A-2001 to A-2005",
        ("A-2001", "A-2002", "A-2003", "A-2004", "A-2005"),
        "delivery refund return",
        story="one answer per order needs more model calls than a chat budget allows",
    ),
    Ticket(
        "T-1005",
        "background",
        "C-105",
        "Close my account",
        "closing the account and deleting the data",
        ("A-3001",),
        "close account delete data",
        parallel_lookups=False,
        story="queued work: the old worker looks things up one after another",
    ),
    Ticket(
        "T-1006",
        "background",
        "C-106",
        "Order never arrived",
        "the delivery of order A-9999",
        ("A-9999",),
        "late delivery",
        parallel_lookups=False,
        story="an order number that does not exist: the run fails",
    ),
    Ticket(
        "T-1007",
        "background",
        "C-107",
        "Charged twice",
        "a duplicate charge on order A-3002",
        ("A-3002",),
        "billing charged twice duplicate",
        parallel_lookups=False,
        story="queued work, sequential lookups again",
    ),
    Ticket(
        "T-1008",
        "interactive",
        "C-108",
        "Parcel stuck for a week",
        "news about the parcel of order A-4001",
        ("A-4001",),
        "late delivery parcel tracking",
        track_until_delivered=True,
        story="the agent keeps asking the carrier, which says the same: stopped as a loop",
    ),
    Ticket(
        "T-1009",
        "interactive",
        "C-109",
        "Three orders",
        "the status of orders A-5001 to A-5003",
        ("A-5001", "A-5002", "A-5003"),
        "delivery return",
        supervisor_extends=True,
        story="one model call short of a chat budget: a supervisor approves one more",
    ),
)

# The customer-history service times out once for this customer (the tool retries).
FLAKY_HISTORY = frozenset({"C-102"})
