"""The relay's atomic batches (JetStream 2.12+ `allow_atomic`) and their fallbacks, against the
real NATS server of the test run: every row stored once, per stream in outbox order, with the
stream sequence the stream gave it; rows whose fate is unknown stay pending."""
from __future__ import annotations

import asyncio
import re
import shutil
import subprocess
import threading
from collections import defaultdict
from datetime import timedelta

import nats
import pytest
from django.utils import timezone
from prometheus_client import REGISTRY

from devstack.servers import free_port
from infra import nats as nats_bus
from infra.relay import outbox_relay_drain
from infra.streams import ROUTES, STREAMS
from orders.models import OutboxMessage as OrdersOutbox
from tests.conftest import ALL_DATABASES
from tests.helpers import port_accepts, wait_until

pytestmark = pytest.mark.django_db(databases=ALL_DATABASES, transaction=True)
CONSUMERS = [route.consumer for route in ROUTES]
GHOST = nats_bus.StreamSpec("GHOST", ("ghost.*",))


def outbox_rows(subjects: list[str]) -> list[OrdersOutbox]:
    """One pending orders-outbox row per subject, created in this order."""
    start = timezone.now()
    return [OrdersOutbox.objects.create(subject=subject, aggregate_id=f"agg-{n}", payload={"n": n},
                                        created_at=start + timedelta(milliseconds=n))
            for n, subject in enumerate(subjects)]


def refreshed(rows: list[OrdersOutbox]) -> list[OrdersOutbox]:
    by_id = OrdersOutbox.objects.in_bulk([row.id for row in rows])
    return [by_id[row.id] for row in rows]


def assert_stored_in_order(stream: str, rows: list[OrdersOutbox]) -> list[nats_bus.StoredMessage]:
    """The stream holds exactly `rows`, once each, in this order, under their recorded sequences."""
    stored = nats_bus.jetstream_messages(stream)
    assert [m.headers["Nats-Msg-Id"] for m in stored] == [str(row.id) for row in rows]
    assert [m.sequence for m in stored] == [row.stream_sequence for row in refreshed(rows)]
    assert all(row.published_at is not None for row in refreshed(rows))
    return stored


def stream_allows_atomic(name: str) -> bool:
    from django.conf import settings

    async def info():
        nc = await nats.connect(settings.NATS_URL)
        try:
            return bool((await nc.jsm().stream_info(name)).config.allow_atomic)
        finally:
            await nc.close()

    return asyncio.run(info())


@pytest.fixture(autouse=True)
def _small_batches_atomic(settings):
    settings.RELAY_ATOMIC_BATCH_MIN = 2  # these tests send a few rows at a time


def test_fewer_rows_than_the_atomic_minimum_go_out_one_by_one_in_order(jetstream, settings):
    settings.RELAY_ATOMIC_BATCH_MIN = 5
    small = outbox_rows(["orders.created"] * 4)
    assert outbox_relay_drain().published == 4
    big = outbox_rows(["orders.created"] * 5)
    assert outbox_relay_drain().published == 5
    stored = assert_stored_in_order("ORDERS", [*small, *big])
    assert not any("Nats-Batch-Id" in m.headers for m in stored[:4])
    assert all("Nats-Batch-Id" in m.headers for m in stored[4:])
    assert [row.stream_sequence for row in refreshed([*small, *big])] == list(range(1, 10))


def test_atomic_batches_store_each_row_once_per_stream_in_outbox_order_with_its_sequence(jetstream, settings):
    settings.RELAY_ATOMIC_BATCH_MAX = 7
    subjects = ["inventory.reserved" if n % 3 == 0 else "orders.created" for n in range(40)]
    rows = outbox_rows(subjects)
    stats = outbox_relay_drain(batch_size=25)
    assert (stats.published, stats.failed, stats.batches) == (40, 0, 2)
    for stream, prefix in (("ORDERS", "orders."), ("INVENTORY", "inventory.")):
        stored = assert_stored_in_order(stream, [row for row in rows if row.subject.startswith(prefix)])
        batches = defaultdict(list)
        for message in stored:
            batches[message.headers["Nats-Batch-Id"]].append(int(message.headers["Nats-Batch-Sequence"]))
        # Relay batches of 25 rows, split per stream into atomic batches of at most 7.
        assert all(sequences == list(range(1, len(sequences) + 1)) and len(sequences) <= 7
                   for sequences in batches.values())
        assert len(batches) >= 3


