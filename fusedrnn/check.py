"""``python -m fusedrnn.check``: the old name of :mod:`fusedrnn.bench.check`, kept for users and scripts.

The checker lives in the tools package now; this name still runs it
(``python -m fusedrnn.check ...``, ``make``'s and the GPU smoke's command
lines) and still imports it (``from fusedrnn import check``).  Nothing in
the library imports this module.
"""

import sys

from .bench.check import *  # noqa: F401,F403  (the old module's names)
from .bench.check import main

if __name__ == "__main__":
    sys.exit(main())
