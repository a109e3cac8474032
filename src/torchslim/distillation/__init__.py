"""Knowledge distillation: Hinton logit KD (``HintonKD``, ``distill``) and the loss functions.

Example:
    >>> from torchslim.distillation import HintonKD, distill, kd_loss
    >>> result = distill(student, teacher, train_set, HintonKD(temperature=4.0, alpha=0.9))  # doctest: +SKIP
"""

from __future__ import annotations

from torchslim.distillation.hinton import FeatureKD, FeatureKDLoss, HintonKD, distill, feature_distill
from torchslim.distillation.losses import kd_loss

__all__ = ["FeatureKD", "FeatureKDLoss", "HintonKD", "distill", "feature_distill", "kd_loss"]
