"""Errors and tolerances: the error measure and the rule for each dtype (the package docstring)."""

from __future__ import annotations

from typing import Optional, Tuple

import torch


# ----------------------------------------------------------------------------
# Errors and tolerances
# ----------------------------------------------------------------------------

DOCUMENTED_TOLERANCE = {torch.float64: 1e-10, torch.float32: 1e-5}
#: unit roundoff of the 16-bit formats: the slack added to the 2x rule
UNIT_ROUNDOFF = {torch.float16: 2.0 ** -11, torch.bfloat16: 2.0 ** -8}
LOW_PRECISION = tuple(UNIT_ROUNDOFF)


def error(actual: torch.Tensor, expected: torch.Tensor) -> Tuple[float, float]:
    """(max abs error, max abs error / max |expected|); inf if ``actual`` has a NaN or inf."""
    if tuple(actual.shape) != tuple(expected.shape):
        raise ValueError(f"shape mismatch: got {tuple(actual.shape)}, expected {tuple(expected.shape)}")
    if actual.numel() == 0:
        return 0.0, 0.0
    actual, expected = actual.to(torch.float64), expected.to(actual.device, torch.float64)
    if not bool(torch.isfinite(actual).all()):
        return float("inf"), float("inf")
    max_abs = float((actual - expected).abs().max())
    scale = float(expected.abs().max())
    return max_abs, (max_abs / scale if scale > 0 else max_abs)


def tolerance(dtype: torch.dtype, baseline: Optional[float] = None) -> float:
    """Largest allowed relative error for ``dtype`` (module docstring), given a baseline's error."""
    if dtype in LOW_PRECISION:
        if baseline is None:
            raise ValueError(f"{dtype} needs a baseline error (the 2x rule)")
        return 2.0 * baseline + UNIT_ROUNDOFF[dtype]
    if dtype not in DOCUMENTED_TOLERANCE:
        raise ValueError(f"no tolerance for dtype {dtype}")
    bound = DOCUMENTED_TOLERANCE[dtype]
    return bound if baseline is None else max(bound, 2.0 * baseline)


def tolerance_rule(dtype: torch.dtype, baseline: Optional[str]) -> str:
    """The tolerance in words, for tables."""
    if dtype in LOW_PRECISION:
        return f"2x {baseline} {dtype_name(dtype)} + {UNIT_ROUNDOFF[dtype]:.0e}"
    bound = f"{DOCUMENTED_TOLERANCE[dtype]:.0e}"
    return bound if baseline is None else f"max({bound}, 2x {baseline} {dtype_name(dtype)})"


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")
