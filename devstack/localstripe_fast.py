"""Launch localstripe (the Stripe API stand-in) patched for speed and isolation.

Usage: ``python localstripe_fast.py --port N [--host 127.0.0.1] [--access-log]``

This file is run as a script by ``devstack.servers.start_stripe`` (it imports
nothing from ``devstack``, so it works from any working directory).

Patches applied before the server starts, to localstripe 1.15.x:

* Persistence off. Stock localstripe pickles its *whole* store to the
  hard-coded ``/tmp/localstripe.pickle`` on every single change, so each write
  costs O(store size) and two instances on one machine overwrite each other's
  file. Here the store lives in memory only; every instance starts empty and
  forgets everything when it stops. ``DELETE /_config/data`` still empties it.
* Objects indexed by type. ``StripeObject._api_list_all`` (used by every list
  endpoint, and by properties such as ``Charge.refunds`` that are computed on
  every PaymentIntent response) scanned every stored object; it now reads a
  per-type index, so a payment no longer slows down as the store grows.
* Exports without ``dir()``. ``StripeObject._export`` (every response, every
  event) called ``dir(self)`` to find the computed properties; the names a
  class offers are now listed once per class. Same dictionaries out.
* No webhook work without webhooks. Every event was serialised (indented,
  sorted JSON) for delivery one second later, even with no webhook
  registered; now delivery is scheduled only while one is registered.
  Events are still created and stored (``GET /v1/events``).
* Compact JSON answers (stock: indented and key-sorted, for no client's benefit).
* Bound to one interface. Stock ``localstripe`` binds ``::`` (all
  interfaces) and has no host option; this launcher binds ``--host``
  (default 127.0.0.1) itself and hands the socket to aiohttp.

Measured on the 2-core dev machine (2026-11-27) with stripe-python 16, one
client, a payment being PaymentIntent create + confirm with ``pm_card_visa``
(two HTTP calls), wall time per payment seen by the client:

* stock ``localstripe --from-scratch``: 23.7 ms/payment over the first 300
  (about 19 ms of it server CPU), then 74, 130 and 172 ms/payment for the
  next rounds of 300: the pickling and the scans grow with the store;
* this launcher: 2.7 ms/payment, flat over 3,000 payments (server CPU about
  1.25 ms/payment; the rest is the client and HTTP).

Still linear: ``Charge.refunds`` filters all *refunds* (not all objects) by
charge, so only a very refund-heavy store would notice.

Behaviour otherwise unchanged: same API, same test cards, same webhook
support (``POST /_config/webhooks/{id}``).

Failure behaviour: if the port cannot be bound the process exits non-zero with
the OSError on stderr (the caller shows the log tail). If the installed
localstripe no longer has the internals patched here, it exits with status 3
and says which one is missing, rather than silently running unpatched.
"""

from __future__ import annotations

import argparse
import logging
import socket
import sys


def _build_indexed_store(resources):
    """Return an empty store that keeps a per-object-type index.

    Keys are ``"<object>:<id>"`` (plus the singleton ``"balance"``); the
    index maps ``<object>`` to a dict of that type's objects in insertion
    order, which is the order the original full scan produced.
    """

    base = resources.Store

    class IndexedStore(base):
        def __init__(self, *args, **kwargs):
            self._by_type = {}
            super().__init__(*args, **kwargs)
            for key, value in dict.items(self):
                self._index(key, value)

        @staticmethod
        def _type_of(key):
            return key.partition(":")[0] if ":" in key else None

        def _index(self, key, value):
            kind = self._type_of(key)
            if kind is not None:
                self._by_type.setdefault(kind, {})[key] = value

        def _unindex(self, key):
            kind = self._type_of(key)
            if kind is not None:
                bucket = self._by_type.get(kind)
                if bucket is not None:
                    bucket.pop(key, None)

        def objects_of(self, kind):
            return list(self._by_type.get(kind, {}).values())

        # Persistence off: see the module docstring.
        def try_load_from_disk(self):
            return None

        def dump_to_disk(self):
            return None

        def __setitem__(self, key, value):
            dict.__setitem__(self, key, value)
            self._index(key, value)

        def __delitem__(self, key):
            dict.__delitem__(self, key)
            self._unindex(key)

        def pop(self, key, *default):
            value = dict.pop(self, key, *default)
            self._unindex(key)
            return value

        def popitem(self):
            key, value = dict.popitem(self)
            self._unindex(key)
            return key, value

        def setdefault(self, key, default=None):
            if key not in self:
                self[key] = default
            return self[key]

        def update(self, *args, **kwargs):
            for key, value in dict(*args, **kwargs).items():
                self[key] = value

        def clear(self):
            dict.clear(self)
            self._by_type.clear()

    return IndexedStore


