from django.core.management.base import BaseCommand, CommandError

from infra.nats import NatsServerTooOldError, NatsUnavailableError, jetstream_ensure
from infra.streams import ROUTES, STREAMS


class Command(BaseCommand):
    help = ("Create or update the JetStream streams (ORDERS, PAYMENTS, INVENTORY) and the durable "
            "consumers, idempotently. Refuses NATS servers older than 2.10.")

    def handle(self, *args, **options):
        try:
            report = jetstream_ensure(STREAMS, [route.consumer for route in ROUTES])
        except (NatsServerTooOldError, NatsUnavailableError) as exc:
            raise CommandError(str(exc)) from exc
        for line in report:
            self.stdout.write(line)
        self.stdout.write(self.style.SUCCESS("JetStream ready"))
