"""Routes each service's models to its own database alias (settings.SERVICE_DATABASES).

Services never share tables: a model lives in exactly one database and migrates only there.
Relations across services are not allowed (services refer to each other by id only).

By default every alias points at the same database. Django records applied migrations per
database, so "migrates only on its own alias" would let `migrate --database default` mark the
inventory migrations applied without creating the tables. Hence the rule is stated on the
physical database: an app migrates on any alias that points at the same database as its own.
"""
from __future__ import annotations

from django.conf import settings


def alias_for_app(app_label: str) -> str:
    return settings.SERVICE_DATABASES.get(app_label, "default")


def same_database(alias_a: str, alias_b: str) -> bool:
    identities = settings.DATABASE_IDENTITIES
    return alias_a == alias_b or identities[alias_a] == identities[alias_b]


class ServiceRouter:
    def db_for_read(self, model, **hints):
        return alias_for_app(model._meta.app_label)

    def db_for_write(self, model, **hints):
        return alias_for_app(model._meta.app_label)

    def allow_relation(self, obj1, obj2, **hints):
        return alias_for_app(obj1._meta.app_label) == alias_for_app(obj2._meta.app_label)

    def allow_migrate(self, db, app_label, model_name=None, **hints):
        return same_database(db, alias_for_app(app_label))
