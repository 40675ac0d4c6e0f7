"""The load generator: drives the public HTTP API like a shop front, waits for every saga to end,
and reports throughput, POST -> terminal latency (server timestamps), outcomes and the CPU
every process of the stack spent.

Closed loop (`concurrency` clients, each placing its next order when the previous POST
returned) or open loop (`rate` orders per second, whatever the latency). The orders use their
own products (created through the API) and real payment methods: `ok` pays with pm_card_visa,
`decline` with pm_card_chargeCustomerFail, `oos` asks for a product with no stock. A run fails
if any order ends in the wrong state or the stock does not add up.
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import http.client
import json
import os
import random
import sys
import threading
import time
import urllib.parse
import uuid
from collections import Counter, defaultdict
from pathlib import Path
from statistics import median

from django.apps import apps
from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import DatabaseError, connections
from rest_framework.authtoken.models import Token

from a4co.http_clients import connection_closed_while_idle
from infra.machine import cpu_probe_ms, machine_probed
from infra.outbox import outbox_models
from infra.streams import ROUTES
from inventory.models import Product
from orders.models import Order
from saga.models import SagaInstance

EXPECTED = {"ok": "CONFIRMED", "decline": "CANCELLED", "oos": "FAILED"}
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def parse_mix(text: str) -> dict[str, int]:
    """"ok=85,decline=10,oos=5" -> weights. ValueError names what is wrong."""
    mix = {}
    for part in text.split(","):
        name, _, weight = part.partition("=")
        name = name.strip()
        if name not in EXPECTED:
            raise ValueError(f"unknown order kind {name!r} (use {', '.join(EXPECTED)})")
        if not weight.strip().isdigit():
            raise ValueError(f"weight of {name!r} must be a whole number")
        mix[name] = int(weight)
    if not sum(mix.values()):
        raise ValueError("the mix needs a positive weight")
    return mix


# --- CPU accounting from /proc -------------------------------------------------------------------


def _process_groups(tracked: set[int] | frozenset[int] = frozenset()) -> dict[int, float]:
    """CPU seconds (user + system, reaped children included) of every live process, summed per
    process group.

    A process that left its group (PostgreSQL's backends call setsid(), so each is a group of
    its own) is counted in the group of its nearest ancestor whose group is in `tracked`: without
    that, a backend's CPU would be seen only once its connection closed.
    """
    processes: dict[int, tuple[int, int, float]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        # fields[0] is field 3 (state); ppid is field 4, pgrp 5, utime 14, stime 15, cutime 16, cstime 17.
        processes[int(entry)] = (int(fields[1]), int(fields[2]), sum(int(v) for v in fields[11:15]) / CLOCK_TICKS)
    def group_of(pid: int) -> int:
        ancestor = pid
        while ancestor in processes and ancestor > 1:
            parent, group, _cpu = processes[ancestor]
            if group in tracked:
                return group
            ancestor = parent
        return processes[pid][1]

    groups: dict[int, float] = defaultdict(float)
    for pid, (_ppid, _pgrp, cpu) in processes.items():
        groups[group_of(pid)] += cpu
    return groups


def _chunks(items: list, size: int):
    for start in range(0, len(items), size):
        yield items[start:start + size]


class CpuMeter:
    """CPU seconds per process kind of the stack, from the devstack state file's process groups,
    and the load generator's own ("loadtest": this process and its reaped children, not its
    process group, which may hold whatever else the shell that started it runs)."""

    def __init__(self, state_path: Path | None):
        self.kinds: dict[str, int] = {}
        if state_path and state_path.exists():
            state = json.loads(state_path.read_text())
            for name, process in state.get("processes", {}).items():
                group = process.get("group") or process.get("pid")
                if group:
                    self.kinds[name] = int(group)
        self._start = self._sample()

    def _sample(self) -> dict[str, float]:
        groups = _process_groups(frozenset(self.kinds.values()))
        sample = {name: groups.get(group, 0.0) for name, group in self.kinds.items()}
        sample["loadtest"] = sum(os.times()[:4])
        return sample

    def spent(self) -> dict[str, float]:
        end = self._sample()
        return {name: max(0.0, end[name] - self._start.get(name, 0.0)) for name in end}


class DbMeter:
    """What the stack's PostgreSQL servers wrote over the run: transactions that wrote (the
    transaction id counter) and WAL bytes (the WAL position), each server counted once however
    many aliases point at it.

    Why: run-to-run noise on a small machine moves every process's CPU by 5-10 %, while these
    counts move only when the work per saga does. Both are read from counters PostgreSQL updates
    at once (its cumulative statistics, such as commit counts, are published up to seconds late).
    A server that cannot be asked is left out.
    """

    QUERIES = {
        "write transactions": "SELECT pg_snapshot_xmax(pg_current_snapshot())::text::bigint",
        "WAL bytes": "SELECT pg_current_wal_lsn() - '0/0'::pg_lsn",
    }

    def __init__(self):
        self._start = self._sample()

    @staticmethod
    def _servers() -> dict[tuple, str]:
        """{(host, port): an alias that reaches that server}."""
        servers: dict[tuple, str] = {}
        for alias, config in settings.DATABASES.items():
            servers.setdefault((config.get("HOST"), str(config.get("PORT"))), alias)
        return servers

    def _sample(self) -> dict[str, float]:
        values: dict[str, float] = {}
        for name, query in self.QUERIES.items():
            try:
                total = 0.0
                for alias in self._servers().values():
                    with connections[alias].cursor() as cursor:
                        cursor.execute(query)
                        total += float(cursor.fetchone()[0])
            except DatabaseError:
                continue
            values[name] = total
        return values

    def spent(self) -> dict[str, float]:
        end = self._sample()
        return {name: end[name] - self._start[name] for name in end if name in self._start}


# --- The run ------------------------------------------------------------------------------------


@dataclasses.dataclass
class Hop:
    """One message hop of the run's sagas: `subject` from an outbox to `consumer`'s inbox, medians
    in ms of when it was appended (counted from its order's POST), of append -> published (the
    relay: the rest of the appending transaction, the kick, the claim and the PubAck) and of
    published -> the consumer's inbox row (JetStream's delivery, and the consumer taking it up:
    in a batch, after the batch's earlier messages and, for payments, its Stripe calls).
    "Published" is when the relay had the stream's ack, and the consumer may have the message
    before that: at light load a delivery can be a fraction of a millisecond below zero."""

    subject: str
    consumer: str
    count: int
    appended_ms: float
    relay_ms: float
    delivery_ms: float

    def as_dict(self) -> dict:
        return {"subject": self.subject, "consumer": self.consumer, "count": self.count,
                "appended_ms": round(self.appended_ms, 1), "relay_ms": round(self.relay_ms, 1),
                "delivery_ms": round(self.delivery_ms, 1)}


def hops_measure(placed_at: dict[str, object]) -> list[Hop]:
    """Where the time between POST and terminal status went, hop by hop, for the orders of
    `placed_at` (order id -> its created_at), from the tables' own timestamps: each outbox row's
    created_at and published_at, and the consuming inbox row's received_at (outbox id = Nats-Msg-Id
    = inbox event id). Each service's outbox and inbox are read in its own database; rows of other
    orders, rows not yet published and messages nobody consumed are left out. In saga order (by
    when the hop's message was appended)."""
    ids = list(placed_at)
    sent: dict[str, tuple] = {}  # event id -> (subject, order id, created_at, published_at)
    for model in outbox_models():
        for chunk in _chunks(ids, 1000):
            rows = model.objects.filter(aggregate_id__in=chunk, published_at__isnull=False) \
                .values_list("id", "subject", "aggregate_id", "created_at", "published_at")
            sent.update((str(event_id), rest) for event_id, *rest in rows)
    seen: dict[tuple[str, str], tuple[list, list, list]] = defaultdict(lambda: ([], [], []))
    for label in dict.fromkeys(route.inbox_model for route in ROUTES):
        for chunk in _chunks(ids, 1000):
            rows = apps.get_model(label).objects.filter(aggregate_id__in=chunk) \
                .values_list("event_id", "consumer", "received_at")
            for event_id, consumer, received in rows:
                if event_id not in sent:
                    continue
                subject, order_id, created, published = sent[event_id]
                appended, relayed, delivered = seen[(subject, consumer)]
                appended.append((created - placed_at[order_id]).total_seconds() * 1000)
                relayed.append((published - created).total_seconds() * 1000)
                delivered.append((received - published).total_seconds() * 1000)
    hops = [Hop(subject=subject, consumer=consumer, count=len(appended), appended_ms=median(appended),
                relay_ms=median(relayed), delivery_ms=median(delivered))
            for (subject, consumer), (appended, relayed, delivered) in seen.items()]
    return sorted(hops, key=lambda hop: (hop.appended_ms, hop.subject, hop.consumer))


@dataclasses.dataclass
class LoadReport:
    orders: int
    seconds: float
    outcomes: Counter
    wrong: list[str]
    errors: Counter
    latencies_ms: list[float]
    cpu_seconds: dict[str, float]
    stock_problems: list[str]
    db_counts: dict[str, float] = dataclasses.field(default_factory=dict)
    machine: dict = dataclasses.field(default_factory=dict)  # machine_describe() + the probe times
    hops: list[Hop] = dataclasses.field(default_factory=list)

    @property
    def sagas_per_second(self) -> float:
        return self.orders / self.seconds if self.seconds else 0.0

    def percentile(self, p: float) -> float:
        if not self.latencies_ms:
            return float("nan")
        ordered = sorted(self.latencies_ms)
        return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]

    @property
    def db_per_saga(self) -> dict[str, float]:
        return {name: round(count / self.orders, 1) for name, count in self.db_counts.items()} if self.orders else {}

    @property
    def cpu_ms_per_saga(self) -> float:
        spent = sum(v for k, v in self.cpu_seconds.items() if k != "loadtest")
        return 1000 * spent / self.orders if self.orders else 0.0

    def as_dict(self) -> dict:
        return {"orders": self.orders, "seconds": round(self.seconds, 3),
                "sagas_per_second": round(self.sagas_per_second, 1),
                "latency_ms": {f"p{p}": round(self.percentile(p), 1) for p in (50, 95, 99)},
                "outcomes": dict(self.outcomes), "wrong": self.wrong[:20], "errors": dict(self.errors),
                "cpu_seconds": {k: round(v, 2) for k, v in self.cpu_seconds.items()},
                "cpu_ms_per_saga": round(self.cpu_ms_per_saga, 2), "stock_problems": self.stock_problems,
                "postgres_per_saga": self.db_per_saga, "hops": [hop.as_dict() for hop in self.hops],
                "machine": {k: round(v, 1) if isinstance(v, float) else v for k, v in self.machine.items()}}


