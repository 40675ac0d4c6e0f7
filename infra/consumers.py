"""The consumer runner: JetStream deliveries -> idempotent handlers, one durable transaction each.

For every delivery:
1. decode it (`message_parse`); a malformed message is poison: terminated at once, never retried;
2. open `transaction.atomic(durable=True)` on the consuming service's database, record
   `(consumer, event id)` in its inbox (a duplicate is skipped and acked), run the handler;
3. ack only after that transaction committed.
A handler exception rolls everything back and the message is redelivered after an exponential
backoff (NAK with delay), up to `max_deliver` deliveries. A malformed message, a failure on the
last delivery, and a message JetStream stopped redelivering because it was never acked (its
MAX_DELIVERIES advisory) are recorded as dead letters (infra.deadletters) and terminated.

Under load a fetch brings many messages. A route that allows it (`ConsumerRoute.batch`: its
handlers run inside the transaction, and it takes the locks of rows shared between orders up
front, `batch_locks`) handles a fetched batch in one transaction instead
(`deliveries_handle_together`, in stream order, one thread): one BEGIN/COMMIT, one WAL flush and
one relay kick for the batch. If anything in it is not plain
(malformed, a duplicate, a handler error, a deadlock), that transaction is rolled back and the
messages are handled one by one as above, which gives each its own outcome.

Handlers that must call an external service before writing (payments -> Stripe) are marked
with `@handler_outside_transaction`: the runner calls them with an `effect` context manager
and they open it themselves around their writes, after the external call. Their route may
batch too (`ConsumerRoute.batch_prepare`): the batch's external calls first, outside any
transaction, then every message's writes in the batch's one transaction.

The runner carries the operational concerns (threads, backoff, logging, graceful shutdown);
a handler only handles.
"""
from __future__ import annotations

import asyncio
import contextlib
import contextvars
import enum
import functools
import json
import logging
import os
import signal
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

from django.apps import apps
from django.conf import settings
from django.db import DataError, IntegrityError, InterfaceError, OperationalError, connections, router, transaction
from django.utils.module_loading import import_string

from a4co.db import connections_close_stale, writes_deferred
from a4co.errors import TransientError
from a4co.heap import heap_freeze_startup
from a4co.logging import log_context
from infra import metrics
from infra.deadletters import FailedDelivery, dead_letter_record
from infra.messages import MalformedMessageError, message_parse
from infra.nats import Delivery, jetstream_session
from infra.outbox import DuplicateDeliveryError, inbox_conflict, inbox_record
from infra.streams import STREAMS, ConsumerRoute

log = logging.getLogger(__name__)


_current_event_id: contextvars.ContextVar[str] = contextvars.ContextVar("a4co_event_id", default="")


def current_event_id() -> str:
    """The event id of the message being handled in this thread ("" outside a handler)."""
    return _current_event_id.get()


@contextlib.contextmanager
def _handling(route: ConsumerRoute, *, subject: str, event_id: str, order_id: str) -> Iterator[None]:
    """While one message is handled: its ids on every log line and as current_event_id()."""
    with log_context(order_id=order_id, event_id=event_id, consumer=route.name, subject=subject):
        token = _current_event_id.set(event_id)
        try:
            yield
        finally:
            _current_event_id.reset(token)


class Outcome(enum.StrEnum):
    HANDLED = "handled"
    DUPLICATE = "duplicate"
    RETRY = "retry"
    POISON = "poison"
    UNAVAILABLE = "unavailable"  # a dependency is down: retried in place, then like RETRY


def handler_outside_transaction(func: Callable) -> Callable:
    """Mark a handler that opens its own effect transaction (see module docstring)."""
    func.outside_transaction = True
    return func


def backoff_seconds(num_delivered: int) -> float:
    """Delay before the next delivery after the `num_delivered`-th failed: base * 2^(n-1)."""
    return settings.CONSUMER_BACKOFF_BASE_SECONDS * (2 ** max(num_delivered - 1, 0))


