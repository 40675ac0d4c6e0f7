from django.core.management.base import BaseCommand, CommandError

from infra.invariants import invariants_check, invariants_violations
from payments.stripe_gateway import GatewayUnavailableError


class Command(BaseCommand):
    help = ("Check the whole system's invariants (orders, sagas, stock, money at Stripe, outboxes, double "
            "application) and print a table, with open dead letters for information. Exit code 0 only when "
            "every violation count is 0.")

    def add_arguments(self, parser):
        parser.add_argument("--no-stripe", action="store_true", help="Skip the reconciliation against Stripe.")
        parser.add_argument("--outbox-grace", type=float, default=0, metavar="SECONDS",
                            help="Ignore outbox rows younger than this (checking a live system).")

    def handle(self, *args, no_stripe: bool, outbox_grace: float, **options):
        try:
            checks = invariants_check(stripe=not no_stripe, outbox_grace_seconds=outbox_grace)
        except GatewayUnavailableError as exc:
            raise CommandError(f"cannot reconcile with Stripe: {exc} (use --no-stripe to skip)") from exc
        width = max(len(c.name) for c in checks)
        self.stdout.write(f"{'check'.ljust(width)}  count  examples")
        for check in checks:
            line = f"{check.name.ljust(width)}  {check.count:>5}  {', '.join(check.examples)}"
            if check.informational:
                line += "  (informational)"
            self.stdout.write(self.style.ERROR(line) if check.count and not check.informational else line)
        total = invariants_violations(checks)
        if total:
            raise CommandError(f"{total} violation(s)")
        self.stdout.write(self.style.SUCCESS("all invariants hold"))
