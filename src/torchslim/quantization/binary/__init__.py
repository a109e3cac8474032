"""Binary and ternary quantisation (least-squares binary quantisation: :mod:`.lsbq`).

Importing this package is light; the method modules import only torch.
"""

from __future__ import annotations

from torchslim.quantization.binary.lsbq import LSBQ, apply_lsbq, lsbq_fake_quantize, lsbq_quantize
from torchslim.quantization.binary.qat import LSBQQAT, LSBQConv2d, LSBQLinear, prepare_lsbq_qat

__all__ = [
    "LSBQ",
    "LSBQQAT",
    "LSBQConv2d",
    "LSBQLinear",
    "apply_lsbq",
    "lsbq_fake_quantize",
    "lsbq_quantize",
    "prepare_lsbq_qat",
]
