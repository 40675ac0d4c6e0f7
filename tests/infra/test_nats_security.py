"""NATS credentials and TLS from the settings, against real nats-server processes started with
authentication or TLS (certificates made here with the openssl CLI). Credentials never show in
an error message."""
from __future__ import annotations

from pathlib import Path

import pytest

from devstack.process import ProcessSpec
from devstack.servers import free_port, start_spec, venv_bin
from infra.nats import NatsUnavailableError, jetstream_ensure, nats_ping
from infra.streams import ROUTES, STREAMS
from tests.helpers import port_accepts
from tests.tls import certificates_make

PASSWORD = "pw-9f8e7d-never-logged"
TOKEN = "tok-1a2b3c-never-logged"


@pytest.fixture
def nats_with(tmp_path):
    """start(config_block) -> nats://127.0.0.1:PORT of a nats-server with JetStream and that block."""
    servers = []

    def start(block: str) -> str:
        port = free_port()
        workdir = tmp_path / f"nats-{port}"
        workdir.mkdir()
        conf = workdir / "nats.conf"
        conf.write_text(f'listen: 127.0.0.1:{port}\njetstream {{ store_dir: "{workdir}/js" }}\n{block}\n')
        spec = ProcessSpec(name="nats-secured", argv=[str(venv_bin("nats-server")), "-c", str(conf)],
                           cwd=str(workdir), port=port, url=f"nats://127.0.0.1:{port}",
                           probe=lambda: port_accepts(port), workdir=workdir)
        servers.append(start_spec(spec, workdir / "nats.log"))
        return spec.url

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def nats_settings(settings):
    settings.NATS_CONNECT_TIMEOUT_SECONDS = 2
    for name in ("NATS_USER", "NATS_PASSWORD", "NATS_TOKEN", "NATS_CREDS_FILE", "NATS_TLS_CA_FILE",
                 "NATS_TLS_CERT_FILE", "NATS_TLS_KEY_FILE"):
        setattr(settings, name, "")
    return settings


def refused() -> str:
    with pytest.raises(NatsUnavailableError) as caught:
        nats_ping(timeout=2)
    return str(caught.value)


class TestAuthentication:
    def test_user_and_password(self, nats_with, nats_settings):
        nats_settings.NATS_URL = nats_with(f'authorization {{ user: a4co, password: "{PASSWORD}" }}')
        assert "uthorization" in refused()  # no credentials: "Authorization Violation"
        nats_settings.NATS_USER, nats_settings.NATS_PASSWORD = "a4co", PASSWORD
        assert nats_ping(timeout=2).startswith("2.")
        # setup_streams' (and so the relay's and the consumers') connection authenticates too.
        assert any("stream ORDERS" in line for line in jetstream_ensure(STREAMS, [r.consumer for r in ROUTES]))
        nats_settings.NATS_PASSWORD = PASSWORD + "-wrong"
        assert PASSWORD not in refused()

    def test_credentials_in_the_url_are_used_and_never_shown(self, nats_with, nats_settings):
        url = nats_with(f'authorization {{ user: a4co, password: "{PASSWORD}" }}')
        nats_settings.NATS_URL = url.replace("nats://", f"nats://a4co:{PASSWORD}@")
        assert nats_ping(timeout=2)
        nats_settings.NATS_URL = url.replace("nats://", f"nats://a4co:{PASSWORD}-wrong@")
        message = refused()
        assert PASSWORD not in message and "nats://127.0.0.1:" in message

    def test_token(self, nats_with, nats_settings):
        nats_settings.NATS_URL = nats_with(f'authorization {{ token: "{TOKEN}" }}')
        refused()
        nats_settings.NATS_TOKEN = TOKEN
        assert nats_ping(timeout=2)
        nats_settings.NATS_TOKEN = TOKEN + "-wrong"
        assert TOKEN not in refused()


@pytest.fixture(scope="module")
def certificates(tmp_path_factory) -> Path:
    return certificates_make(tmp_path_factory.mktemp("tls"))


class TestTls:
    def test_server_tls_verified_against_the_configured_ca(self, nats_with, nats_settings, certificates):
        d = certificates
        nats_settings.NATS_URL = nats_with(f'tls {{ cert_file: "{d}/server.pem", key_file: "{d}/server.key" }}')
        assert "CERTIFICATE_VERIFY_FAILED" in refused()  # not signed by a CA the system trusts
        nats_settings.NATS_TLS_CA_FILE = str(d / "ca.pem")
        assert nats_ping(timeout=2)
        assert jetstream_ensure(STREAMS, [])

    def test_mutual_tls_presents_the_client_certificate(self, nats_with, nats_settings, certificates):
        d = certificates
        nats_settings.NATS_URL = nats_with(
            f'tls {{ cert_file: "{d}/server.pem", key_file: "{d}/server.key", ca_file: "{d}/ca.pem", verify: true }}')
        nats_settings.NATS_TLS_CA_FILE = str(d / "ca.pem")
        refused()  # no client certificate: the server hangs up
        nats_settings.NATS_TLS_CERT_FILE, nats_settings.NATS_TLS_KEY_FILE = str(d / "client.pem"), str(d / "client.key")
        assert nats_ping(timeout=2)
