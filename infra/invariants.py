"""The system-wide invariant checker: reads every service's tables (and Stripe) and counts what
should never be. An ops tool: like the admin, it reads across the services' databases; it
never writes.

Each check returns a count and a few example ids. At quiescence (no order in flight) every
count must be 0; `check_invariants` exits non-zero otherwise.
"""
from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
from collections import Counter, defaultdict
from decimal import Decimal

from django.db import connections, transaction
from django.db.models import F, Q

from a4co import clock
from a4co.money import to_minor_units
from infra.deadletters import dead_letter_models
from infra.outbox import outbox_models
from inventory.models import Product, Reservation, ReservationItem
from orders.models import Order
from payments import stripe_gateway
from payments.models import Payment
from saga.definition import SagaStatus
from saga.models import SagaInstance, SagaStep

EXPECTED_SAGA = {"CONFIRMED": {SagaStatus.COMPLETED}, "FAILED": {SagaStatus.FAILED},
                 "CANCELLED": {SagaStatus.COMPENSATED}}


@dataclasses.dataclass
class Check:
    name: str
    description: str
    count: int = 0
    examples: list[str] = dataclasses.field(default_factory=list)
    # Informational checks are reported but are not violations (a dead letter is a message ops
    # should look at; the saga it belonged to still ended through its deadline).
    informational: bool = False

    def add(self, example: str) -> None:
        self.count += 1
        if len(self.examples) < 5:
            self.examples.append(str(example))


def invariants_check(*, stripe: bool = True, outbox_grace_seconds: float = 0) -> list[Check]:
    """Run every check. `outbox_grace_seconds` ignores rows younger than that (a live system)."""
    checks = {name: Check(name, description) for name, description in [
        ("orders_not_terminal", "orders still PENDING"),
        ("sagas_past_deadline", "sagas whose deadline passed without the sweep acting"),
        ("sagas_compensation_failed", "sagas stopped in COMPENSATION_FAILED (need ops)"),
        ("order_saga_mismatch", "orders whose status contradicts their saga's"),
        ("stock_negative", "products with a negative quantity"),
        ("stock_not_adding_up", "available + reserved + sold != stocked, or reserved/sold != reservations"),
        ("orders_charged_twice", "orders with more than one successful charge"),
        ("ended_unpaid_holding_money", "cancelled or failed orders whose money was not given back"),
        ("ended_unpaid_holding_stock", "cancelled or failed orders still holding stock"),
        ("confirmed_not_settled", "confirmed orders without one succeeded payment of the total and committed stock"),
        ("outbox_unpublished", "outbox rows never published"),
        ("dead_letters_open", "dead letters waiting for ops"),
        ("messages_applied_twice", "saga transitions applied more than once"),
    ]}
    checks["dead_letters_open"].informational = True
    now = clock.now()
    with _snapshot("orders"):
        orders = {str(o["id"]): o for o in Order.objects.values("id", "status", "total_amount", "currency")}
        sagas = {str(s["order_id"]): s for s in SagaInstance.objects.values("order_id", "status", "deadline_at")}
    reservations = {r["order_id"]: r["status"] for r in Reservation.objects.values("order_id", "status")}
    payments = {p["order_id"]: p for p in Payment.objects.values("order_id", "status", "amount", "refunded_amount")}

    for order_id, order in orders.items():
        saga = sagas.get(order_id)
        if order["status"] == "PENDING":
            checks["orders_not_terminal"].add(order_id)
        elif saga is None or saga["status"] not in EXPECTED_SAGA[order["status"]]:
            checks["order_saga_mismatch"].add(f"{order_id} {order['status']}/{saga and saga['status']}")
        if order["status"] in ("CANCELLED", "FAILED"):
            if reservations.get(order_id) in ("ACTIVE", "COMMITTED"):
                checks["ended_unpaid_holding_stock"].add(order_id)
            payment = payments.get(order_id)
            if payment and payment["status"] == "SUCCEEDED":
                checks["ended_unpaid_holding_money"].add(f"{order_id} (payment row SUCCEEDED)")
        if order["status"] == "CONFIRMED":
            payment = payments.get(order_id)
            if (payment is None or payment["status"] != "SUCCEEDED" or payment["amount"] != order["total_amount"]
                    or reservations.get(order_id) != "COMMITTED"):
                checks["confirmed_not_settled"].add(
                    f"{order_id} payment={payment and payment['status']} stock={reservations.get(order_id)}")
    for order_id, saga in sagas.items():
        if saga["status"] == SagaStatus.COMPENSATION_FAILED:
            checks["sagas_compensation_failed"].add(order_id)
        elif saga["deadline_at"] is not None and saga["deadline_at"] < now - dt.timedelta(seconds=30):
            checks["sagas_past_deadline"].add(order_id)

    _check_stock(checks)
    if stripe:
        _check_money(checks, orders)
    for model in outbox_models():
        pending = model.objects.filter(published_at__isnull=True,
                                       created_at__lt=now - dt.timedelta(seconds=outbox_grace_seconds))
        for row in pending.values_list("id", flat=True)[:5]:
            checks["outbox_unpublished"].examples.append(f"{model._meta.label} {row}")
        checks["outbox_unpublished"].count += pending.count()
    for model in dead_letter_models():
        for dead in model.objects.filter(status="OPEN").values_list("subject", "aggregate_id"):
            checks["dead_letters_open"].add(" ".join(dead))
    _check_applied_twice(checks)
    return list(checks.values())


