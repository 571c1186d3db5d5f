"""``python -m mixbench``: the same as the ``mixbench`` command."""

import sys

from mixbench.cli import main

sys.exit(main())
