"""The chaos harness: a mixed order load against a running stack while faults are injected, then
the invariant checker once everything has settled.

It drives the public HTTP API like a client would (Idempotency-Key on every order, retries
while the web process is down), and injects, at seeded random points of the run:
- `kill`: `kill -9` of each app process kind (web, worker, beat, consumers);
- `restart-nats`, `restart-db`, `restart-redis`: `kill -9` of that server (the devstack
  supervisor restarts it; JetStream and PostgreSQL recover from their files);
- `stripe-slow`, `stripe-error`, `stripe-drop`: a window of delays past the client timeout,
  500s, or responses dropped after the charge succeeded, through the devstack's fault proxy;
- `duplicate`, `reorder`: recent or early messages published again under new event ids, so
  only business-level idempotency and the saga's guards stand between them and a double effect.

The stack is described by the devstack's state file (`python -m devstack run --stripe-proxy`
writes it; see devstack/cli.py for the format). Run this command with the same environment as
the stack (with `make run`'s defaults there is nothing to set).
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import datetime as dt
import json
import os
import random
import signal
import threading
import time
import uuid
from collections import Counter
from pathlib import Path

import requests
from django.contrib.auth import get_user_model
from django.db import InterfaceError, OperationalError, connections
from rest_framework.authtoken.models import Token

from infra import nats as nats_bus
from infra.invariants import Check, invariants_check, invariants_violations
from infra.outbox import outbox_models
from infra.streams import ROUTES
from orders.models import Order

FAULTS = ("kill", "restart-nats", "restart-db", "restart-redis", "stripe-slow", "stripe-error", "stripe-drop",
          "duplicate", "reorder")
APP_KINDS = ("web", "worker", "beat", "consumers")
MIX = {"ok": 70, "decline": 10, "oos": 10, "cancel": 10}
# Under faults any order may time out and be cancelled; a decline or a sold-out order must never
# be confirmed.
EXPECTED = {"ok": {"CONFIRMED", "CANCELLED"}, "cancel": {"CANCELLED", "CONFIRMED"},
            "decline": {"CANCELLED"}, "oos": {"FAILED", "CANCELLED"}}


class ChaosError(RuntimeError):
    pass


@dataclasses.dataclass
class ChaosReport:
    faults: Counter = dataclasses.field(default_factory=Counter)
    outcomes: dict[str, Counter] = dataclasses.field(default_factory=dict)
    wrong_outcomes: list[str] = dataclasses.field(default_factory=list)
    placed: int = 0
    load_seconds: float = 0.0
    quiescence_seconds: float = 0.0
    quiescent: bool = False
    checks: list[Check] = dataclasses.field(default_factory=list)

    @property
    def violations(self) -> int:
        return invariants_violations(self.checks) + len(self.wrong_outcomes) + (0 if self.quiescent else 1)


class StackState:
    """The devstack's state file, re-read on every access (processes restart under us)."""

    def __init__(self, path: Path):
        self.path = path

    def read(self) -> dict:
        try:
            return json.loads(self.path.read_text())
        except (OSError, ValueError) as exc:
            raise ChaosError(f"cannot read the devstack state file {self.path}: {exc}") from exc

    def pid(self, name: str) -> int:
        process = self.read().get("processes", {}).get(name)
        if not process or not process.get("pid"):
            raise ChaosError(f"the stack has no running process {name!r}")
        return int(process["pid"])

    def wait_restarted(self, name: str, old_pid: int, timeout: float = 60) -> float:
        started = time.monotonic()
        while time.monotonic() - started < timeout:
            process = self.read().get("processes", {}).get(name) or {}
            if process.get("pid") and int(process["pid"]) != old_pid and _alive(int(process["pid"])):
                return time.monotonic() - started
            time.sleep(0.05)
        raise ChaosError(f"{name} was not restarted within {timeout}s")


def _through_restarts(func, errors: tuple[type[Exception], ...], *, deadline: float = 60, between=None):
    """func(), tried again every 0.2 s (after `between()`) while it raises one of `errors`, which
    the servers we kill on purpose raise while they restart; the last error after `deadline` s."""
    give_up = time.monotonic() + deadline
    while True:
        try:
            return func()
        except errors:
            if time.monotonic() > give_up:
                raise
            if between is not None:
                between()
            time.sleep(0.2)


def _with_db_retry(func, *, deadline: float = 60):
    """Run a read of ours through PostgreSQL restarts."""
    return _through_restarts(func, (OperationalError, InterfaceError), deadline=deadline,
                             between=connections.close_all)