def _delivery_parse(route: ConsumerRoute, *, subject: str, data: bytes, msg_id: str):
    """(message, event id, handler) of a delivery; MalformedMessageError if it has none of them."""
    try:
        payload = json.loads(data)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:  # RecursionError: nested too deep
        raise MalformedMessageError(f"not JSON: {exc}") from exc
    message = message_parse(subject, payload)
    event_id = msg_id or str(payload.get("eventId", ""))
    if not event_id:
        raise MalformedMessageError("no Nats-Msg-Id header and no eventId field")
    handler = import_string(route.handlers).get(subject)
    if handler is None:
        raise MalformedMessageError(f"{route.name} has no handler for {subject}")
    return message, event_id, handler


def delivery_handle(route: ConsumerRoute, *, subject: str, data: bytes, msg_id: str,
                    num_delivered: int) -> tuple[Outcome, str]:
    """Handle one delivery synchronously (in a worker thread). Never raises.

    Returns the outcome and, for RETRY/POISON, the reason.
    """
    connections_close_stale()
    try:
        message, event_id, handler = _delivery_parse(route, subject=subject, data=data, msg_id=msg_id)
    except MalformedMessageError as exc:
        return Outcome.POISON, str(exc)

    inbox_model = apps.get_model(route.inbox_model)
    order_id = str(getattr(message, "order_id", ""))

    @contextlib.contextmanager
    def effect() -> Iterator[None]:
        # The inbox row travels with the handler's first write (a4co.db.writes_deferred): a
        # duplicate is then refused by the inbox's unique constraint and everything rolls back.
        alias = router.db_for_write(inbox_model)
        try:
            with transaction.atomic(using=alias, durable=True), writes_deferred(alias):
                inbox_record(inbox_model, consumer=route.name, event_id=event_id, subject=subject,
                             aggregate_id=order_id, deliveries=num_delivered)
                yield
        except IntegrityError as exc:
            if inbox_conflict(exc, inbox_model):
                raise DuplicateDeliveryError(f"{route.name} already handled {event_id}") from exc
            raise

    with _handling(route, subject=subject, event_id=event_id, order_id=order_id):
        try:
            if getattr(handler, "outside_transaction", False):
                handler(message, effect=effect)
            else:
                with effect():
                    handler(message)
        except DuplicateDeliveryError:
            log.debug("duplicate skipped consumer=%s subject=%s eventId=%s orderId=%s",
                     route.name, subject, event_id, order_id)
            return Outcome.DUPLICATE, ""
        except MalformedMessageError as exc:
            return Outcome.POISON, str(exc)
        except DataError as exc:
            # The database refused a value the message carries (too long, out of range, a NUL
            # character, ...): every redelivery would fail the same way.
            return Outcome.POISON, f"a value cannot be stored: {exc}".strip()
        except (OperationalError, InterfaceError, TransientError) as exc:
            log.warning("dependency unavailable consumer=%s subject=%s eventId=%s orderId=%s: %s",
                        route.name, subject, event_id, order_id, exc)
            return Outcome.UNAVAILABLE, f"{type(exc).__name__}: {exc}"
        except Exception as exc:
            log.exception("handler failed consumer=%s subject=%s eventId=%s orderId=%s delivery=%d",
                          route.name, subject, event_id, order_id, num_delivered)
            return Outcome.RETRY, f"{type(exc).__name__}: {exc}"
        log.debug("handled consumer=%s subject=%s eventId=%s orderId=%s delivery=%d",
                 route.name, subject, event_id, order_id, num_delivered)
        return Outcome.HANDLED, ""