def test_a_row_already_in_the_stream_makes_its_batch_go_out_message_by_message(jetstream):
    rows = outbox_rows(["orders.created"] * 5)
    # As if the relay died after publishing row 2 and before marking it.
    (early,) = nats_bus.publish_batch_bypassing_outbox([("orders.created", b'{"n": 2}', str(rows[2].id))])
    assert early.ok and early.sequence == 1

    assert outbox_relay_drain().published == 5
    rows = refreshed(rows)
    assert rows[2].stream_sequence == 1
    assert [row.stream_sequence for row in rows[:2] + rows[3:]] == [2, 3, 4, 5]
    stored = assert_stored_in_order("ORDERS", [rows[2], *rows[:2], *rows[3:]])
    assert not any("Nats-Batch-Id" in m.headers for m in stored)  # the refused batch stored nothing

    later = outbox_rows(["orders.created"] * 3)  # the next batch is atomic again
    assert outbox_relay_drain().published == 3
    assert all("Nats-Batch-Id" in m.headers for m in assert_stored_in_order("ORDERS", [
        rows[2], *rows[:2], *rows[3:], *later])[5:])


def test_a_stream_without_allow_atomic_is_published_to_message_by_message(jetstream):
    nats_bus.jetstream_delete_streams_destroying_data(["ORDERS"])
    nats_bus.jetstream_ensure([nats_bus.StreamSpec("ORDERS", ("orders.*",), atomic=False)], [])
    assert not stream_allows_atomic("ORDERS")
    fallbacks = REGISTRY.get_sample_value("a4co_relay_atomic_fallbacks_total",
                                          {"stream": "ORDERS", "reason": "atomic_disabled"}) or 0
    rows = outbox_rows(["orders.created"] * 4)
    assert outbox_relay_drain().published == 4
    stored = assert_stored_in_order("ORDERS", rows)
    assert not any("Nats-Batch-Id" in m.headers for m in stored)
    assert REGISTRY.get_sample_value("a4co_relay_atomic_fallbacks_total",
                                     {"stream": "ORDERS", "reason": "atomic_disabled"}) == fallbacks + 1

    # setup_streams turns allow_atomic on for the existing stream; a relay process that found it
    # off keeps publishing message by message for a while, a new one uses atomic batches.
    nats_bus.jetstream_ensure(STREAMS, CONSUMERS)
    assert stream_allows_atomic("ORDERS")
    more = outbox_rows(["orders.created"] * 2)
    assert outbox_relay_drain().published == 2
    nats_bus.bridge_reset()
    last = outbox_rows(["orders.created"] * 2)
    assert outbox_relay_drain().published == 2
    stored = assert_stored_in_order("ORDERS", rows + more + last)
    assert ["Nats-Batch-Id" in m.headers for m in stored] == [False] * 6 + [True] * 2


class Blackhole:
    """A core NATS subscriber on `subject` that swallows everything: to JetStream publishers it
    looks like a stream that never answers (a leader gone mid-commit)."""

    def __init__(self, url: str, subject: str):
        self.url, self.subject = url, subject
        self.received = 0

    def __enter__(self):
        self.ready, self.stop = threading.Event(), threading.Event()
        # asyncio.run: the connection's tasks are finished before the loop closes.
        self.thread = threading.Thread(target=asyncio.run, args=(self._serve(),))
        self.thread.start()
        assert self.ready.wait(10), "blackhole subscriber not ready"
        return self

    async def _serve(self) -> None:
        nc = await nats.connect(self.url)

        async def swallow(_msg):
            self.received += 1

        try:
            await nc.subscribe(self.subject, cb=swallow)
            await nc.flush()
            self.ready.set()
            await asyncio.to_thread(self.stop.wait)
        finally:
            await nc.close()

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join(10)
        assert not self.thread.is_alive(), "blackhole subscriber did not stop"


