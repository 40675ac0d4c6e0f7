from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError
from rest_framework.authtoken.models import Token


class Command(BaseCommand):
    help = ("Print the API token of USERNAME (creating the user and the token if needed). "
            "Only the key is printed, so `TOKEN=$(manage.py api_token alice)` works.")

    def add_arguments(self, parser):
        parser.add_argument("username", help="The API user; created without a password if missing.")
        parser.add_argument("--staff", action="store_true",
                            help="Make the user staff (reads every order, manages stock and sagas).")
        parser.add_argument("--rotate", action="store_true",
                            help="Replace the user's token with a new one: the old key stops working within "
                                 "API_TOKEN_CACHE_SECONDS (each web process keeps a lookup that long).")

    def handle(self, *args, username: str, staff: bool, rotate: bool = False, **options):
        username = username.strip()
        if not username or len(username) > 150:
            raise CommandError("USERNAME must be 1 to 150 characters")
        user, created = get_user_model().objects.get_or_create(username=username)
        if created:
            user.set_unusable_password()
        if staff and not user.is_staff:
            user.is_staff = True
        user.save()
        if rotate:
            Token.objects.filter(user=user).delete()
        token, _ = Token.objects.get_or_create(user=user)
        self.stdout.write(token.key)
