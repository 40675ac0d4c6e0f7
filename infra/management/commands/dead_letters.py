from django.core.management.base import BaseCommand, CommandError

from a4co.errors import ApplicationError
from infra.deadletters import dead_letter_discard, dead_letter_models, dead_letter_redeliver


class Command(BaseCommand):
    help = "List, redeliver or discard dead letters (messages a consumer gave up on), across all services."

    def add_arguments(self, parser):
        sub = parser.add_subparsers(dest="action", required=True, metavar="list|redeliver|discard")
        listing = sub.add_parser("list", help="Show dead letters, newest failure first.")
        listing.add_argument("--status", default="OPEN", choices=["OPEN", "REDELIVERED", "DISCARDED", "ALL"],
                             help="Which ones (default OPEN).")
        listing.add_argument("--consumer", help="Only this consumer's.")
        redeliver = sub.add_parser("redeliver", help="Republish one under a new event id that records the original.")
        redeliver.add_argument("id", help="The dead letter's id (from `list`).")
        discard = sub.add_parser("discard", help="Close one without redelivering it.")
        discard.add_argument("id", help="The dead letter's id (from `list`).")
        discard.add_argument("--note", default="", help="Why (kept on the record).")
        for p in (redeliver, discard):
            p.add_argument("--by", default="manage.py", help="Who is acting (kept on the record).")

    def handle(self, *args, action: str, **options):
        try:
            if action == "list":
                self._list(options["status"], options.get("consumer"))
            elif action == "redeliver":
                new_id = dead_letter_redeliver(dead_letter_id=options["id"], by=options["by"])
                self.stdout.write(f"redelivered as event {new_id}")
            else:
                dead_letter_discard(dead_letter_id=options["id"], by=options["by"], note=options["note"])
                self.stdout.write("discarded")
        except ApplicationError as exc:
            raise CommandError(exc.message) from exc

    def _list(self, status: str, consumer: str | None) -> None:
        rows = []
        for model in dead_letter_models():
            query = model.objects.all()
            if status != "ALL":
                query = query.filter(status=status)
            if consumer:
                query = query.filter(consumer=consumer)
            rows.extend(query)
        rows.sort(key=lambda d: d.last_failed_at, reverse=True)
        if not rows:
            self.stdout.write("no dead letters")
            return
        for d in rows:
            self.stdout.write(f"{d.id}  {d.status:<11} {d.consumer:<24} {d.subject:<26} seq={d.stream_sequence} "
                              f"deliveries={d.deliveries} order={d.aggregate_id or '-'}\n    {d.error[:200]}")
