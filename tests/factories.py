"""factory_boy factories for the domain models (each saves to its own service database)."""
from __future__ import annotations

import factory

from inventory.models import Product


class ProductFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Product
        django_get_or_create = ("product_id",)

    product_id = factory.Sequence(lambda n: f"product-{n}")
    name = factory.LazyAttribute(lambda o: f"Product {o.product_id}")
    available_quantity = 10
    reserved_quantity = 0
    sold_quantity = 0
    stocked_quantity = factory.LazyAttribute(lambda o: o.available_quantity + o.reserved_quantity + o.sold_quantity)


def order_body(*items, **extra) -> dict:
    """A POST /orders body; items are (productId, quantity, unitPrice) triples."""
    items = items or (("product-a", 1, "10.00"),)
    return {"customerId": "customer-1",
            "items": [{"productId": p, "quantity": q, "unitPrice": price} for p, q, price in items], **extra}