@contextlib.contextmanager
def _snapshot(alias: str):
    """A read-only REPEATABLE READ transaction: every query inside sees one consistent moment, so a
    check never compares two tables read on either side of a concurrent commit. Inside a caller's
    transaction (tests), that transaction is the snapshot."""
    nested = connections[alias].in_atomic_block
    with transaction.atomic(using=alias):
        if not nested:
            with connections[alias].cursor() as cursor:
                cursor.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
        yield


def _check_stock(checks: dict[str, Check]) -> None:
    with _snapshot("inventory"):
        _check_stock_in_snapshot(checks)


def _check_stock_in_snapshot(checks: dict[str, Check]) -> None:
    reserved = defaultdict(int)
    sold = defaultdict(int)
    for item in ReservationItem.objects.filter(reservation__status__in=["ACTIVE", "COMMITTED"]).values(
            "product_id", "quantity", "reservation__status"):
        (reserved if item["reservation__status"] == "ACTIVE" else sold)[item["product_id"]] += item["quantity"]
    negative = Q(available_quantity__lt=0) | Q(reserved_quantity__lt=0) | Q(sold_quantity__lt=0)
    for pid in Product.objects.filter(negative).values_list("product_id", flat=True):
        checks["stock_negative"].add(pid)
    for product in Product.objects.values("product_id", "available_quantity", "reserved_quantity",
                                          "sold_quantity", "stocked_quantity"):
        pid = product["product_id"]
        books = product["available_quantity"] + product["reserved_quantity"] + product["sold_quantity"]
        if (books != product["stocked_quantity"] or product["reserved_quantity"] != reserved[pid]
                or product["sold_quantity"] != sold[pid]):
            checks["stock_not_adding_up"].add(
                f"{pid} a={product['available_quantity']} r={product['reserved_quantity']}/{reserved[pid]} "
                f"s={product['sold_quantity']}/{sold[pid]} stocked={product['stocked_quantity']}")


def _check_money(checks: dict[str, Check], orders: dict) -> None:
    for order_id, money in stripe_gateway.money_by_order().items():
        order = orders.get(order_id)
        if money.succeeded_intents > 1:
            checks["orders_charged_twice"].add(order_id)
        if order is None:
            continue
        if order["status"] in ("CANCELLED", "FAILED") and money.kept_minor > 0:
            checks["ended_unpaid_holding_money"].add(f"{order_id} (Stripe keeps {money.kept_minor})")
        if order["status"] == "CONFIRMED":
            total = to_minor_units(Decimal(order["total_amount"]), order["currency"])
            if money.kept_minor != total:
                checks["confirmed_not_settled"].add(f"{order_id} Stripe keeps {money.kept_minor} of {total}")
        if money.refunded_minor > money.charged_minor or money.refunds > 1:
            checks["ended_unpaid_holding_money"].add(f"{order_id} refunded {money.refunds}x")


def _check_applied_twice(checks: dict[str, Check]) -> None:
    # Every status change of a saga happens once; only COMPENSATING may be re-entered (manual retry).
    entered = Counter(SagaStep.objects.filter(applied=True).exclude(status_from=F("status_to"))
                      .exclude(status_to=SagaStatus.COMPENSATING).values_list("saga__order_id", "status_to"))
    for (order_id, status), times in entered.items():
        if times > 1:
            checks["messages_applied_twice"].add(f"{order_id} entered {status} {times}x")


def invariants_violations(checks: list[Check]) -> int:
    return sum(check.count for check in checks if not check.informational)



