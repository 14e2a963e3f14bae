"""benchmarks/peer_bench.py runs at a tiny shape: where FlashRNN is installed, each cell checked against
FlashRNN's vanilla forward (the script asserts the same outputs) and timed; where it is not, the script
says so and returns 0 (a peer library is optional, not a dependency of the package)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "peer_bench.py"


def test_tiny_run(capsys):
    spec = importlib.util.spec_from_file_location("peer_bench", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.main(["--shape", "5", "2", "3", "4", "--rounds", "1", "--threads", "1"]) == 0
    out = capsys.readouterr().out
    if importlib.util.find_spec("flashrnn") is None:
        assert "FlashRNN is not installed" in out
    else:
        rows = [line for line in out.splitlines() if line.startswith(("| lstm", "| rnn", "| slstm"))]
        assert len(rows) == 3
