"""Entry point: ``python -m devstack run|test`` (see :mod:`devstack.cli`)."""

import sys

from .cli import main

sys.exit(main())