class LoadTest:
    def __init__(self, *, base_url: str, orders: int, concurrency: int, rate: float | None, mix: dict[str, int],
                 seed: int, state_path: Path | None, timeout: float, progress=sys.stderr):
        self.base_url, self.orders, self.concurrency, self.rate = base_url.rstrip("/"), orders, concurrency, rate
        self.mix, self.rng, self.state_path, self.timeout, self.progress = mix, random.Random(seed), state_path, \
            timeout, progress
        self._local = threading.local()  # each client thread's kept-alive connection
        self._lock = threading.Lock()
        self.placed: list[tuple[str, str]] = []
        self.errors: Counter = Counter()

    def _request(self, method: str, path: str, body: dict) -> tuple[int, dict]:
        """(status, JSON answer) of one API call, on the calling thread's kept-alive connection.

        Plain http.client: the load generator shares the machine with the stack, so its own CPU
        per request counts (a urllib3 pool cost twice as much per call, requests' session four
        times). A kept connection the server closed while idle is replaced before it is used.
        Transport failures raise OSError or http.client.HTTPException.
        """
        conn = getattr(self._local, "conn", None)
        if conn is not None and connection_closed_while_idle(conn):
            conn.close()
        if conn is None:
            parts = urllib.parse.urlsplit(self.base_url)
            kind = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
            conn = self._local.conn = kind(parts.hostname, parts.port, timeout=30)
            self._local.prefix = parts.path
        try:
            conn.request(method, self._local.prefix + path, body=json.dumps(body).encode(), headers=self._headers)
            response = conn.getresponse()
            data = response.read()
        except (OSError, http.client.HTTPException):
            conn.close()
            raise
        if response.will_close:
            conn.close()
        return response.status, (json.loads(data) if data else {})

    def _prepare(self) -> None:
        user, _ = get_user_model().objects.get_or_create(username="loadtest", defaults={"is_staff": True})
        if not user.is_staff:
            user.is_staff = True
            user.save()
        self.token = Token.objects.get_or_create(user=user)[0].key
        self._headers = {"Authorization": f"Token {self.token}", "Content-Type": "application/json"}
        run = uuid.uuid4().hex[:8]
        self.products = [f"lt-{run}-{i}" for i in range(16)]
        self.empty = f"lt-{run}-empty"
        for product_id, quantity in [*((p, self.orders * 2) for p in self.products), (self.empty, 0)]:
            status, answer = self._request("PUT", f"/api/v1/inventory/products/{product_id}",
                                           {"name": product_id, "availableQuantity": quantity})
            if status >= 400:
                raise RuntimeError(f"setting up product {product_id}: HTTP {status} {answer}")

    def _body(self, n: int, kind: str) -> dict:
        first = self.products[n % len(self.products)]
        second = self.products[(n * 7 + 3) % len(self.products)]
        items = [{"productId": self.empty if kind == "oos" else first, "quantity": 1, "unitPrice": "12.50"},
                 {"productId": second, "quantity": 2, "unitPrice": "3.25"}]
        return {"customerId": f"lt-{n % 100}", "items": items,
                "paymentMethod": "pm_card_chargeCustomerFail" if kind == "decline" else "pm_card_visa"}

    def _place(self, n: int, kind: str) -> None:
        try:
            status, answer = self._request("POST", "/api/v1/orders", self._body(n, kind))
        except (OSError, http.client.HTTPException, ValueError) as exc:  # ValueError: an answer that is not JSON
            with self._lock:
                self.errors[type(exc).__name__] += 1
            return
        if status != 201:
            with self._lock:
                self.errors[f"HTTP {status}"] += 1
            return
        with self._lock:
            self.placed.append((answer["orderId"], kind))

    def _show(self, done: int, total: int, started: float, label: str) -> None:
        if not self.progress:
            return
        width = 30
        filled = int(width * done / max(total, 1))
        rate = done / max(time.monotonic() - started, 1e-9)
        self.progress.write(f"\r{label} [{'#' * filled}{'.' * (width - filled)}] {done}/{total} {rate:7.1f}/s")
        self.progress.flush()

    def run(self) -> LoadReport:
        self._prepare()
        kinds = self.rng.choices(list(self.mix), weights=list(self.mix.values()), k=self.orders)
        # Timed outside the measured span: the probe's own CPU is not the stack's.
        machine = machine_probed()
        cpu, db = CpuMeter(self.state_path), DbMeter()
        started = time.monotonic()
        in_flight = threading.BoundedSemaphore(self.concurrency)
        with concurrent.futures.ThreadPoolExecutor(self.concurrency) as pool:
            futures = []
            for n, kind in enumerate(kinds):
                if self.rate:
                    # Open loop: the n-th order leaves at n / rate, whatever happened to the others.
                    delay = started + n / self.rate - time.monotonic()
                    if delay > 0:
                        time.sleep(delay)
                else:
                    in_flight.acquire()  # closed loop: at most `concurrency` requests out
                future = pool.submit(self._place, n, kind)
                if not self.rate:
                    future.add_done_callback(lambda _f: in_flight.release())
                futures.append(future)
                if n % 50 == 0:
                    self._show(n, self.orders, started, "placing")
            concurrent.futures.wait(futures)
        self._show(self.orders, self.orders, started, "placing")
        if self.progress:
            self.progress.write("\n")
        ids = [order_id for order_id, _ in self.placed]
        deadline = time.monotonic() + self.timeout
        # Only the orders still pending are asked about, a few times a second: this watcher runs
        # on the same machine and its queries count in PostgreSQL's CPU.
        pending = set(ids)
        while True:
            for chunk in _chunks(sorted(pending), 1000):
                pending -= {str(i) for i in Order.objects.filter(id__in=chunk).exclude(status="PENDING")
                            .values_list("id", flat=True)}
            self._show(len(ids) - len(pending), len(ids), started, "settling")
            if not pending or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        elapsed = time.monotonic() - started
        if self.progress:
            self.progress.write("\n")
        # A terminal order is not the last message of its saga: the stock commit or release that
        # follows is still on its way, so the stock is checked once nothing is reserved any more
        # (or the deadline has passed, and then the report names what is still reserved).
        watched = [*self.products, self.empty]
        while (Product.objects.filter(product_id__in=watched, reserved_quantity__gt=0).exists()
               and time.monotonic() < deadline):
            time.sleep(0.05)
        report = self._report(ids, elapsed, cpu.spent(), db.spent())
        report.machine = {**machine, "probe_ms_after": cpu_probe_ms()}
        return report

    def _report(self, ids: list[str], elapsed: float, cpu_seconds: dict[str, float],
                db_counts: dict[str, float]) -> LoadReport:
        statuses = {str(k): v for k, v in Order.objects.filter(id__in=ids).values_list("id", "status")}
        outcomes: Counter = Counter()
        wrong = []
        for order_id, kind in self.placed:
            status = statuses.get(order_id, "MISSING")
            outcomes[f"{kind}->{status}"] += 1
            if status != EXPECTED[kind]:
                wrong.append(f"{order_id} {kind} ended {status}")
        latencies = []
        created = dict(Order.objects.filter(id__in=ids).values_list("id", "created_at"))
        for order_id, finished in SagaInstance.objects.filter(order_id__in=ids, finished_at__isnull=False) \
                .values_list("order_id", "finished_at"):
            latencies.append((finished - created[order_id]).total_seconds() * 1000)
        stock_problems = []
        for product in Product.objects.filter(product_id__in=[*self.products, self.empty]):
            if (product.available_quantity + product.reserved_quantity + product.sold_quantity
                    != product.stocked_quantity or product.reserved_quantity != 0):
                stock_problems.append(f"{product.product_id}: available {product.available_quantity}, reserved "
                                      f"{product.reserved_quantity}, sold {product.sold_quantity}, stocked "
                                      f"{product.stocked_quantity}")
        return LoadReport(orders=len(ids), seconds=elapsed, outcomes=outcomes, wrong=wrong, errors=self.errors,
                          latencies_ms=latencies, cpu_seconds=cpu_seconds, stock_problems=stock_problems,
                          db_counts=db_counts, hops=hops_measure({str(k): v for k, v in created.items()}))

