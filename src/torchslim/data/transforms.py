"""Tensor transforms (no torchvision): normalisation, batch augmentation, ImageNet preprocessing.

Example::

    from torchslim.data.transforms import imagenet_preprocess, random_crop_flip
    x = imagenet_preprocess(pil_image)            # [1, 3, 224, 224] float32, ImageNet-normalised
    xb = random_crop_flip(batch, padding=2)       # augmented copy of a [N, C, H, W] batch
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "imagenet_preprocess",
    "normalize",
    "random_crop_flip",
]

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)


def normalize(x: torch.Tensor, mean: Sequence[float] | float, std: Sequence[float] | float) -> torch.Tensor:
    """``(x - mean) / std`` per channel of an ``[N, C, H, W]`` or ``[C, H, W]`` tensor (returns a new tensor)."""
    m = torch.as_tensor(mean, dtype=x.dtype, device=x.device)
    s = torch.as_tensor(std, dtype=x.dtype, device=x.device)
    if m.ndim == 1:
        m = m.view(-1, 1, 1)
        s = s.view(-1, 1, 1)
    return (x - m) / s


def random_crop_flip(
    x: torch.Tensor,
    padding: int = 2,
    flip: bool = True,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Random-translation (pad by ``padding`` with the border value, crop back) and horizontal flip of a
    batch ``[N, C, H, W]``; one random offset/flip per sample. Cheap: all on tensors, no Python loop
    over samples.
    """
    if x.ndim != 4:
        raise ValueError(f"random_crop_flip expects [N, C, H, W], got shape {tuple(x.shape)}")
    n, _, h, w = x.shape
    out = x
    if padding > 0:
        padded = F.pad(x, (padding, padding, padding, padding), mode="replicate")
        dy = torch.randint(0, 2 * padding + 1, (n,), generator=generator)
        dx = torch.randint(0, 2 * padding + 1, (n,), generator=generator)
        rows = (
            (dy.view(n, 1) + torch.arange(h).view(1, h))
            .view(n, 1, h, 1)
            .expand(n, x.shape[1], h, w + 2 * padding)
        )
        tmp = padded.gather(2, rows)
        cols = (dx.view(n, 1) + torch.arange(w).view(1, w)).view(n, 1, 1, w).expand(n, x.shape[1], h, w)
        out = tmp.gather(3, cols)
    if flip:
        mask = torch.rand(n, generator=generator) < 0.5
        if mask.any():
            out = out.clone() if out is x else out
            out[mask] = out[mask].flip(-1)
    return out


def imagenet_preprocess(
    image: Any,
    resize: int = 256,
    crop: int = 224,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> torch.Tensor:
    """Standard ImageNet evaluation preprocessing: resize the shorter side to ``resize`` (bilinear),
    centre-crop ``crop`` x ``crop``, scale to [0, 1], normalise with ImageNet mean/std.

    ``image``: a PIL image or an ``H x W x 3`` uint8 numpy array (e.g. ``skimage.data.chelsea()``).
    Returns ``[1, 3, crop, crop]`` float32.

    Example::

        from skimage import data
        x = imagenet_preprocess(data.chelsea())
    """
    from PIL import Image

    if isinstance(image, np.ndarray):
        if image.ndim == 2:
            image = np.stack([image] * 3, axis=-1)
        if image.dtype != np.uint8:
            raise ValueError(f"numpy images must be uint8 H x W x 3, got dtype {image.dtype}")
        image = Image.fromarray(image[..., :3])
    if not isinstance(image, Image.Image):
        raise TypeError(
            f"imagenet_preprocess expects a PIL image or uint8 numpy array, got {type(image).__name__}"
        )
    image = image.convert("RGB")
    w, h = image.size
    scale = resize / min(w, h)
    nw, nh = max(crop, round(w * scale)), max(crop, round(h * scale))
    image = image.resize((nw, nh), Image.Resampling.BILINEAR)
    left, top = (nw - crop) // 2, (nh - crop) // 2
    image = image.crop((left, top, left + crop, top + crop))
    x = torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1).to(torch.float32) / 255.0
    return normalize(x, mean, std).unsqueeze(0).contiguous()
