import json
import os
import sys
from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from infra.loadtest import LoadTest, parse_mix
from infra.machine import machine_line


class Command(BaseCommand):
    help = ("Drive the public HTTP API with a mixed order load, wait for every saga to end, and print sagas/s, "
            "POST->terminal latency percentiles, outcomes, errors and CPU seconds per process kind. Exits "
            "non-zero if an order ends in the wrong state or stock does not add up.")

    def add_arguments(self, parser):
        parser.add_argument("--orders", type=int, default=1000, help="How many orders (default 1000).")
        parser.add_argument("--concurrency", type=int, default=32,
                            help="Clients in flight at once (closed loop; default 32).")
        parser.add_argument("--rate", type=float, help="Open loop: orders per second, whatever the latency.")
        parser.add_argument("--mix", default="ok=85,decline=10,oos=5",
                            help="Order kinds and weights (default ok=85,decline=10,oos=5).")
        parser.add_argument("--seed", type=int, default=1, help="Seed of the order mix (default 1).")
        parser.add_argument("--url", default="", help="The API's base URL (default: from the devstack state file, "
                                                      "else http://127.0.0.1:$PORT or :8000).")
        parser.add_argument("--state", type=Path, default=Path(settings.BASE_DIR) / ".devstack" / "state.json",
                            help="Devstack state file, for CPU accounting of the stack's processes.")
        parser.add_argument("--timeout", type=float, default=300, help="Seconds to wait for the sagas to end.")
        parser.add_argument("--json", type=Path, metavar="FILE", dest="json_path",
                            help="Also write the figures as JSON here.")

    def handle(self, *args, orders, concurrency, rate, mix, seed, url, state, timeout, json_path: Path | None,
               **options):
        if orders < 1 or concurrency < 1 or (rate is not None and rate <= 0):
            raise CommandError("--orders and --concurrency must be >= 1 and --rate > 0")
        try:
            weights = parse_mix(mix)
        except ValueError as exc:
            raise CommandError(f"--mix: {exc}") from exc
        base_url = url or self._url_from_state(state)
        report = LoadTest(base_url=base_url, orders=orders, concurrency=concurrency, rate=rate, mix=weights,
                          seed=seed, state_path=state, timeout=timeout, progress=sys.stderr).run()
        out = self.stdout.write
        mode = f"open loop at {rate}/s" if rate else f"closed loop, concurrency {concurrency}"
        out(f"orders: {report.orders} ({mode}) in {report.seconds:.2f}s -> {report.sagas_per_second:.1f} sagas/s")
        out(f"POST->terminal latency: p50 {report.percentile(50):.0f} ms, p95 {report.percentile(95):.0f} ms, "
            f"p99 {report.percentile(99):.0f} ms")
        out("outcomes: " + ", ".join(f"{k} {v}" for k, v in sorted(report.outcomes.items())))
        out("errors: " + (", ".join(f"{k} {v}" for k, v in report.errors.items()) or "none"))
        out("CPU seconds: " + ", ".join(f"{k} {v:.2f}" for k, v in sorted(report.cpu_seconds.items()))
            + f" -> {report.cpu_ms_per_saga:.1f} CPU-ms per saga (stack, without the load generator)")
        if report.db_per_saga:
            out("PostgreSQL per saga: " + ", ".join(f"{v:,.1f} {k}" for k, v in report.db_per_saga.items()))
        if report.hops:
            out("hops (medians, ms; from the outbox and inbox timestamps): appended after the POST, "
                "then relay = appended -> published, delivery = published -> taken up by the consumer")
            width = max(len(f"{hop.subject} -> {hop.consumer}") for hop in report.hops)
            for hop in report.hops:
                out(f"  {hop.appended_ms:+7.1f}  {f'{hop.subject} -> {hop.consumer}':<{width}}  x{hop.count:<6} "
                    f"relay {hop.relay_ms:6.1f}  delivery {hop.delivery_ms:6.1f}")
        out(machine_line(report.machine))
        if json_path:
            json_path.write_text(json.dumps(report.as_dict(), indent=2))
        problems = report.wrong + report.stock_problems
        if report.errors:
            problems.append(f"{sum(report.errors.values())} request errors")
        if problems:
            for problem in problems[:20]:
                self.stderr.write(problem)
            raise CommandError(f"{len(report.wrong)} wrong outcomes, {len(report.stock_problems)} stock problems, "
                               f"{sum(report.errors.values())} errors")

    def _url_from_state(self, state: Path) -> str:
        if state.exists():
            data = json.loads(state.read_text())
            if data.get("web_url"):
                return data["web_url"]
        return f"http://127.0.0.1:{os.environ.get('PORT', '8000')}"
