"""The message contract machinery: small frozen dataclasses with camelCase JSON on the wire.

Each app declares its public messages in its own `messages.py` by subclassing `Message` and
setting `SUBJECT`. On the wire every message is one JSON object: the envelope fields
(`eventId`, `eventType`, `occurredAt`, `schemaVersion`) next to the payload fields, all
camelCase (A4CO contract: `orderId`, `totalAmount`, ...). Unknown extra fields are ignored so
that producers may add fields without breaking consumers.

`message_parse()` is strict about what a handler relies on: a missing field, a wrong type or an
unknown schema version raises `MalformedMessageError`, which the consumer runner treats as
poison (never retried).
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import importlib
import types
import typing
from decimal import Decimal, InvalidOperation
from typing import Any, ClassVar

SCHEMA_VERSION = 1

_REGISTRY: dict[str, type[Message]] = {}


class MalformedMessageError(ValueError):
    """A message that can never be handled as sent (bad JSON, unknown type, missing field...)."""


def camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.title() for part in rest)


@dataclasses.dataclass(frozen=True)
class Message:
    """Base class of every event and command. Subclasses set `SUBJECT` and declare fields."""

    SUBJECT: ClassVar[str] = ""
    SCHEMA_VERSION: ClassVar[int] = SCHEMA_VERSION
    # "event" (past tense, to every listener) or "command" (imperative, to one service).
    KIND: ClassVar[str] = "event"

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if cls.SUBJECT:
            if cls.SUBJECT in _REGISTRY and _REGISTRY[cls.SUBJECT].__qualname__ != cls.__qualname__:
                raise RuntimeError(f"two message classes claim subject {cls.SUBJECT}")
            _REGISTRY[cls.SUBJECT] = cls

    def to_payload(self) -> dict[str, Any]:
        """The payload fields as JSON-ready camelCase values (no envelope)."""
        return {camel(f.name): _to_json(getattr(self, f.name)) for f in dataclasses.fields(self)}

    @classmethod
    def from_payload(cls, data: dict[str, Any]) -> Message:
        hints = _field_types(cls)
        values = {}
        for f in dataclasses.fields(cls):
            key = camel(f.name)
            has_default = (f.default is not dataclasses.MISSING
                           or f.default_factory is not dataclasses.MISSING)
            if key not in data or data[key] is None:
                if has_default:
                    continue
                raise MalformedMessageError(f"{cls.SUBJECT}: missing field {key!r}")
            try:
                values[f.name] = _from_json(hints[f.name], data[key])
            except (TypeError, ValueError, InvalidOperation) as exc:
                raise MalformedMessageError(f"{cls.SUBJECT}: field {key!r}: {exc}") from exc
        return cls(**values)


@functools.cache
def _field_types(cls: type) -> dict[str, Any]:
    # get_type_hints evaluates every annotation string: once per class, not once per message.
    return typing.get_type_hints(cls)


def _to_json(value: Any) -> Any:
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, dt.datetime):
        return value.isoformat()
    if isinstance(value, (tuple, list)):
        return [_to_json(v) for v in value]
    if isinstance(value, dict):
        return {k: _to_json(v) for k, v in value.items()}
    return value


def _from_json(hint: Any, value: Any) -> Any:
    origin = typing.get_origin(hint)
    if origin is typing.Union or origin is types.UnionType:
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        return _from_json(args[0], value)
    if hint is str:
        if not isinstance(value, str) or not value:
            raise TypeError("expected a non-empty string")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError("expected an integer")
        return value
    if hint is Decimal:
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise TypeError("expected a decimal number")
        amount = Decimal(repr(value) if isinstance(value, float) else str(value))
        if not amount.is_finite():
            raise ValueError("expected a finite number")
        return amount
    if hint is dt.datetime:
        if not isinstance(value, str):
            raise TypeError("expected an ISO-8601 timestamp")
        parsed = dt.datetime.fromisoformat(value)
        if parsed.tzinfo is None:
            raise ValueError("timestamp must carry a timezone")
        return parsed
    if origin is tuple:
        if not isinstance(value, list):
            raise TypeError("expected a list")
        (item_hint, *_rest) = typing.get_args(hint)
        return tuple(_from_json(item_hint, v) for v in value)
    if origin is dict or hint is dict:
        if not isinstance(value, dict):
            raise TypeError("expected an object")
        return value
    return value


def message_envelope(message: Message, *, event_id: str, occurred_at: dt.datetime) -> dict[str, Any]:
    """The full wire object: envelope + payload, ready for json.dumps."""
    return {
        "eventId": event_id,
        "eventType": message.SUBJECT,
        "occurredAt": occurred_at.isoformat(),
        "schemaVersion": message.SCHEMA_VERSION,
        **message.to_payload(),
    }


def message_registry() -> dict[str, type[Message]]:
    """Every message class by subject."""
    # Importing the contract modules registers their classes (Message.__init_subclass__).
    from django.conf import settings

    for module in settings.MESSAGE_MODULES:
        importlib.import_module(module)
    return _REGISTRY


def _is_text(value: Any) -> bool:
    """True unless a string in `value` (keys included) holds what no database column can store:
    NUL characters or lone surrogates (JSON's "\\u0000" and "\\ud800" escapes decode to them)."""
    pending = [value]  # iterative: the nesting is the sender's choice
    while pending:
        item = pending.pop()
        if isinstance(item, str):
            if "\x00" in item:
                return False
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                return False
        elif isinstance(item, dict):
            pending.extend(item.keys())
            pending.extend(item.values())
        elif isinstance(item, list):
            pending.extend(item)
    return True


def message_parse(subject: str, data: Any) -> Message:
    """Decode a wire object for `subject` into its message class.

    Raises MalformedMessageError for a non-object, an unknown subject, a schema version this
    code does not understand, missing/ill-typed fields, or strings no database can store.
    """
    if not isinstance(data, dict):
        raise MalformedMessageError(f"{subject}: payload is not a JSON object")
    if not _is_text(data):
        raise MalformedMessageError(f"{subject}: a string holds a NUL character or a lone UTF-16 surrogate")
    cls = message_registry().get(subject)
    if cls is None:
        raise MalformedMessageError(f"unknown message type {subject!r}")
    version = data.get("schemaVersion", cls.SCHEMA_VERSION)
    if version != cls.SCHEMA_VERSION:
        raise MalformedMessageError(f"{subject}: unsupported schemaVersion {version!r}")
    event_type = data.get("eventType", subject)
    if event_type != subject:
        raise MalformedMessageError(f"eventType {event_type!r} does not match subject {subject!r}")
    return cls.from_payload(data)


def registered_subjects() -> list[str]:
    return sorted(message_registry())
