"""Where and with what a benchmark ran: machine, library versions, git commit.

Recorded with every result so figures from different runs and machines can be
compared (and never mistaken for each other).
"""

from __future__ import annotations

import os
import platform
import subprocess
from importlib import metadata
from typing import Dict, Optional

import torch


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (Linux), else what platform knows."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def machine(device: torch.device, threads: int) -> Dict[str, object]:
    info: Dict[str, object] = {
        "cpu_model": cpu_model(),
        "logical_cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "torch_threads": threads,
        "hostname": platform.node(),
        "platform": platform.platform(),
        "device": str(device),
        "gpu": None,
        "load_average_1min": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info["gpu"] = props.name
        info["gpu_memory_gib"] = round(props.total_memory / 2 ** 30, 1)
        info["gpu_capability"] = f"{props.major}.{props.minor}"
    return info


def contention_warning(info: Dict[str, object]) -> Optional[str]:
    """A warning when other processes already keep the cores busy (CPU figures are then unreliable)."""
    load, cores = info.get("load_average_1min"), info.get("usable_cores")
    if load is None or not cores or load < 0.5 * cores:
        return None
    return (f"load average {load} on {cores} cores before the run: other processes compete for the CPU, "
            "so CPU timings (multi-threaded ones most) are unreliable")


def _package_version(name: str) -> Optional[str]:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def git_commit() -> Optional[str]:
    """The commit of the fusedrnn checkout, with ``-dirty`` when it has changes; None outside git."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        commit = subprocess.run(["git", "-C", root, "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", root, "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return commit + ("-dirty" if dirty else "")


def versions() -> Dict[str, Optional[str]]:
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "triton": _package_version("triton"),
        "fusedrnn": _package_version("fusedrnn"),
        "git_commit": git_commit(),
        "cuda": torch.version.cuda,
        "cudnn": str(torch.backends.cudnn.version()) if torch.cuda.is_available() else None,
        "mkldnn": str(torch.backends.mkldnn.is_available()),
        "mkl": str(torch.backends.mkl.is_available()),
    }
