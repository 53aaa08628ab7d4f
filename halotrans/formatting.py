"""Numbers for reports and tables, and values made JSON-safe: one definition for every report writer.

    number(0.123456)          -> "0.1235"      (None -> "-")
    fixed(0.98765, ".3f")     -> "0.988"       (None or non-finite -> "–")
    percent(-0.0123)          -> "-1.23%"
    json.dumps(jsonable({"auc": np.float32(0.9), "x": float("nan")}))   -> '{"auc": 0.9..., "x": null}'
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np


def number(x: Any, digits: int = 4, none: str = "-") -> str:
    """A float to ``digits`` significant digits, anything else as ``str``; ``none`` for None."""
    if x is None:
        return none
    if isinstance(x, float):
        return f"{x:.{digits}g}"
    return str(x)


def fixed(x: float | None, spec: str = ".3f") -> str:
    """``format(x, spec)``, or an en dash for None or a non-finite value."""
    return "–" if x is None or not math.isfinite(x) else format(x, spec)


def percent(x: float | None, decimals: int = 2) -> str:
    """A signed fraction as a percentage (``-0.0123`` -> ``-1.23%``), or an en dash."""
    return "–" if x is None or not math.isfinite(x) else f"{100 * x:+.{decimals}f}%"


def jsonable(x: Any) -> Any:
    """Nested dicts/lists/arrays with NumPy scalars made plain, non-finite floats made None (JSON null)."""
    if isinstance(x, dict):
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return jsonable(x.tolist())
    if isinstance(x, (np.floating, float)):
        return float(x) if math.isfinite(x) else None
    if isinstance(x, np.integer):
        return int(x)
    return x