def test_a_batch_whose_commit_is_never_acked_leaves_its_rows_pending(jetstream, settings):
    settings.RELAY_PUBLISH_TIMEOUT_SECONDS = 1
    streams = (*STREAMS, GHOST)
    rows = outbox_rows(["ghost.created", "orders.created", "ghost.created", "orders.created", "ghost.created"])
    ghost, orders = rows[0::2], rows[1::2]
    try:
        with Blackhole(settings.NATS_URL, "ghost.*") as blackhole:
            stats = outbox_relay_drain(streams=streams)
            assert blackhole.received == 3  # the whole batch went out; nobody committed it
        assert (stats.published, stats.failed) == (2, 3)
        assert_stored_in_order("ORDERS", orders)  # another stream's batch is not held up
        for row in refreshed(ghost):
            assert row.published_at is None and row.stream_sequence is None and row.attempts == 1
            assert "no commit PubAck" in row.last_error

        nats_bus.jetstream_ensure([GHOST], [])  # the stream is back: the next run publishes them
        assert outbox_relay_drain(streams=streams).published == 3
        assert_stored_in_order("GHOST", ghost)
    finally:
        nats_bus.jetstream_delete_streams_destroying_data([GHOST.name])


def test_rows_of_a_subject_in_no_known_stream_are_still_published(jetstream):
    nats_bus.jetstream_ensure([GHOST], [])
    try:
        rows = outbox_rows(["ghost.created"] * 3)
        assert outbox_relay_drain().published == 3  # GHOST is not in STREAMS: one publish each
        stored = assert_stored_in_order("GHOST", rows)
        assert not any("Nats-Batch-Id" in m.headers for m in stored)
    finally:
        nats_bus.jetstream_delete_streams_destroying_data([GHOST.name])


def _old_nats_server() -> str | None:
    """A nats-server older than 2.12 on PATH (Debian's 2.9), if the machine has one."""
    path = shutil.which("nats-server")
    if path is None:
        return None
    found = re.search(r"v(\d+)\.(\d+)", subprocess.run([path, "--version"], capture_output=True, text=True).stdout)
    return path if found and (int(found[1]), int(found[2])) < (2, 12) else None


@pytest.mark.skipif(_old_nats_server() is None, reason="no nats-server older than 2.12 on PATH")
def test_a_server_older_than_2_12_gets_one_publish_per_message(tmp_path, settings):
    port = free_port()
    server = subprocess.Popen([_old_nats_server(), "-js", "-a", "127.0.0.1", "-p", str(port), "-sd", str(tmp_path)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until(lambda: port_accepts(port), timeout=10, message="old nats-server")
        settings.NATS_URL = f"nats://127.0.0.1:{port}"
        nats_bus.bridge_reset()

        async def declare():  # jetstream_ensure refuses servers before 2.10: declare it by hand
            nc = await nats.connect(settings.NATS_URL)
            try:
                await nc.jsm().add_stream(name="ORDERS", subjects=["orders.*"])
            finally:
                await nc.close()

        asyncio.run(declare())
        rows = outbox_rows(["orders.created"] * 4)
        assert outbox_relay_drain().published == 4
        stored = assert_stored_in_order("ORDERS", rows)
        assert not any("Nats-Batch-Id" in m.headers for m in stored)
    finally:
        nats_bus.bridge_reset()
        server.terminate()
        server.wait(10)


def test_a_drain_stops_at_its_first_short_batch(jetstream):
    from django.db import connections
    from django.test.utils import CaptureQueriesContext

    rows = outbox_rows(["orders.created"] * 5)
    with CaptureQueriesContext(connections["orders"]) as queries:
        stats = outbox_relay_drain(batch_size=2)
    assert (stats.published, stats.batches) == (5, 3)
    # 2 + 2 + 1: the short batch showed the outbox drained; no fourth, empty claim.
    claims = [q for q in queries.captured_queries if "FOR UPDATE SKIP LOCKED" in q["sql"]]
    assert len(claims) == 3
    assert_stored_in_order("ORDERS", rows)


def test_message_by_message_publishes_share_one_reply_subscription(jetstream, settings):
    # Each JetStream context subscribes to a reply subject of its own, for good: one context per
    # relayed batch left a subscription behind in the relay and in the server for every batch.
    settings.RELAY_ATOMIC_BATCH_MIN = 1000
    bridge = nats_bus.bridge()
    for _ in range(3):
        rows = outbox_rows(["orders.created"] * 2)
        assert outbox_relay_drain().published == 2
    subscriptions = len(bridge._nc._subs)
    for _ in range(5):
        outbox_rows(["orders.created"] * 2)
        assert outbox_relay_drain().published == 2
    assert len(bridge._nc._subs) == subscriptions
    assert all(row.published_at is not None for row in refreshed(rows))
