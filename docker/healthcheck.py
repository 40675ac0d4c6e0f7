"""Container health probes for the a4co-saga image, which has no curl or wget.

Usage (the Dockerfile's HEALTHCHECK and docker-compose.yml's healthchecks call it):

    python docker/healthcheck.py http [PATH]     # GET http://127.0.0.1:8000/PATH (default /healthz)
    python docker/healthcheck.py process TEXT    # some process's command line contains TEXT

Exit status 0 means healthy, 1 unhealthy; the reason goes to stdout (`docker inspect` shows it).

`http` sends a Host header taken from ALLOWED_HOSTS, so the probe keeps passing when
ALLOWED_HOSTS no longer lists 127.0.0.1 (Django answers 400 to a host it does not allow).
`process` is for the processes that serve nothing over HTTP (Celery beat, the JetStream
consumers); it only says the process is there, not that it makes progress.
"""
from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request

PORT = 8000


def _host_header() -> str:
    for host in os.environ.get("ALLOWED_HOSTS", "").split(","):
        host = host.strip()
        if not host:
            continue
        if host == "*":
            return "localhost"
        # ".example.com" allows example.com and its subdomains.
        return host.lstrip(".")
    return "localhost"


def check_http(path: str = "/healthz") -> int:
    request = urllib.request.Request(f"http://127.0.0.1:{PORT}{path}", headers={"Host": _host_header()})
    try:
        with urllib.request.urlopen(request, timeout=4) as response:
            status = response.status
    except urllib.error.HTTPError as exc:
        status = exc.code
    except OSError as exc:
        print(f"unhealthy: {path}: {exc}")
        return 1
    if status != 200:
        print(f"unhealthy: {path} answered HTTP {status}")
        return 1
    return 0


def check_process(text: str) -> int:
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue  # exited meanwhile, or not ours to read
        # Skip this probe itself (and a `sh -c` wrapping it), which also mention TEXT.
        if text in cmdline and "healthcheck.py" not in cmdline:
            return 0
    print(f"unhealthy: no process running {text!r}")
    return 1


def main(argv: list[str]) -> int:
    if argv[:1] == ["http"] and len(argv) <= 2:
        return check_http(*argv[1:])
    if argv[:1] == ["process"] and len(argv) == 2:
        return check_process(argv[1])
    print(__doc__.split("\n\n")[1], file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
