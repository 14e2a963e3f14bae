"""The benchmark and correctness-check tools: ``python -m fusedrnn.bench`` and ``python -m fusedrnn.check``.

Modules:

``cli``      the ``python -m fusedrnn.bench`` command (``fusedrnn-bench``, ``make bench``): check, then time, against torch.nn
``check``    the ``python -m fusedrnn.check`` command: every available backend against the reference and torch.nn
``shapes``   benchmark shapes (presets or ``T,B,I,H``) and a layer's FLOP count
``rounds``   one group timed: torch.nn and each implementation in alternating rounds, and its rows
``overhead`` the per-call overhead group (cell steps, one-step stacks, an attention decoder)
``bf16``     the bfloat16 group (--groups bf16): against torch.nn bf16 and fusedrnn's own float32, with errors
``streaming`` the B=1 streaming group (--groups streaming): per-sequence and per-step latency
``stacks``   the 2-layer bidirectional group (--groups bidir), and the hook for a whole-stack path
``module_bench`` benches of whole modules (torch.nn's against fusedrnn's), checked then timed
``peaks``    the machine's float32 and bf16 matmul ceilings and its bf16 ISA flags
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
