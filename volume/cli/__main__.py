"""``python -m volume.cli``: the ``volume`` command."""

import sys

from . import main

sys.exit(main())
