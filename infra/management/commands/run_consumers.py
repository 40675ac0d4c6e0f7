import logging

from django.core.management.base import BaseCommand, CommandError

from infra.consumers import consumers_run_forever
from infra.nats import NatsServerTooOldError, NatsUnavailableError
from infra.streams import CONSUMER_NAMES, routes_named


class Command(BaseCommand):
    help = ("Run the durable JetStream consumers until SIGTERM/SIGINT; in-flight messages finish "
            "before exit. Consumers: " + ", ".join(CONSUMER_NAMES))

    def add_arguments(self, parser):
        parser.add_argument("--only", action="append", metavar="NAME", choices=CONSUMER_NAMES,
                            help="Run only this consumer (repeatable). Default: all of them.")

    def handle(self, *args, **options):
        logging.getLogger("infra").setLevel(logging.INFO)
        try:
            routes = routes_named(options["only"])
        except KeyError as exc:
            raise CommandError(f"unknown consumer: {exc}") from exc
        try:
            consumers_run_forever(routes)
        except (NatsServerTooOldError, NatsUnavailableError) as exc:
            raise CommandError(str(exc)) from exc
