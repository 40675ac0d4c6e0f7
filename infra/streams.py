"""The JetStream topology, as data: streams, and which durable consumer gets which subjects.

Orchestration makes the seed document's consumer table wrong in two ways (payments did not
listen to orders.created, and each service must not receive its own commands); this is the
corrected table. Every consumer names the handler table it dispatches to and its service, whose
database holds the inbox that deduplicates deliveries and the dead letters it gave up on.
"""
from __future__ import annotations

import dataclasses

from infra.nats import ConsumerSpec, StreamSpec

STREAMS = (
    StreamSpec("ORDERS", ("orders.*",)),
    StreamSpec("PAYMENTS", ("payments.*",)),
    StreamSpec("INVENTORY", ("inventory.*",)),
)


@dataclasses.dataclass(frozen=True)
class ConsumerRoute:
    consumer: ConsumerSpec
    handlers: str      # dotted path of a {subject: handler} table
    service: str       # app label of the consuming service: its InboxMessage and DeadLetter
    # Handle a fetched batch in one transaction (infra.consumers.deliveries_handle_together).
    # A batch holds its row locks until it commits: fine for handlers that lock their own order's
    # rows; rows shared between orders (inventory's products) need `batch_locks`, a dotted path
    # to a context manager of the batch's messages, entered in the batch's transaction before its
    # handlers run, that takes every lock first, in the service's lock order, or two batches (or
    # a batch and a single transaction) could deadlock. It may also keep the rows it locked for
    # the handlers until it exits (one SELECT for the batch instead of one per message).
    batch: bool = False
    batch_locks: str = ""
    # For a route whose handlers call an external service before writing
    # (@handler_outside_transaction): a dotted path to `prepare(messages)`, called outside any
    # transaction, that does the batch's external calls and returns, per message, the function
    # that writes its effect in the batch's transaction (or None: handle them one by one). If
    # it raises, the messages are handled one by one, so what it did must be safe to repeat.
    batch_prepare: str = ""

    @property
    def inbox_model(self) -> str:
        return f"{self.service}.InboxMessage"

    @property
    def dead_letter_model(self) -> str:
        return f"{self.service}.DeadLetter"

    @property
    def name(self) -> str:
        return self.consumer.name

    @property
    def key(self) -> str:
        return f"{self.consumer.name}@{self.consumer.stream}"


INVENTORY_BATCH_LOCKS = "inventory.handlers.batch_rows_locked"
SAGA_BATCH_LOCKS = "saga.handlers.batch_rows_locked"
PAYMENTS_BATCH_PREPARE = "payments.handlers.batch_prepare"
ROUTES = (
    ConsumerRoute(ConsumerSpec("inventory-service", "ORDERS",
                               ("orders.created", "orders.confirmed", "orders.cancelled")),
                  "inventory.handlers.HANDLERS", "inventory", batch=True, batch_locks=INVENTORY_BATCH_LOCKS),
    ConsumerRoute(ConsumerSpec("inventory-service", "INVENTORY", ("inventory.release_request",)),
                  "inventory.handlers.HANDLERS", "inventory", batch=True, batch_locks=INVENTORY_BATCH_LOCKS),
    ConsumerRoute(ConsumerSpec("payment-service", "PAYMENTS",
                               ("payments.process_request", "payments.cancel_request", "payments.refund_request")),
                  "payments.handlers.HANDLERS", "payments", batch=True, batch_prepare=PAYMENTS_BATCH_PREPARE),
    ConsumerRoute(ConsumerSpec("order-service-inventory", "INVENTORY",
                               ("inventory.reserved", "inventory.out_of_stock", "inventory.released")),
                  "saga.handlers.HANDLERS", "orders", batch=True, batch_locks=SAGA_BATCH_LOCKS),
    ConsumerRoute(ConsumerSpec("order-service-payment", "PAYMENTS",
                               ("payments.succeeded", "payments.failed", "payments.cancelled", "payments.refunded")),
                  "saga.handlers.HANDLERS", "orders", batch=True, batch_locks=SAGA_BATCH_LOCKS),
)

CONSUMER_NAMES = tuple(dict.fromkeys(route.name for route in ROUTES))


def routes_named(names: list[str] | None) -> list[ConsumerRoute]:
    """The routes for the given consumer names (all when None). Raises KeyError for unknown ones."""
    if not names:
        return list(ROUTES)
    unknown = sorted(set(names) - set(CONSUMER_NAMES))
    if unknown:
        raise KeyError(", ".join(unknown))
    return [route for route in ROUTES if route.name in names]
