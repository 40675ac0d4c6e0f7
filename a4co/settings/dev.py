"""Development settings: `make run` and manage.py on a laptop."""
from a4co.settings.base import *  # noqa: F403
from a4co.settings.base import env_bool

DEBUG = env_bool("DJANGO_DEBUG", True)
