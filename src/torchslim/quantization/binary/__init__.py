"""Binary and ternary quantisation (least-squares binary quantisation: :mod:`.lsbq`).

Importing this package is light; the method modules import only torch.
"""

from __future__ import annotations

from torchslim.quantization.binary.lsbq import LSBQ, apply_lsbq, lsbq_fake_quantize, lsbq_quantize

__all__ = ["LSBQ", "apply_lsbq", "lsbq_fake_quantize", "lsbq_quantize"]
