"""benchmarks/new_cells_bench.py runs: each timed implementation checked against the reference first (the
compiled equations included), then one table per family with every column, at a tiny shape and one round
(the figures themselves are the benchmark's business, benchmarks/RESULTS.md)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from fusedrnn import backends

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "new_cells_bench.py"


def _bench():
    spec = importlib.util.spec_from_file_location("new_cells_bench", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("new_cells_bench", module)
    spec.loader.exec_module(module)
    return module


@pytest.mark.skipif(backends.unavailable_reason("cpu") is not None,
                    reason="the benchmark times the cpu backend's kernels, which are not built here")
def test_tiny_run_checks_and_prints_every_column(capsys):
    assert _bench().main(["--cells", "indrnn,layer_norm_gru", "--shape", "4", "2", "3", "5", "--rounds", "1",
                          "--threads", "1", "--compiled"]) == 0
    out = capsys.readouterr().out
    for family in ("indrnn", "layer_norm_gru"):
        assert f"check {family}" in out
        assert f"{family}" in out and "compiled vs reference" in out
    header = [line for line in out.splitlines() if line.startswith("| mode |")]
    assert len(header) == 2 and all("compiled / cpu" in line and "reference / cpu" in line for line in header)
    rows = [line for line in out.splitlines() if line.startswith(("| inference", "| training"))]
    assert len(rows) == 4 and all(line.count("|") == header[0].count("|") for line in rows)


@pytest.mark.skipif(backends.unavailable_reason("cpu") is not None,
                    reason="the benchmark times the cpu backend's kernels, which are not built here")
def test_tiny_zoneout_run_checks_and_prints_every_column(capsys):
    assert _bench().main(["--zoneout", "0.1", "--shape", "4", "2", "3", "5", "--rounds", "1", "--threads", "1"]) == 0
    out = capsys.readouterr().out
    assert "check lstm zoneout=0.1" in out and "check gru" in out
    rows = [line for line in out.splitlines() if line.startswith("| lstm") or line.startswith("| gru")]
    assert len(rows) == 2 and all(line.count("|") == 7 for line in rows)


@pytest.mark.skipif(backends.unavailable_reason("cpu") is not None,
                    reason="the benchmark times the cpu backend's kernels, which are not built here")
def test_tiny_run_of_slstm_with_heads(capsys):
    """sLSTM against the reference and the LSTM, with heads; --heads must divide H."""
    bench = _bench()
    assert bench.main(["--cells", "slstm", "--shape", "4", "2", "3", "8", "--rounds", "1", "--threads", "1",
                       "--heads", "2"]) == 0
    out = capsys.readouterr().out
    assert "check slstm" in out and "heads=2" in out and "(baseline: lstm cpu)" in out
    rows = [line for line in out.splitlines() if line.startswith(("| inference", "| training"))]
    assert len(rows) == 2
    with pytest.raises(SystemExit):
        bench.main(["--cells", "slstm", "--shape", "4", "2", "3", "8", "--heads", "3"])
