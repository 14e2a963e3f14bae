"""The examples' ``--quick`` modes, each in its own process, so the examples cannot rot.

Each must exit cleanly within seconds of work, write its plots and its
``report.json``, and report numbers that make sense for what it shows.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest


EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def run_quick(name: str, out: Path, *options: str) -> dict:
    """Run ``examples/<name>.py --quick [options]`` on the CPU; return its report's results."""
    cmd = [sys.executable, str(EXAMPLES / f"{name}.py"), "--quick", "--device", "cpu", "--out", str(out), *options]
    # generous: the work is seconds, but importing torch on a loaded 2-core machine can take a while
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=EXAMPLES.parent)
    assert proc.returncode == 0, f"{name} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    report = json.loads((out / "report.json").read_text())
    assert report["settings"]["quick"] is True
    return report["results"]


def assert_written(out: Path, *files: str) -> None:
    for file in files:
        path = out / file
        assert path.is_file() and path.stat().st_size > 0, f"{path} was not written"


@pytest.mark.parametrize("cell", ["lstm", "lnlstm"])
def test_char_lm_quick(tmp_path, cell):
    """--cell lstm: fusedrnn.LSTM against torch.nn.LSTM; --cell lnlstm: fusedrnn.LayerNormLSTM against the same
    equations in plain PyTorch (the example's PlainLayerNormLSTM)."""
    results = run_quick("char_lm", tmp_path, "--cell", cell)
    assert_written(tmp_path, "loss.png", "sample.txt")
    assert results["cell"] == cell
    assert results["corpus characters"] > 10_000  # the repository's own text was found
    # the same initial weights and batches: equal functions follow the twin's curve step for step
    assert results["largest train-loss gap"] < 1e-4
    assert abs(results["fusedrnn final validation loss"] - results["twin final validation loss"]) < 1e-4
    # and they learn: the loss falls below uniform over the vocabulary
    assert results["fusedrnn final validation loss"] < math.log(results["vocabulary"])


def test_seq2seq_attention_quick(tmp_path):
    results = run_quick("seq2seq_attention", tmp_path)
    assert_written(tmp_path, "loss.png", "attention.png")
    assert 0.0 <= results["exact match"] <= 1.0 and 0.0 <= results["token accuracy"] <= 1.0
    assert results["final loss"] < math.log(13)  # better than uniform over the vocabulary: it learned something


def test_pyramid_encoder_quick(tmp_path):
    results = run_quick("pyramid_encoder", tmp_path)
    assert_written(tmp_path, "timing.png", "accuracy.png")
    length = results["sequence length"]
    assert results["plain output steps"] == length
    assert results["pyramid output steps"] == length // 4  # 3 levels of reduction 2
    assert results["pyramid steps per layer"] == str([length, length // 2, length // 4])
