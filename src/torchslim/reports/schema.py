"""The figures a run produces: one :class:`StageMetrics` per pipeline stage, gathered in a :class:`Report`.

These plain dataclasses are the contract between the pipeline (which fills them), the run store (which
persists them) and the renderers (markdown / HTML / JSON / rich table).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any


@dataclass
class StageMetrics:
    """What one stage left behind, measured right after it ran."""

    name: str
    accuracy: float | None = None  # top-1 on held-out data, in [0, 1]
    params: int | None = None
    macs: int | None = None
    size_bytes: int | None = None  # bytes on disk of the stage's saved artifact
    latency_ms_torch: float | None = None  # median, eager PyTorch
    latency_ms_ort: float | None = None  # median, ONNX Runtime
    seconds: float | None = None  # wall time the stage itself took
    extra: dict[str, Any] = field(default_factory=dict)  # stage-specific figures (kept channels, parity, ...)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> StageMetrics:
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


@dataclass
class Report:
    """All stages of one run plus how they were measured (batch, threads, versions, machine)."""

    title: str
    stages: list[StageMetrics] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)  # batch, threads, versions, machine, recipe, seed

    def baseline(self) -> StageMetrics | None:
        return self.stages[0] if self.stages else None

    def speedup(self, stage: StageMetrics, runtime: str = "ort") -> float | None:
        """Latency of the first stage divided by this stage's, for ``runtime`` in {"ort", "torch"}."""
        base = self.baseline()
        attr = f"latency_ms_{runtime}"
        if base is None or getattr(base, attr) is None or getattr(stage, attr) in (None, 0):
            return None
        return getattr(base, attr) / getattr(stage, attr)

    def to_dict(self) -> dict[str, Any]:
        return {"title": self.title, "meta": self.meta, "stages": [s.to_dict() for s in self.stages]}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Report:
        return cls(
            title=d.get("title", ""),
            meta=d.get("meta", {}),
            stages=[StageMetrics.from_dict(s) for s in d.get("stages", [])],
        )
