"""Run store (SQLite), report rendering (markdown / HTML / JSON / rich) and plots.

Light to import: ``store``, ``render`` and ``plots`` load on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "Report": "torchslim.reports.schema",
    "StageMetrics": "torchslim.reports.schema",
    "RunStore": "torchslim.reports.store",
    "RunRow": "torchslim.reports.store",
    "write_report": "torchslim.reports.render",
    "print_table": "torchslim.reports.render",
    "to_markdown": "torchslim.reports.render",
    "to_html": "torchslim.reports.render",
    "to_json": "torchslim.reports.render",
}
_SUBMODULES = ("schema", "store", "render", "plots")

__all__ = sorted(_LAZY) + list(_SUBMODULES)


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        value: Any = importlib.import_module(f"torchslim.reports.{name}")
    elif name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
    else:
        raise AttributeError(f"module 'torchslim.reports' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
