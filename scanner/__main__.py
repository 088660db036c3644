"""``python -m scanner``: the ``danescan`` command (worker processes are started this way)."""

import sys

from scanner.cli import main

sys.exit(main())
