"""Fixtures for tests against the real NATS JetStream server of the test run."""
from __future__ import annotations

import asyncio
import threading

from django.db import transaction

from infra.consumers import ConsumerRunner
from infra.outbox import outbox_append
from orders.messages import OrderCreated
from orders.models import OutboxMessage as OrdersOutbox
from tests.helpers import wait_until


def order_created(order_id: str, product_id: str = "oil", quantity: int = 2):
    with transaction.atomic(using="orders"):
        return outbox_append(OrdersOutbox, OrderCreated(
            order_id=order_id, customer_id="c", items=({"productId": product_id, "quantity": quantity,
                                                       "unitPrice": "1.00"},),
            total_amount=quantity, currency="EUR"), aggregate_id=order_id)


class RunnerThread:
    """ConsumerRunner on its own thread and event loop, stopped (gracefully) on exit."""

    def __init__(self, routes):
        self.runner = ConsumerRunner(routes, fetch_timeout=0.2)

    def __enter__(self):
        self.loop = asyncio.new_event_loop()
        ready = asyncio.Event()
        self.thread = threading.Thread(target=self.loop.run_until_complete, args=(self.runner.run(ready),))
        self.thread.start()
        wait_until(ready.is_set, timeout=10, message="consumer runner ready")
        return self.runner

    def __exit__(self, *exc):
        self.loop.call_soon_threadsafe(self.runner.stop)
        self.thread.join(timeout=15)
        assert not self.thread.is_alive(), "consumer runner did not stop"
        self.loop.close()
