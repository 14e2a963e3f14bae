"""The benchmark and correctness-check tools: ``python -m fusedrnn.bench`` and ``python -m fusedrnn.check``.

Modules:

``cli``      the ``python -m fusedrnn.bench`` command (``fusedrnn-bench``, ``make bench``): check, then time, against torch.nn
``check``    the ``python -m fusedrnn.check`` command: every available backend against the reference and torch.nn
``shapes``   benchmark shapes (presets or ``T,B,I,H``) and a layer's FLOP count
``rounds``   one group timed: torch.nn and each implementation in alternating rounds, and its rows
``overhead`` the per-call overhead group (cell steps, one-step stacks, an attention decoder)
``timing``   timing and memory measurement, the same for every implementation
``report``   the figures as a table, JSON and CSV
``plot``     the speedup plot (matplotlib, optional)
``console``  tables and progress (rich when installed, plain text otherwise)
``env``      the machine, library versions and git commit a run is recorded with

Imports go one way: these modules use fusedrnn's library modules, and the
library never imports this package (``import fusedrnn`` loads none of it).
rich and matplotlib are imported only where they are used, so the package
imports without them.
"""

from typing import Optional, Sequence


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``python -m fusedrnn.bench`` (the ``fusedrnn-bench`` script): see :mod:`fusedrnn.bench.cli`."""
    from .cli import main as cli_main

    return cli_main(argv)
