"""A handler table whose handler always fails, for testing retries (see test_relay_jetstream)."""

CALLS: list[str] = []


def handle_orders_created_always_failing(message) -> None:
    CALLS.append(message.order_id)
    raise RuntimeError("simulated handler failure")


HANDLERS = {"orders.created": handle_orders_created_always_failing}
