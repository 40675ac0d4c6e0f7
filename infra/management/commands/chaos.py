from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from infra.chaos import FAULTS, Chaos, ChaosError


class Command(BaseCommand):
    help = ("Drive a mixed order load (successes, declines, out of stock, cancels) against the running stack "
            "while injecting faults, wait for quiescence, then check every invariant. Exit code 0 only with "
            "zero violations. The stack must run under the devstack with --stripe-proxy for stripe faults.")

    def add_arguments(self, parser):
        parser.add_argument("--orders", type=int, default=200, help="How many orders (default 200).")
        parser.add_argument("--seed", type=int, default=1, help="Seed of every random choice (default 1).")
        parser.add_argument("--faults", default="all",
                            help=f"Comma-separated faults, 'all' or 'none' (all = {','.join(FAULTS)}).")
        parser.add_argument("--concurrency", type=int, default=16, help="Orders in flight at once (default 16).")
        parser.add_argument("--state", type=Path, default=Path(settings.BASE_DIR) / ".devstack" / "state.json",
                            help="The devstack state file of the stack under test (default .devstack/state.json).")
        parser.add_argument("--quiesce-timeout", type=float, default=600,
                            help="Seconds to wait for every order to end after the load (default 600).")

    def handle(self, *args, orders: int, seed: int, faults: str, concurrency: int, state: Path,
               quiesce_timeout: float, **options):
        if orders < 1 or concurrency < 1:
            raise CommandError("--orders and --concurrency must be at least 1")
        chosen = list(FAULTS) if faults == "all" else [] if faults == "none" else \
            [f.strip() for f in faults.split(",") if f.strip()]
        try:
            report = Chaos(orders=orders, seed=seed, faults=chosen, concurrency=concurrency, state_path=state,
                           quiesce_timeout=quiesce_timeout, out=self.stdout.write).run()
        except ChaosError as exc:
            raise CommandError(str(exc)) from exc
        out = self.stdout.write
        out("\nfaults injected:")
        for fault, count in sorted(report.faults.items()):
            out(f"  {fault:<24} {count}")
        out("orders by kind and outcome:")
        for kind, outcomes in sorted(report.outcomes.items()):
            out(f"  {kind:<8} " + ", ".join(f"{status} {n}" for status, n in sorted(outcomes.items())))
        out(f"load: {report.placed} orders in {report.load_seconds:.1f}s; "
            f"time to quiescence: {report.quiescence_seconds:.1f}s{'' if report.quiescent else ' (NOT quiescent)'}")
        for wrong in report.wrong_outcomes[:10]:
            out(self.style.ERROR(f"  wrong outcome: {wrong}"))
        out("invariants:")
        for check in report.checks:
            flag = " (informational)" if check.informational else ""
            line = f"  {check.name:<28} {check.count:>5}{flag}  {', '.join(check.examples[:3])}"
            out(self.style.ERROR(line) if check.count and not check.informational else line)
        if report.violations:
            raise CommandError(f"{report.violations} violation(s)")
        out(self.style.SUCCESS("chaos run: zero violations"))
