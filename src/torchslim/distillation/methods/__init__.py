"""Distillation methods beyond Hinton logit KD, each trained through :class:`torchslim.train.Trainer`.

* :mod:`~torchslim.distillation.methods.residual`: Residual KD (Gao et al. 2020): student + assistant that
  learns the residual between teacher and student features; ``carve`` derives both from one given student.
* :mod:`~torchslim.distillation.methods.hydra`: Hydra (Tran et al. 2020): a shared body with M heads
  distilled from an ensemble; head disagreement as an uncertainty score.
* :mod:`~torchslim.distillation.methods.regression`: KD for regression (Takamoto et al. 2020): teacher
  outlier rejection and a two-head student.
* :mod:`~torchslim.distillation.methods.minilm`: MiniLM (Wang et al. 2020): last-layer self-attention and
  value-relation distillation.
* :mod:`~torchslim.distillation.methods.self_distill`: BERT self-ensemble / self-distillation (Xu et al. 2020):
  SDA (parameter-averaged teacher) and SDV (logit-voted teacher); ``SelfDistill``, ``SnapshotTeacher``,
  ``self_distill``.
* :mod:`~torchslim.distillation.methods.twinbert`: TwinBERT (Lu et al. 2020): twin encoders distilled from a
  cross-encoder, with cached document embeddings.
* :mod:`~torchslim.distillation.methods.lfme`: LFME (Xiang et al. 2020): experts on many/medium/few-shot
  splits distilled with self-paced expert weights and curriculum instance selection.

The three-part KD diagnostics of Tang et al. 2020 live in :mod:`torchslim.distillation.diagnostics`.

Import the submodules directly (this package imports nothing heavy), e.g.
``from torchslim.distillation.methods.hydra import HydraKD, HydraStudent, hydra_distill`` (regression:
``HydraRegressionStudent, hydra_regression_distill``).
"""

from __future__ import annotations
