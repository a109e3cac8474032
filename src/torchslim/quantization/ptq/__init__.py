"""Post-training weight quantisers, one module per method: :mod:`.pwlq` (piecewise linear) and
:mod:`.multipoint` (multi-point). Importing this package is light (torch only).
"""

from __future__ import annotations

from torchslim.quantization.ptq.multipoint import MultiPoint, apply_multipoint, multipoint_quantize
from torchslim.quantization.ptq.pwlq import PWLQ, apply_pwlq, pwlq_quantize

__all__ = ["PWLQ", "MultiPoint", "apply_multipoint", "apply_pwlq", "multipoint_quantize", "pwlq_quantize"]
