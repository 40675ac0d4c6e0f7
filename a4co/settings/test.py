"""Test settings: the real servers from `make test`, plus a faster password hasher."""
from a4co.settings.base import *  # noqa: F403

PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
# Tests change users and tokens between requests and expect the next request to see it;
# tests/orders/test_api_representation.py turns the cache on to test it.
API_TOKEN_CACHE_SECONDS = 0
