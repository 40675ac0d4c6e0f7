"""Test settings: the real servers from `make test`, plus a faster password hasher."""
from a4co.settings.base import *  # noqa: F403

PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
