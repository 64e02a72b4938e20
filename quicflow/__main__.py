"""``python -m quicflow``: the ``quicflow`` command (see `quicflow.cli`)."""

import sys

from .cli import main

sys.exit(main())
