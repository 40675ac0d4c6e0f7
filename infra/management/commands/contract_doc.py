from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand

from infra.contract import contract_markdown


class Command(BaseCommand):
    help = "Write docs/events.md (the message contract) from the message classes and the consumer table."

    def add_arguments(self, parser):
        parser.add_argument("--stdout", action="store_true", help="Print it instead of writing the file.")

    def handle(self, *args, stdout: bool, **options):
        text = contract_markdown()
        if stdout:
            self.stdout.write(text, ending="")
            return
        path = Path(settings.BASE_DIR) / "docs" / "events.md"
        path.parent.mkdir(exist_ok=True)
        path.write_text(text)
        self.stdout.write(f"wrote {path}")
