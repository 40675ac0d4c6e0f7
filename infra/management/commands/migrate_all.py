from django.conf import settings
from django.core.management import call_command
from django.core.management.base import BaseCommand


class Command(BaseCommand):
    help = ("Apply migrations on every database alias (default, orders, inventory, payments). "
            "Each app's tables go only to its own alias; aliases sharing a database are fine.")

    def add_arguments(self, parser):
        parser.add_argument("--noinput", "--no-input", action="store_false", dest="interactive",
                            help="Do not prompt for anything.")

    def handle(self, *args, **options):
        for alias in settings.DATABASES:
            self.stdout.write(f"== migrate --database {alias}")
            call_command("migrate", database=alias, interactive=False, verbosity=options["verbosity"],
                         stdout=self.stdout)
