"""The JetStream topology, as data: streams, and which durable consumer gets which subjects.

Orchestration makes the seed document's consumer table wrong in two ways (payments did not
listen to orders.created, and each service must not receive its own commands); this is the
corrected table. Every consumer names the handler table it dispatches to and the inbox model
(in its own service's database) that deduplicates deliveries.
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
    inbox_model: str   # "app_label.Model" of the inbox in the consuming service's database

    @property
    def name(self) -> str:
        return self.consumer.name

    @property
    def key(self) -> str:
        return f"{self.consumer.name}@{self.consumer.stream}"


ROUTES = (
    ConsumerRoute(ConsumerSpec("inventory-service", "ORDERS",
                               ("orders.created", "orders.confirmed", "orders.cancelled")),
                  "inventory.handlers.HANDLERS", "inventory.InboxMessage"),
    ConsumerRoute(ConsumerSpec("inventory-service", "INVENTORY", ("inventory.release_request",)),
                  "inventory.handlers.HANDLERS", "inventory.InboxMessage"),
    ConsumerRoute(ConsumerSpec("payment-service", "PAYMENTS",
                               ("payments.process_request", "payments.cancel_request", "payments.refund_request")),
                  "payments.handlers.HANDLERS", "payments.InboxMessage"),
    ConsumerRoute(ConsumerSpec("order-service-inventory", "INVENTORY",
                               ("inventory.reserved", "inventory.out_of_stock", "inventory.released")),
                  "saga.handlers.HANDLERS", "orders.InboxMessage"),
    ConsumerRoute(ConsumerSpec("order-service-payment", "PAYMENTS",
                               ("payments.succeeded", "payments.failed", "payments.cancelled", "payments.refunded")),
                  "saga.handlers.HANDLERS", "orders.InboxMessage"),
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
