"""``python -m gaugeflow.cli ...`` is the ``gaugeflow`` command."""

import sys

from . import main

sys.exit(main())
