"""Developer stack for the a4co Django project.

``python -m devstack run``: embedded PostgreSQL, NATS JetStream, Redis and a
Stripe stand-in with data under ``<repo>/.devstack/``, the Django setup steps,
then web/worker/beat/consumers under a supervisor (see ``devstack.cli``).

``python -m devstack test [pytest args]``: the same servers on free ports in a
temporary directory, then pytest; everything is stopped and removed after.

``devstack.servers`` starts single servers (for tests that need extra ones).
For chaos tests, ``run`` takes ``--datadir``, ``--ports auto``,
``--stripe-proxy`` (``devstack.stripe_proxy``, a fault-injecting proxy in
front of the Stripe stand-in) and ``--no-seed``, and keeps
``<datadir>/state.json`` up to date (format: ``devstack.state``).
Nothing here uses the machine's own PostgreSQL/Redis/NATS: all servers come
from pip packages in the project's virtualenv.
"""
