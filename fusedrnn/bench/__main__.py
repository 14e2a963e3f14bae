"""``python -m fusedrnn.bench``: runs :func:`fusedrnn.bench.cli.main`."""

import sys

from .cli import main

sys.exit(main())