def deliveries_handle_together(route: ConsumerRoute, deliveries: list[Delivery]) -> bool:
    """Handle `deliveries` in stream order in one durable transaction (in a worker thread).

    True: every one was handled and the transaction committed (ack them all). False: the batch's
    transaction wrote nothing (a malformed message, one whose handler opens its own transaction
    on a route without `batch_prepare`, a duplicate, a handler or database error, a prepare that
    failed or declined): handle them one by one with delivery_handle, which sorts out each one's
    outcome. What a route's `batch_prepare` did before (external calls, its own committed
    bookkeeping) stays; the one-by-one pass repeats it safely. Never raises.
    """
    connections_close_stale()
    prepared = []
    for delivery in deliveries:
        try:
            message, event_id, handler = _delivery_parse(route, subject=delivery.subject, data=delivery.data,
                                                         msg_id=delivery.msg_id)
        except MalformedMessageError:
            return False
        if getattr(handler, "outside_transaction", False) and not route.batch_prepare:
            return False
        prepared.append((delivery, message, event_id, handler))
    messages = [message for _delivery, message, _event_id, _handler in prepared]
    if route.batch_prepare:
        try:
            writes = import_string(route.batch_prepare)(messages)
        except Exception:  # e.g. Stripe unavailable for one of them: one by one sorts it out
            log.debug("batch of %d handled one by one consumer=%s", len(deliveries), route.name, exc_info=True)
            return False
        if writes is None:
            return False
    else:
        writes = [functools.partial(handler, message) for _delivery, message, _event_id, handler in prepared]
    inbox_model = apps.get_model(route.inbox_model)
    alias = router.db_for_write(inbox_model)
    try:
        with (transaction.atomic(using=alias, durable=True), writes_deferred(alias),
              import_string(route.batch_locks)(messages) if route.batch_locks else contextlib.nullcontext()):
            for (delivery, message, event_id, _handler), write in zip(prepared, writes, strict=True):
                order_id = str(getattr(message, "order_id", ""))
                with _handling(route, subject=delivery.subject, event_id=event_id, order_id=order_id):
                    inbox_record(inbox_model, consumer=route.name, event_id=event_id, subject=delivery.subject,
                                 aggregate_id=order_id, deliveries=delivery.num_delivered)
                    write()
    except Exception:  # rolled back: the one-by-one pass reports what it was
        log.debug("batch of %d handled one by one consumer=%s", len(deliveries), route.name, exc_info=True)
        return False
    return True


def route_handles_batches(route: ConsumerRoute) -> bool:
    """Whether `route`'s fetched batches go through deliveries_handle_together: the route allows
    it (ConsumerRoute.batch), every handler of its subjects runs inside the consumer's
    transaction or the route prepares its batches (ConsumerRoute.batch_prepare), and
    CONSUMER_BATCH_TRANSACTIONS is on."""
    handlers = import_string(route.handlers)
    return settings.CONSUMER_BATCH_TRANSACTIONS and route.batch and all(
        subject in handlers and (route.batch_prepare or not getattr(handlers[subject], "outside_transaction", False))
        for subject in route.consumer.subjects)


async def ack_deadlines_keep(deliveries: list[Delivery], interval: float | None = None) -> None:
    """Until cancelled: every `interval` seconds (a third of CONSUMER_ACK_WAIT_SECONDS), tell
    JetStream that `deliveries` are still being worked on, so that none is redelivered to someone
    else meanwhile. A failed push (NATS away) is left to the next one."""
    await _deadlines_keep(lambda: deliveries, interval)


async def _arrived_deadlines_keep(pull, interval: float | None = None) -> None:
    """ack_deadlines_keep for the messages that arrived on the route's open pull request for its
    next fetch, whichever they are at each push: a fetch's handling can outlast the ack wait
    (PostgreSQL or Stripe waited out), and they must not be redelivered meanwhile."""
    await _deadlines_keep(pull.arrived_waiting, interval)


async def _deadlines_keep(held, interval: float | None) -> None:
    interval = interval or max(settings.CONSUMER_ACK_WAIT_SECONDS / 3, 0.5)
    while True:
        await asyncio.sleep(interval)
        for message in held():
            with contextlib.suppress(Exception):
                await message.in_progress()