def _with_nats_retry(func, *, deadline: float = 60):
    """Run a publish of ours through NATS restarts. A batch sent again after a partial success is
    deduplicated by the stream (same Nats-Msg-Id)."""
    return _through_restarts(func, (nats_bus.NatsUnavailableError,), deadline=deadline)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Chaos:
    def __init__(self, *, orders: int, seed: int, faults: list[str], concurrency: int, state_path: Path,
                 quiesce_timeout: float, out=print):
        unknown = sorted(set(faults) - set(FAULTS))
        if unknown:
            raise ChaosError(f"unknown fault(s): {', '.join(unknown)}; known: {', '.join(FAULTS)}")
        self.orders, self.seed, self.faults = orders, seed, faults
        self.concurrency, self.quiesce_timeout, self.out = concurrency, quiesce_timeout, out
        self.rng = random.Random(seed)
        self.state = StackState(state_path)
        self.report = ChaosReport()
        self._lock = threading.Lock()
        self._placed: list[tuple[str, str]] = []  # (order id, kind)
        self._run_started = time.time()

    # --- setup ----------------------------------------------------------------------------

    def _prepare(self) -> None:
        state = self.state.read()
        if not state.get("ready"):
            raise ChaosError(f"the stack in {self.state.path} is not ready")
        self.base_url = state["web_url"].rstrip("/")
        self.proxy = state.get("proxy_control_url")
        if any(f.startswith("stripe-") for f in self.faults) and not self.proxy:
            raise ChaosError("stripe faults need the Stripe fault proxy: start the stack with --stripe-proxy")
        user, _ = get_user_model().objects.get_or_create(username="chaos", defaults={"is_staff": True})
        if not user.is_staff:
            user.is_staff = True
            user.save()
        self.token = Token.objects.get_or_create(user=user)[0].key
        self.run_id = f"{self.seed}-{uuid.uuid4().hex[:6]}"
        self.products = [f"chaos-{self.run_id}-p{i}" for i in range(8)]
        self.scarce = f"chaos-{self.run_id}-none"
        for product_id in self.products:
            self._request("PUT", f"/api/v1/inventory/products/{product_id}",
                          json={"name": product_id, "availableQuantity": self.orders * 2})
        self._request("PUT", f"/api/v1/inventory/products/{self.scarce}", json={"name": "sold out",
                                                                                 "availableQuantity": 0})

    def _session(self) -> requests.Session:
        session = requests.Session()
        session.headers["Authorization"] = f"Token {self.token}"
        return session

    def _request(self, method: str, path: str, *, session: requests.Session | None = None, deadline: float = 90,
                 ok=(200, 201, 202), **kwargs) -> requests.Response:
        """Retry through web restarts and 5xx until an answer in `ok` (or a 4xx), up to `deadline` s."""
        session = session or self._session()
        give_up = time.monotonic() + deadline
        while True:
            try:
                response = session.request(method, f"{self.base_url}{path}", timeout=10, **kwargs)
                if response.status_code in ok or 400 <= response.status_code < 500:
                    return response
            except requests.RequestException:
                pass
            if time.monotonic() > give_up:
                raise ChaosError(f"{method} {path} did not succeed within {deadline}s")
            time.sleep(0.1)

    # --- load -----------------------------------------------------------------------------

    def _one_order(self, n: int, kind: str, delay_cancel: float) -> None:
        session = self._session()
        items = [{"productId": self.scarce if kind == "oos" else self._product_for(n), "quantity": 1,
                  "unitPrice": "9.95"}]
        if kind != "oos":
            items.append({"productId": self._product_for(n + 1), "quantity": 2, "unitPrice": "3.10"})
        body = {"customerId": f"chaos-{n % 50}", "items": items,
                "paymentMethod": "pm_card_chargeCustomerFail" if kind == "decline" else "pm_card_visa"}
        response = self._request("POST", "/api/v1/orders", session=session, json=body,
                                 headers={"Idempotency-Key": f"chaos-{self.run_id}-{n}"})
        if response.status_code not in (200, 201):
            raise ChaosError(f"order {n} refused: {response.status_code} {response.text[:200]}")
        order_id = response.json()["orderId"]
        with self._lock:
            self._placed.append((order_id, kind))
        if kind == "cancel":
            time.sleep(delay_cancel)
            self._request("POST", f"/api/v1/orders/{order_id}/cancel", session=session,
                          json={"reason": "chaos"}, ok=(200, 202, 409))

    def _product_for(self, n: int) -> str:
        return self.products[n % len(self.products)]

    def _load(self) -> None:
        kinds = self.rng.choices(list(MIX), weights=list(MIX.values()), k=self.orders)
        delays = [self.rng.uniform(0, 0.4) for _ in range(self.orders)]
        plan = self._fault_plan()
        started = time.monotonic()
        with concurrent.futures.ThreadPoolExecutor(self.concurrency) as pool:
            futures = []
            for n, kind in enumerate(kinds):
                futures.append(pool.submit(self._one_order, n, kind, delays[n]))
                if n in plan:
                    # Faults run on their own thread so that the load keeps flowing through them.
                    futures.append(pool.submit(self._inject, *plan[n]))
                while sum(not f.done() for f in futures) > self.concurrency * 2:
                    time.sleep(0.005)
            for future in futures:
                future.result()
        self.report.load_seconds = time.monotonic() - started
        self.report.placed = len(self._placed)

    def _fault_plan(self) -> dict[int, tuple[str, int]]:
        """Order index -> (fault, its own seed): every requested fault at least once, spread over the run."""
        rounds = max(1, min(3, self.orders // max(1, 25 * len(self.faults))))
        sequence = [fault for _ in range(rounds) for fault in self.rng.sample(self.faults, len(self.faults))]
        if not sequence:
            return {}
        step = max(1, self.orders // (len(sequence) + 1))
        return {step * (i + 1): (fault, self.rng.randrange(1 << 30)) for i, fault in enumerate(sequence)}

    # --- faults -----------------------------------------------------------------------------

    def _inject(self, fault: str, seed: int) -> None:
        if fault == "kill":
            for kind in APP_KINDS:
                self._kill(kind)
        elif fault.startswith("restart-"):
            self._kill({"restart-nats": "nats", "restart-db": "postgres", "restart-redis": "redis"}[fault])
        elif fault.startswith("stripe-"):
            self._stripe_window(fault, seed)
        elif fault in ("duplicate", "reorder"):
            self._republish(random.Random(seed), recent=fault == "duplicate")
        with self._lock:
            self.report.faults[fault] += 1

    def _kill(self, name: str) -> None:
        pid = self.state.pid(name)
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            return
        seconds = self.state.wait_restarted(name, pid)
        self.out(f"  fault: kill -9 {name} (pid {pid}), back after {seconds:.1f}s")
        with self._lock:
            self.report.faults[f"kill -9 {name}"] += 1

    def _stripe_window(self, fault: str, seed: int, seconds: float = 2.0) -> None:
        config = {"stripe-slow": {"delay_probability": 0.5, "delay_seconds": 15},
                  "stripe-error": {"error_probability": 0.5},
                  "stripe-drop": {"drop_after_success_probability": 0.5}}[fault]
        requests.post(self.proxy, json={"seed": seed, **config}, timeout=5).raise_for_status()
        time.sleep(seconds)  # the fault window: a duration by design, not a wait for a condition
        stats = requests.get(self.proxy, timeout=5).json()
        requests.delete(self.proxy, timeout=5).raise_for_status()
        self.out(f"  fault: {fault} for {seconds:.0f}s ({json.dumps(stats.get('counters', stats))[:160]})")

    def _republish(self, rng: random.Random, *, recent: bool, count: int = 20) -> None:
        def published_rows():
            rows = []
            for model in outbox_models():
                query = model.objects.filter(published_at__isnull=False,
                                             created_at__gte=_from_epoch(self._run_started))
                rows += list(query.order_by("-created_at" if recent else "created_at")
                             .values("subject", "payload")[:count])
            return rows

        rows = _with_db_retry(published_rows)
        picked = rng.sample(rows, min(count, len(rows)))
        items = [(row["subject"], json.dumps(row["payload"]).encode(), str(uuid.uuid4())) for row in picked]
        if items:
            # Deliberately: new event ids, same content.
            _with_nats_retry(lambda: nats_bus.publish_batch_bypassing_outbox(items))
        self.out(f"  fault: {'duplicated' if recent else 'replayed early'} {len(items)} messages")

    # --- settle and judge ----------------------------------------------------------------------

    def _quiesce(self) -> None:
        """Wait until every order ended, every outbox is empty and every consumer has caught up."""
        started = time.monotonic()
        ids = [order_id for order_id, _ in self._placed]
        while time.monotonic() - started < self.quiesce_timeout:
            pending = _with_db_retry(lambda: Order.objects.filter(id__in=ids, status="PENDING").count())
            unpublished = _with_db_retry(
                lambda: sum(m.objects.filter(published_at__isnull=True).count() for m in outbox_models()))
            if pending == 0 and unpublished == 0 and self._consumers_caught_up():
                self.report.quiescent = True
                break
            time.sleep(0.25)
        self.report.quiescence_seconds = time.monotonic() - started
        statuses = dict(Order.objects.filter(id__in=ids).values_list("id", "status"))
        for order_id, kind in self._placed:
            status = statuses.get(uuid.UUID(order_id), "MISSING")
            self.report.outcomes.setdefault(kind, Counter())[status] += 1
            if status != "PENDING" and status not in EXPECTED[kind]:
                self.report.wrong_outcomes.append(f"{order_id} {kind} -> {status}")

    @staticmethod
    def _consumers_caught_up() -> bool:
        try:
            states = nats_bus.jetstream_consumer_states([route.consumer for route in ROUTES], timeout=5)
        except nats_bus.NatsUnavailableError:
            return False
        return bool(states) and all(s.num_pending == 0 and s.num_ack_pending == 0 for s in states)

    def run(self) -> ChaosReport:
        self._prepare()
        self.out(f"chaos: {self.orders} orders, seed {self.seed}, faults {', '.join(self.faults) or 'none'}, "
                 f"concurrency {self.concurrency}")
        self._load()
        self.out(f"load done: {self.report.placed} orders in {self.report.load_seconds:.1f}s; waiting for quiescence")
        self._quiesce()
        self.report.checks = invariants_check()
        return self.report


def _from_epoch(seconds: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(seconds, tz=dt.UTC)
