"""The relay task's linger protocol (infra.outbox): a kicked relay owns the Redis flag for
RELAY_LINGER_SECONDS and relays what commits wake it for, without a Celery task per commit; it
gives the flag up before a last drain; beat's run never steals a live owner's flag. Against the
test run's real PostgreSQL, NATS and Redis."""
from __future__ import annotations

import threading
import time
import uuid

import pytest
from django.db import connections

from a4co import clock
from infra import nats as nats_bus
from infra import outbox
from infra.outbox import KICK_FLAG, WAKE_LIST, outbox_relay_run
from orders.models import OutboxMessage as OrdersOutbox
from tests.conftest import ALL_DATABASES
from tests.helpers import wait_until
from tests.infra.conftest import order_created

pytestmark = pytest.mark.django_db(databases=ALL_DATABASES, transaction=True)
CELERY_QUEUE = "celery"  # Celery's default queue: a Redis list on the broker


@pytest.fixture
def flags():
    client = outbox._kick_flags()
    assert client is not None, "the test run's broker is Redis"
    client.delete(KICK_FLAG, WAKE_LIST, CELERY_QUEUE)
    yield client
    client.delete(KICK_FLAG, WAKE_LIST, CELERY_QUEUE)


class RelayThread(threading.Thread):
    def __init__(self, *, kicked: bool):
        super().__init__(daemon=True)
        self.kicked, self.published, self.error = kicked, None, None

    def run(self):
        try:
            self.published = outbox_relay_run(kicked=self.kicked)
        except Exception as exc:  # reported by the test
            self.error = exc
        finally:
            connections.close_all()


def _owning_relay(flags) -> RelayThread:
    """A kicked relay task (its kick's flag set), running and owning the flag."""
    flags.set(KICK_FLAG, "1")
    relay = RelayThread(kicked=True)
    relay.start()
    wait_until(lambda: flags.get(KICK_FLAG) not in (None, b"1"), message="relay owns the flag")
    return relay


def _pending() -> int:
    return OrdersOutbox.objects.filter(published_at__isnull=True).count()


def test_a_kicked_relay_lingers_and_relays_later_commits_without_a_task_each(jetstream, flags, settings):
    settings.RELAY_LINGER_SECONDS = 4
    order_created("o-1")  # the kick: flag set, one task queued
    wait_until(lambda: flags.get(KICK_FLAG) == b"1" and flags.llen(CELERY_QUEUE) == 1, message="kicked")
    relay = RelayThread(kicked=True)
    relay.start()  # plays the queued task
    wait_until(lambda: _pending() == 0, message="first drain")
    assert flags.get(KICK_FLAG) not in (None, b"1"), "the relay owns the flag while it lingers"

    order_created("o-2")
    order_created("o-3")
    wait_until(lambda: _pending() == 0, timeout=3, message="woken drain while lingering")
    assert relay.is_alive(), "relayed by the lingering run"
    assert flags.llen(CELERY_QUEUE) == 1, "no task per commit while a relay lingers"

    relay.join(10)
    assert not relay.is_alive() and relay.error is None
    assert relay.published == 3
    assert flags.get(KICK_FLAG) is None, "given up at the end: the next commit kicks again"
    assert [m.headers["Nats-Msg-Id"] for m in nats_bus.jetstream_messages("ORDERS")] == [
        str(i) for i in OrdersOutbox.objects.order_by("created_at").values_list("id", flat=True)]
    order_created("o-4")
    wait_until(lambda: flags.llen(CELERY_QUEUE) == 2, message="kicked again")


def test_a_row_whose_wake_never_came_is_relayed_by_the_last_drain(jetstream, flags, settings):
    settings.RELAY_LINGER_SECONDS = 0.5
    relay = _owning_relay(flags)
    # A commit that found the flag held but whose wake was lost: the row is there, no wake is.
    row = OrdersOutbox.objects.create(id=uuid.uuid4(), subject="orders.created", aggregate_id="o-9",
                                      payload={"eventId": "x", "orderId": "o-9"}, created_at=clock.now())
    relay.join(10)
    assert not relay.is_alive() and relay.error is None
    row.refresh_from_db()
    assert row.published_at is not None and relay.published == 1


def test_beats_run_drains_once_and_leaves_a_live_owner_alone(jetstream, flags, settings):
    settings.RELAY_LINGER_SECONDS = 4
    flags.set(KICK_FLAG, "someone-elses-token", px=10_000)
    order_created("o-1")  # finds the flag held: wakes the owner instead of sending a task
    wait_until(lambda: flags.llen(WAKE_LIST) == 1, message="owner woken")
    assert flags.llen(CELERY_QUEUE) == 0
    started = time.monotonic()
    assert outbox_relay_run(kicked=False) == 1
    assert time.monotonic() - started < 2, "did not linger"
    assert flags.get(KICK_FLAG) == b"someone-elses-token"


def test_an_owner_whose_flag_was_taken_over_stops_early(jetstream, flags, settings):
    settings.RELAY_LINGER_SECONDS = 8
    relay = _owning_relay(flags)
    flags.set(KICK_FLAG, "1")  # its flag expired and a new kick set it: a new task is on its way
    relay.join(5)
    assert not relay.is_alive(), "stopped well before its 8 s linger"
    assert flags.get(KICK_FLAG) == b"1", "not the old owner's to delete"


def _order_created_in_thread(order_id: str) -> None:
    try:
        order_created(order_id)
    finally:
        connections.close_all()


def test_a_commit_after_a_quiet_spell_kicks_at_once_and_a_busy_moment_shares_one_kick(
        jetstream, flags, settings, monkeypatch):
    settings.RELAY_KICK_COALESCE_SECONDS = 0.8  # below the wake list's 2 s TTL, which each push renews
    monkeypatch.setattr(outbox, "_kicker", None)  # a kicker thread of this test's own: idle
    flags.set(KICK_FLAG, "someone-elses-token", px=30_000)  # a lingering owner: kicks become wakes
    order_created("o-0")
    wait_until(lambda: flags.llen(WAKE_LIST) == 1, timeout=0.4, message="kicked without waiting out the rest")
    # Five commits while the kicker rests after that round: one round for all of them.
    threads = [threading.Thread(target=_order_created_in_thread, args=(f"o-{n}",)) for n in range(1, 6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wait_until(lambda: flags.llen(WAKE_LIST) >= 2, timeout=3, message="the busy moment's round")
    assert _pending() == 6  # nobody relays them: the owner is made up
    # Rounds come one after the other: a later commit's wake follows any other wake of the five,
    # so three wakes in all means the five shared one.
    order_created("o-last")
    wait_until(lambda: flags.llen(WAKE_LIST) >= 3, timeout=3, message="woken again")
    assert flags.lrange(WAKE_LIST, 0, -1) == [b"orders.OutboxMessage"] * 3


def test_with_no_coalescing_each_commit_kicks_from_its_own_thread(jetstream, flags, settings):
    settings.RELAY_KICK_COALESCE_SECONDS = 0
    flags.set(KICK_FLAG, "someone-elses-token", px=10_000)
    order_created("o-1")
    order_created("o-2")
    assert flags.llen(WAKE_LIST) == 2  # sent by the committing thread, before it went on
