"""The devstack's process list: edit here to change what ``make run`` starts.

``SETUP_STEPS`` run once, in order, after the servers are up; the first
failing step stops the devstack with an error. ``PROCESSES`` then run
until Ctrl-C and are restarted if they die. Both map a short name (the
log prefix) to a command line, split like a shell would (``shlex``) *before*
these placeholders are filled in, so paths with spaces are safe:

* ``{python}``: the virtualenv's interpreter (``sys.executable``)
* ``{datadir}``: the run-mode data directory (``<repo>/.devstack``)
* ``{port}``: the web port, ``$PORT`` or 8000

Commands run from the repository root with DATABASE_URL, NATS_URL,
CELERY_BROKER_URL and STRIPE_API_BASE in their environment.
"""
import os

SETUP_STEPS = {
    "migrate": "{python} manage.py migrate_all",
    "streams": "{python} manage.py setup_streams",
    "seed": "{python} manage.py seed_demo",
    # gunicorn serves no files: WhiteNoise serves what this gathers into STATIC_ROOT (admin, API docs).
    "static": "{python} manage.py collectstatic --noinput",
}

PROCESSES = {
    # --no-control-socket: gunicorn 24+ otherwise opens ~/.gunicorn/gunicorn.ctl,
    # one path per user, which any second gunicorn (another checkout, a test
    # run) would fight over; the devstack does not use it.
    "web": (
        "{python} -m gunicorn a4co.wsgi:application --bind 127.0.0.1:{port}"
        " --workers 2 --threads 4 --no-control-socket"
    ),
    "worker": (
        "{python} -m celery -A a4co worker --loglevel INFO --concurrency 2"
        " --without-gossip --without-mingle"
    ),
    "beat": "{python} -m celery -A a4co beat --loglevel INFO --schedule {datadir}/celerybeat-schedule",
    "consumers": "{python} manage.py run_consumers",
}


# What an app prints once it serves: `make run` reports the stack ready (state.json, its log) only
# when each of these has been printed and the web answers GET /readyz, so that a client started
# right then (a load test) meets consumers subscribed and a relay worker listening, not a
# backlog piling up behind their start. Beat has nothing to wait for.
READY_LINES = {
    "worker": r"celery@\S+ ready\.",
    "consumers": r"consumers running: ",
}
READY_PATH = {"web": "/readyz"}


def argv_extra(name: str) -> list[str]:
    """Arguments the environment adds to ``PROCESSES[name]``.

    ``DEVSTACK_WEB_ACCESS_LOG=1``: gunicorn logs a line per request. Off by default, like the
    Stripe stand-in's (``DEVSTACK_STRIPE_ACCESS_LOG``): under load a line per request is CPU
    of the web process and of the devstack that relays its output, counted in every benchmark
    (docs/benchmarks.md). Errors are logged either way (Django's own loggers).
    """
    if name == "web" and os.environ.get("DEVSTACK_WEB_ACCESS_LOG") == "1":
        return ["--access-logfile", "-"]
    return []