class ConsumerRunner:
    """Runs the given routes until `stop()`; in-flight messages finish before it returns."""

    def __init__(self, routes: list[ConsumerRoute], *, fetch_timeout: float = 1.0):
        self.routes = routes
        self.fetch_timeout = fetch_timeout
        self._stop = asyncio.Event()
        self.counts: dict[tuple[str, str], int] = {}

    def stop(self) -> None:
        self._stop.set()

    async def run(self, ready: asyncio.Event | None = None) -> None:
        async with jetstream_session(f"a4co-consumers-{os.getpid()}", wait_for_server=True) as session:
            await session.ensure(STREAMS, [route.consumer for route in self.routes])
            pulls = [await session.pull(route.consumer) for route in self.routes]
            for route in self.routes:
                await session.on_max_deliveries(
                    route.consumer, lambda advisory, route=route: self._on_max_deliveries(route, session, advisory))
            if ready is not None:
                ready.set()
            log.info("consumers running: %s", ", ".join(route.key for route in self.routes))
            await asyncio.gather(*(self._consume(route, pull)
                                   for route, pull in zip(self.routes, pulls, strict=True)))
        log.info("consumers stopped")

    async def _consume(self, route: ConsumerRoute, pull) -> None:
        # A fetched batch is split by order: the messages of one order are handled one after the
        # other, in stream order, and different orders in parallel on a few threads (handlers
        # spend most of their time waiting for the database). Django connections are per thread.
        threads = max(1, settings.CONSUMER_THREADS)
        together = route_handles_batches(route)
        fetch = settings.CONSUMER_BATCH_FETCH if together else settings.CONSUMER_FETCH_BATCH
        loop = asyncio.get_running_loop()
        arrived_keeper = asyncio.create_task(_arrived_deadlines_keep(pull))
        try:
            with ThreadPoolExecutor(threads, thread_name_prefix=route.key) as executor:
                while not self._stop.is_set():
                    deliveries = await pull.fetch(fetch, self.fetch_timeout)
                    if not deliveries:
                        continue
                    if together and len(deliveries) > 1:
                        # A batch can take a while (payments: its Stripe calls; a database that is slow
                        # to answer): its messages' ack deadlines are pushed back meanwhile.
                        keeper = asyncio.create_task(ack_deadlines_keep(deliveries))
                        try:
                            committed = await loop.run_in_executor(executor, deliveries_handle_together, route,
                                                                   deliveries)
                        finally:
                            keeper.cancel()
                        metrics.consumer_batch_settled(route, committed=committed)
                        if committed:
                            for delivery in deliveries:
                                await self._settle(route, delivery, Outcome.HANDLED, "", executor)
                            continue
                    await asyncio.gather(*(self._handle_in_order(route, group, executor)
                                           for group in _by_order(deliveries)))
                # Connections are per thread: each worker thread closes its own. The barrier makes every
                # thread take exactly one of these tasks (a free thread would otherwise take several).
                barrier = threading.Barrier(threads)
                for _ in range(threads):
                    executor.submit(_close_thread_connections, barrier)
        finally:
            arrived_keeper.cancel()

    async def _handle_in_order(self, route: ConsumerRoute, deliveries: list[Delivery], executor) -> None:
        loop = asyncio.get_running_loop()
        for delivery in deliveries:
            # A dependency being down (PostgreSQL restarting, Stripe unreachable) is waited out here,
            # for a while, instead of spending the message's few deliveries on it.
            waited, pause = 0.0, 0.25
            while True:
                outcome, reason = await loop.run_in_executor(executor, _handle_in_thread, route, delivery)
                if (outcome is not Outcome.UNAVAILABLE or self._stop.is_set()
                        or waited >= settings.CONSUMER_UNAVAILABLE_WAIT_SECONDS):
                    break
                with contextlib.suppress(Exception):  # NATS may be the one that is down
                    await delivery.in_progress()  # push the ack deadline back while we wait
                await asyncio.sleep(pause)
                waited, pause = waited + pause, min(pause * 2, 4.0)
            if outcome is Outcome.UNAVAILABLE:
                outcome = Outcome.RETRY
            await self._settle(route, delivery, outcome, reason, executor)

    async def _settle(self, route: ConsumerRoute, delivery: Delivery, outcome: Outcome, reason: str,
                      executor) -> None:
        key = (route.name, outcome.value)
        self.counts[key] = self.counts.get(key, 0) + 1
        metrics.consumer_delivery_settled(route, delivery, outcome)
        if outcome in (Outcome.HANDLED, Outcome.DUPLICATE):
            await delivery.ack()
            return
        if outcome is Outcome.RETRY and delivery.num_delivered < settings.CONSUMER_MAX_DELIVER:
            await delivery.nak(delay=backoff_seconds(delivery.num_delivered))
            return
        # Poison, or the last delivery failed: keep it as a dead letter, then stop redelivery.
        error = f"malformed: {reason}" if outcome is Outcome.POISON else (
            f"failed on delivery {delivery.num_delivered} of {settings.CONSUMER_MAX_DELIVER}: {reason}")
        failed = FailedDelivery(consumer=route.name, stream=route.consumer.stream,
                                stream_sequence=delivery.stream_sequence, subject=delivery.subject,
                                data=delivery.data, event_id=delivery.msg_id, deliveries=delivery.num_delivered,
                                error=error)
        await asyncio.get_running_loop().run_in_executor(
            executor, dead_letter_record, route.dead_letter_model, failed)
        self.counts[(route.name, "dead_lettered")] = self.counts.get((route.name, "dead_lettered"), 0) + 1
        metrics.consumer_dead_lettered(route, source="handler")
        await delivery.term()

    async def _on_max_deliveries(self, route: ConsumerRoute, session, advisory: dict) -> None:
        """JetStream gave up on a message that was never acked (e.g. the process died each time)."""
        sequence = int(advisory.get("stream_seq", 0))
        stored = await session.stored_message(route.consumer.stream, sequence)
        if stored is None:
            log.error("max deliveries advisory for a message no longer stored consumer=%s seq=%s",
                      route.name, sequence)
            return
        failed = FailedDelivery(consumer=route.name, stream=route.consumer.stream, stream_sequence=sequence,
                                subject=stored.subject, data=stored.data,
                                event_id=stored.headers.get("Nats-Msg-Id", ""),
                                deliveries=int(advisory.get("deliveries", 0)),
                                error="delivery limit reached without an ack (the handler crashed or timed out)")
        created = await asyncio.to_thread(_record_in_fresh_thread, route.dead_letter_model, failed)
        if created:
            self.counts[(route.name, "dead_lettered")] = self.counts.get((route.name, "dead_lettered"), 0) + 1
            metrics.consumer_dead_lettered(route, source="advisory")


