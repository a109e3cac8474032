"""Distillation methods beyond Hinton logit KD, each trained through :class:`torchslim.train.Trainer`.

* :mod:`~torchslim.distillation.methods.residual`: Residual KD (Gao et al. 2020): student + assistant that
  learns the residual between teacher and student features.
* :mod:`~torchslim.distillation.methods.hydra`: Hydra (Tran et al. 2020): a shared body with M heads
  distilled from an ensemble; head disagreement as an uncertainty score.
* :mod:`~torchslim.distillation.methods.regression`: KD for regression (Takamoto et al. 2020): teacher
  outlier rejection and a two-head student.

Import the submodules directly (this package imports nothing heavy), e.g.
``from torchslim.distillation.methods.hydra import HydraKD, HydraStudent, hydra_distill``.
"""

from __future__ import annotations
