"""``python -m gaugeflow.cli ...`` is the ``gaugeflow`` command."""

import sys

from .commands import main

sys.exit(main())
