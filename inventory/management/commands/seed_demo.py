from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand
from rest_framework.authtoken.models import Token

from inventory.selectors import product_get
from inventory.services import product_stock_set

DEMO_PRODUCTS = [
    ("aceite-oliva-1l", "Aceite de oliva virgen extra (1 l)", 100),
    ("miel-azahar-500g", "Miel de azahar (500 g)", 50),
    ("queso-curado", "Queso curado de oveja", 20),
    ("azafran-1g", "Azafrán (1 g)", 5),
]


class Command(BaseCommand):
    help = ("Seed a small demo catalogue and two API users (demo, ops with --staff rights). "
            "Idempotent: existing products keep their stock.")

    def handle(self, *args, **options):
        for product_id, name, quantity in DEMO_PRODUCTS:
            if product_get(product_id=product_id) is None:
                product_stock_set(product_id=product_id, name=name, available_quantity=quantity)
                self.stdout.write(f"product {product_id}: {quantity} in stock")
        users = get_user_model().objects
        for username, staff in (("demo", False), ("ops", True)):
            user, created = users.get_or_create(username=username, defaults={"is_staff": staff})
            if created:
                user.set_unusable_password()
                user.save()
            token, _ = Token.objects.get_or_create(user=user)
            self.stdout.write(f"API user {username}{' (staff)' if staff else ''}: Authorization: Token {token.key}")
