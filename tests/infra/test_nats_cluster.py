"""The three-node NATS cluster of docs/deploy.md, for real: three nats-server processes started from
infra/nats/nats-cluster.conf, `setup_streams`' declarations with JETSTREAM_REPLICAS=3 and the
client's seed list and credentials from the settings; the relay keeps publishing with a node down."""
from __future__ import annotations

import asyncio
import os
import re
from pathlib import Path

import nats
import pytest

from devstack.process import ProcessSpec
from devstack.servers import free_port, start_spec, venv_bin
from infra import nats as nats_bus
from infra.relay import outbox_relay_drain
from infra.streams import ROUTES, STREAMS
from orders.models import OutboxMessage as OrdersOutbox
from tests.conftest import ALL_DATABASES
from tests.helpers import port_accepts, wait_until
from tests.infra.conftest import order_created

REPO = Path(__file__).resolve().parents[2]
PASSWORD = "cluster-test-pw"


@pytest.fixture
def cluster(tmp_path):
    """Three nodes on free ports; yields [(server, client_url)], stops them all."""
    client_ports, route_ports = [free_port() for _ in range(3)], [free_port() for _ in range(3)]
    routes = {f"NATS_ROUTE_{n + 1}": f"nats-route://127.0.0.1:{port}" for n, port in enumerate(route_ports)}
    nodes = []
    try:
        for n in range(3):
            workdir = tmp_path / f"nats-{n + 1}"
            workdir.mkdir()
            env = {"PATH": os.environ["PATH"], **routes, "NATS_SERVER_NAME": f"nats-{n + 1}",
                   "NATS_LISTEN": f"127.0.0.1:{client_ports[n]}", "NATS_HTTP": f"127.0.0.1:{free_port()}",
                   "NATS_STORE_DIR": str(workdir / "js"), "NATS_CLUSTER_LISTEN": f"127.0.0.1:{route_ports[n]}",
                   "NATS_USER": "a4co", "NATS_PASSWORD": PASSWORD}
            spec = ProcessSpec(name=f"nats-{n + 1}", argv=[str(venv_bin("nats-server")), "-c",
                                                           str(REPO / "infra/nats/nats-cluster.conf")],
                               cwd=str(workdir), env=env, port=client_ports[n],
                               url=f"nats://127.0.0.1:{client_ports[n]}",
                               probe=lambda p=client_ports[n]: port_accepts(p),
                               workdir=workdir)
            nodes.append((start_spec(spec, workdir / "nats.log"), spec.url))
        yield nodes
    finally:
        for server, _url in nodes:
            server.stop()


def stream_replicas(url: str, stream: str) -> tuple[int, int]:
    """(configured replicas, replicas the cluster reports besides the leader) of `stream`."""

    async def info():
        nc = await nats.connect(url, user="a4co", password=PASSWORD)
        try:
            found = await nc.jsm().stream_info(stream)
            return found.config.num_replicas, len(found.cluster.replicas or [])
        finally:
            await nc.close()

    return asyncio.run(info())


@pytest.mark.django_db(databases=ALL_DATABASES, transaction=True)
def test_r3_streams_on_the_documented_cluster_survive_a_node_down(cluster, settings):
    settings.NATS_URL = ",".join(url for _server, url in cluster)
    settings.NATS_USER, settings.NATS_PASSWORD = "a4co", PASSWORD
    settings.JETSTREAM_REPLICAS = 3
    settings.RELAY_PUBLISH_TIMEOUT_SECONDS = 2
    nats_bus.bridge_reset()
    try:
        def declared():  # the cluster elects its JetStream leader first: a few seconds
            try:
                return nats_bus.jetstream_ensure(STREAMS, [route.consumer for route in ROUTES])
            except nats_bus.NatsUnavailableError:
                return None

        wait_until(declared, timeout=30, interval=0.5, message="streams declared on the cluster")
        assert stream_replicas(cluster[0][1], "ORDERS") == (3, 2)

        order_created("cluster-1")
        assert outbox_relay_drain().published == 1
        cluster[1][0].stop()  # one node of three down: a majority remains
        order_created("cluster-2")
        wait_until(lambda: outbox_relay_drain().published or not OrdersOutbox.objects.filter(
            published_at__isnull=True).exists(), timeout=30, interval=0.5, message="a publish with a node down")
        assert not OrdersOutbox.objects.filter(published_at__isnull=True).exists()
        stored = wait_until(lambda: len(nats_bus.jetstream_messages("ORDERS")) == 2 and nats_bus.jetstream_messages(
            "ORDERS"), timeout=15, message="both messages stored")
        assert [m.subject for m in stored] == ["orders.created", "orders.created"]
    finally:
        nats_bus.bridge_reset()


def test_the_deploy_guide_shows_the_cluster_configuration_as_it_is():
    def settings_lines(text: str) -> list[str]:
        return [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]

    guide = (REPO / "docs/deploy.md").read_text()
    shown = re.search(r"```conf\n(.*?)```", guide, re.DOTALL).group(1)
    assert settings_lines(shown) == settings_lines((REPO / "infra/nats/nats-cluster.conf").read_text())