def _by_order(deliveries: list[Delivery]) -> list[list[Delivery]]:
    """Group deliveries by the order they are about (stream order kept within each group)."""
    groups: dict[str, list[Delivery]] = {}
    for delivery in deliveries:
        try:
            key = str(json.loads(delivery.data).get("orderId") or delivery.msg_id)
        except (ValueError, AttributeError, UnicodeDecodeError):
            key = delivery.msg_id or str(delivery.stream_sequence)
        groups.setdefault(key, []).append(delivery)
    return list(groups.values())


def _close_thread_connections(barrier: threading.Barrier) -> None:
    with contextlib.suppress(threading.BrokenBarrierError):
        barrier.wait(timeout=10)
    connections.close_all()


def _record_in_fresh_thread(model_label: str, failed: FailedDelivery) -> bool:
    try:
        return dead_letter_record(model_label, failed, refresh=False)
    finally:
        connections.close_all()  # a pool thread: leave no connection behind


def _handle_in_thread(route: ConsumerRoute, delivery: Delivery) -> tuple[Outcome, str]:
    return delivery_handle(route, subject=delivery.subject, data=delivery.data,
                           msg_id=delivery.msg_id, num_delivered=delivery.num_delivered)


def consumers_run_forever(routes: list[ConsumerRoute]) -> None:
    """Run until SIGTERM/SIGINT, then finish in-flight messages and return."""
    # The handlers (and what they import: the Stripe gateway, ...) load now, not on the first
    # message, and what startup allocated is left out of garbage collections (a4co.heap).
    for route in routes:
        import_string(route.handlers)
        if route.batch_prepare:
            import_string(route.batch_prepare)
    log.info("startup heap frozen: %d objects left out of garbage collection", heap_freeze_startup())
    runner = ConsumerRunner(routes)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, runner.stop)
        await runner.run()

    asyncio.run(main())
