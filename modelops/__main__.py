"""``python -m modelops``: the same as the ``modelops`` console script."""

import sys

from modelops.cli import main

sys.exit(main())
