"""A handler table whose handler always fails, for testing retries (see test_relay_jetstream)."""

CALLS: list[str] = []


def handle_orders_created_always_failing(message) -> None:
    CALLS.append(message.order_id)
    raise RuntimeError("simulated handler failure")


HANDLERS = {"orders.created": handle_orders_created_always_failing}


FLAKY_FAILURES = {"left": 0}


def handle_orders_created_after_an_outage(message) -> None:
    """Fails like an unreachable dependency a few times, then works."""
    from a4co.errors import TransientError

    CALLS.append(message.order_id)
    if FLAKY_FAILURES["left"] > 0:
        FLAKY_FAILURES["left"] -= 1
        raise TransientError("dependency unreachable (simulated)")


FLAKY_HANDLERS = {"orders.created": handle_orders_created_after_an_outage}