def patch_localstripe():
    """Apply the patches described in the module docstring; return the app."""
    from localstripe import resources, server

    for name in ("Store", "store", "StripeObject", "List", "UserError", "schedule_webhook"):
        if not hasattr(resources, name):
            raise RuntimeError(
                f"localstripe_fast: localstripe.resources.{name} not found; "
                "the installed localstripe is not the 1.15.x this patch targets"
            )
    if not hasattr(server, "app") or not hasattr(server, "store"):
        raise RuntimeError(
            "localstripe_fast: localstripe.server.app/store not found; "
            "the installed localstripe is not the 1.15.x this patch targets"
        )

    store_cls = _build_indexed_store(resources)
    # Carry over anything created at import time (nothing, in 1.15.10).
    store = store_cls(dict.items(resources.store))
    # Both modules look `store` up as a module global at call time, so
    # rebinding the globals is enough; no object holds the old instance.
    resources.store = store
    server.store = store

    List = resources.List
    UserError = resources.UserError

    def _api_list_all(cls, url, limit=None, starting_after=None, **kwargs):
        if kwargs:
            raise UserError(400, "Unexpected " + ", ".join(kwargs.keys()))
        li = List(url, limit=limit, starting_after=starting_after)
        li._list = resources.store.objects_of(cls.object)
        return li

    # Subclasses reach this through super()._api_list_all(...), which looks
    # the attribute up on StripeObject at call time, so they all benefit.
    resources.StripeObject._api_list_all = classmethod(_api_list_all)
    _patch_export(resources)
    _patch_webhooks(resources)
    _patch_answers(server)
    return server.app


def _patch_export(resources):
    """`StripeObject._export` without a `dir()` per call: `dir(obj)` is the instance's own
    attributes plus its class's, and the instance's are read through `vars()` first anyway,
    so the public names of the class are listed once per class and reused."""
    stock = resources.StripeObject._export
    StripeObject = resources.StripeObject
    class_names: dict[type, list[str]] = {}

    def _export(self, expand=None):
        if expand:  # rare: the stock code, which also validates and expands
            return stock(self, expand)
        obj = {}
        for key, value in vars(self).items():
            if not key.startswith("_"):
                if isinstance(value, StripeObject):
                    obj[key] = value._export()
                elif isinstance(value, list) and len(value) and isinstance(value[0], StripeObject):
                    obj[key] = [item._export() for item in value]
                elif isinstance(value, dict):
                    obj[key] = value.copy()
                else:
                    obj[key] = value
        cls = type(self)
        names = class_names.get(cls)
        if names is None:
            names = class_names[cls] = [name for name in dir(cls) if not name.startswith("_")]
        for prop in names:
            if prop not in obj:
                value = getattr(self, prop)
                obj[prop] = value._export() if isinstance(value, StripeObject) else value
        return obj

    StripeObject._export = _export


def _patch_answers(server):
    """Compact JSON answers: the stock ones are indented and key-sorted, for no client's benefit."""
    import json

    from aiohttp import web

    def json_response(*args, **kwargs):
        return web.json_response(*args, dumps=lambda x: json.dumps(x, separators=(",", ":")), **kwargs)

    server.json_response = json_response


def _patch_webhooks(resources):
    """Schedule an event's delivery only while a webhook is registered (the stock code
    serialised every event for a delivery loop over no webhooks)."""
    from localstripe import webhooks

    stock = resources.schedule_webhook

    def schedule_webhook(event):
        if webhooks._webhooks:
            stock(event)

    resources.schedule_webhook = schedule_webhook


def _bind(host, port):
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    return sock


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    # Off unless asked for: a line per request (two per payment) is CPU of the stand-in and of
    # the devstack that relays it, counted in every benchmark.
    parser.add_argument("--access-log", action="store_true", help="log every request (aiohttp access log)")
    args = parser.parse_args(argv)

    try:
        app = patch_localstripe()
    except RuntimeError as exc:
        print(exc, file=sys.stderr)
        return 3

    from aiohttp import web

    sock = _bind(args.host, args.port)

    access = None
    if args.access_log:
        access = logging.getLogger("aiohttp.access")
        access.setLevel(logging.INFO)
        access.addHandler(logging.StreamHandler())

    # shutdown_timeout: a dev/test stand-in should stop promptly on SIGTERM
    # instead of waiting up to aiohttp's default 60 s for idle keep-alives.
    web.run_app(
        app,
        sock=sock,
        access_log=access,
        shutdown_timeout=2.0,
        print=lambda *a: print(*a, flush=True),
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
