"""The card, torch and the extension as the run's interpreter sees them, read before any step."""

from __future__ import annotations

import json
import shutil
import subprocess
from typing import Optional, Tuple

from . import SCRIPT
from .runner import Result, Runner, classify, tail
from .steps import Step

CARD_TIMEOUT_S = 60.0
CARD_PREFIX = "GPU-SMOKE-CARD "


def nvidia_smi() -> dict:
    """name, driver and memory from nvidia-smi (or why not)."""
    if shutil.which("nvidia-smi") is None:
        return {"error": "nvidia-smi not found"}
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total",
                              "--format=csv,noheader"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError) as exc:
        return {"error": f"nvidia-smi failed: {exc}"}
    if out.returncode != 0:
        return {"error": f"nvidia-smi exited {out.returncode}: {(out.stderr or out.stdout).strip()[:300]}"}
    name, driver, memory = (part.strip() for part in (out.stdout.splitlines()[0].split(",") + ["", ""])[:3])
    return {"name": name, "driver": driver, "memory": memory}


def read_card() -> dict:
    """The card, torch and the extension as this interpreter sees them (run in a subprocess: --card-json)."""
    card: dict = {"nvidia_smi": nvidia_smi()}
    try:
        import torch
    except Exception as exc:  # no torch, or a broken CUDA library under it
        card["no_gpu"] = f"torch cannot be imported ({type(exc).__name__}: {exc})"
        return card
    from fusedrnn import _extension
    from fusedrnn.bench import env as bench_env

    card["versions"] = bench_env.versions()
    card["extension"] = {"loaded": _extension.load() is not None, "has_cuda": _extension.has_cuda(),
                         "error": _extension.load_error()}
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        card["gpu"] = {"name": props.name, "capability": f"{props.major}.{props.minor}",
                       "multiprocessors": props.multi_processor_count,
                       "memory_gib": round(props.total_memory / 2 ** 30, 1), "count": torch.cuda.device_count()}
    else:
        card["no_gpu"] = "torch.cuda.is_available() is False" + (
            f" (this torch, {torch.__version__}, has no CUDA)" if torch.version.cuda is None else "")
    return card


def card_title(card: dict) -> str:
    """The card in one line, as a RESULTS.md heading names it."""
    gpu, smi = card.get("gpu"), card.get("nvidia_smi", {})
    if not gpu:
        return "no CUDA device"
    driver = f", driver {smi['driver']}" if smi.get("driver") else ""
    return f"{gpu['name']} ({gpu['memory_gib']} GiB, compute capability {gpu['capability']}, " \
           f"{gpu['multiprocessors']} SMs{driver})"


def nvidia_smi_line(card: dict) -> str:
    smi = card.get("nvidia_smi", {})
    if "name" not in smi:
        return f"nvidia-smi: {smi.get('error', 'not run')}"
    return f"nvidia-smi: {smi['name']}, {smi['memory']}, driver {smi['driver']}"


def extension_line(card: dict) -> str:
    ext = card.get("extension")
    if not ext:
        return "fusedrnn._C: not looked at"
    if not ext["loaded"]:
        return f"fusedrnn._C before the build: not loadable ({ext['error']})"
    return f"fusedrnn._C before the build: loaded, {'with' if ext['has_cuda'] else 'without'} its CUDA kernels"


def versions_line(card: dict) -> str:
    v = card.get("versions", {})
    return (f"torch {v.get('torch')} (CUDA {v.get('cuda')}, cuDNN {v.get('cudnn')}), Triton {v.get('triton')}, "
            f"Python {v.get('python')}, fusedrnn {v.get('git_commit')}")


def card_step(runner: Runner, python: str) -> Tuple[dict, Optional[Result]]:
    """The card, read in a subprocess under its own timeout; a Result only when that failed."""
    step = Step("card", [python, str(SCRIPT), "--card-json"], CARD_TIMEOUT_S)
    print(f"[card | {runner.elapsed():.0f} s] {step.command()}", flush=True)
    rc, output = runner.run(step, CARD_TIMEOUT_S)
    for line in reversed(output.splitlines()):
        if line.startswith(CARD_PREFIX):
            return json.loads(line[len(CARD_PREFIX):]), None
    status, _ = classify(step, rc, output, CARD_TIMEOUT_S)
    return ({"no_gpu": f"the card could not be read ({status})"},
            Result("card", status, True, 0.0, CARD_TIMEOUT_S, step.command(), "", tail(output)))
