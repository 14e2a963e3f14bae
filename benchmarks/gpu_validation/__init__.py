"""The parts of ``benchmarks/gpu_smoke.py`` (``make gpu-smoke``, ``make gpu-check``), by concern.

* :mod:`.steps`: what runs: the pytest selections, the sanitized check, the benchmark, as :class:`.steps.Step`
  commands, and the two plans (the smoke run's, within :data:`.steps.SMOKE_BUDGET_S`, and the full one);
* :mod:`.runner`: running the steps in order, each in its own process group under its own timeout
  (:func:`.runner.allot` shares the budget), logged to ``steps.log``, each outcome classified;
* :mod:`.card`: the card, torch and the extension, read in a subprocess before anything else;
* :mod:`.report`: the verdict, ``report.md`` and ``report.json``.

The script (:data:`SCRIPT`) is the entry point and holds the command line; it puts this folder's parent on
``sys.path``, so the package imports as ``gpu_validation`` whichever way the script is started.
"""

from pathlib import Path

REPO = Path(__file__).resolve().parent.parent.parent
#: the entry point; its hidden modes (--card-json, --extension-check) are steps' commands
SCRIPT = REPO / "benchmarks" / "gpu_smoke.py"
