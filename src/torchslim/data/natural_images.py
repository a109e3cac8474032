"""Real natural-image crops for ImageNet models, from photos bundled with scikit-image and scikit-learn.

No network: the photos ship inside the installed packages. :data:`PHOTOS` lists the RGB natural photos
used by default (all load offline here): scikit-image's ``astronaut``, ``chelsea`` (a cat), ``coffee``,
``rocket``, ``stereo_motorcycle`` (left view) and scikit-learn's ``china.jpg`` and ``flower.jpg``.
(``skimage.data.cat`` is the same photo as ``chelsea`` and is not used; ``eagle``, ``lily`` and ``skin``
need a download and are not used; microscopy / medical / synthetic images are not natural photos.)

Crops are square, of random side (``scale`` times the shorter side of the region they come from), at a
random position, randomly mirrored, resized to ``size`` (bilinear, antialiased) and normalised with the
ImageNet mean/std, so they are what a torchvision ImageNet model expects.

**Disjoint calibration / evaluation** (``split_by``):

* ``"region"`` (default): every photo is cut along its longer side; the first ``calib_fraction`` of it
  (the left part of a landscape photo, the top of a portrait one) gives calibration crops, the rest gives
  evaluation crops. No pixel is shared between the two sets; both see every photo.
* ``"photo"``: whole photos are assigned to one set (``calib_photos`` vs. the others), a stricter split.

Example::

    from torchslim.data.natural_images import natural_image_crops
    calib, evaluation = natural_image_crops(n_calib=256, n_eval=360, seed=0)
    print(calib.shape, evaluation.shape)      # [256, 3, 224, 224], [360, 3, 224, 224]
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

from torchslim.core.errors import ConfigError, DataSourceMissing

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "PHOTOS",
    "load_photo",
    "natural_image_crops",
    "random_crops",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

#: RGB natural photos bundled with scikit-image (``skimage:NAME``) and scikit-learn (``sklearn:FILE``).
PHOTOS: tuple[str, ...] = (
    "skimage:astronaut",
    "skimage:chelsea",
    "skimage:coffee",
    "skimage:rocket",
    "skimage:stereo_motorcycle",
    "sklearn:china.jpg",
    "sklearn:flower.jpg",
)

_INSTALL = {
    "skimage": "pip install scikit-image",
    "sklearn": "pip install scikit-learn",
}


def load_photo(name: str) -> np.ndarray:
    """The photo ``name`` (an entry of :data:`PHOTOS` form: ``"skimage:astronaut"``, ``"sklearn:china.jpg"``)
    as a uint8 ``[H, W, 3]`` array. Grayscale photos are repeated to 3 channels, an alpha channel dropped."""
    source, _, item = name.partition(":")
    if source not in _INSTALL or not item:
        raise ConfigError(
            f"photo {name!r}: expected 'skimage:NAME' or 'sklearn:FILE' (e.g. {PHOTOS[0]!r}, {PHOTOS[-1]!r})"
        )
    try:
        if source == "skimage":
            import skimage.data as skd

            fn = getattr(skd, item, None)
            if fn is None or not callable(fn):
                raise ConfigError(f"photo {name!r}: skimage.data has no image {item!r}")
            img = fn()
            if isinstance(img, tuple):  # stereo pairs: keep the left view
                img = img[0]
        else:
            from sklearn.datasets import load_sample_image

            img = load_sample_image(item)
    except ImportError as err:
        raise DataSourceMissing(
            f"photo {name!r} needs {source} ({err}). Install it with: {_INSTALL[source]}"
        ) from err
    except (AttributeError, FileNotFoundError, ValueError) as err:
        if isinstance(err, ConfigError):
            raise
        raise DataSourceMissing(f"photo {name!r} is not available offline ({err}); use another of {PHOTOS}") from err
    arr = np.asarray(img)
    if arr.dtype == np.bool_:
        arr = arr.astype(np.uint8) * 255
    if arr.dtype != np.uint8:
        raise ConfigError(f"photo {name!r} has dtype {arr.dtype}, expected uint8")
    if arr.ndim == 2:
        arr = np.repeat(arr[:, :, None], 3, axis=2)
    if arr.ndim != 3 or arr.shape[2] < 3:
        raise ConfigError(f"photo {name!r} has shape {arr.shape}, expected [H, W] or [H, W, 3|4]")
    return np.ascontiguousarray(arr[:, :, :3])


def _split_region(img: np.ndarray, calib_fraction: float) -> tuple[np.ndarray, np.ndarray]:
    h, w = img.shape[:2]
    if w >= h:
        cut = int(round(w * calib_fraction))
        return img[:, :cut], img[:, cut:]
    cut = int(round(h * calib_fraction))
    return img[:cut], img[cut:]


def random_crops(
    regions: Sequence[np.ndarray],
    n: int,
    generator: torch.Generator,
    size: int = 224,
    scale: tuple[float, float] = (0.35, 1.0),
    flip: bool = True,
) -> torch.Tensor:
    """``n`` crops ``[n, 3, size, size]`` (ImageNet-normalised float32) from ``regions`` (uint8 ``[H, W, 3]``),
    taken round-robin over the regions; each a random square of side ``scale * min(H, W)``."""
    if n < 0:
        raise ConfigError(f"number of crops must be >= 0, got {n}")
    if not regions:
        raise ConfigError("random_crops needs at least one image region")
    lo, hi = scale
    if not 0.0 < lo <= hi <= 1.0:
        raise ConfigError(f"scale must satisfy 0 < lo <= hi <= 1, got {scale}")
    tensors = [torch.from_numpy(np.ascontiguousarray(r)).permute(2, 0, 1).float().div_(255.0) for r in regions]
    for t in tensors:
        if min(t.shape[1:]) < 8:
            raise ConfigError(f"an image region of shape {tuple(t.shape[1:])} is too small to crop")
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    out = torch.empty(n, 3, size, size)
    for i in range(n):
        img = tensors[i % len(tensors)]
        h, w = img.shape[1:]
        frac = lo + (hi - lo) * float(torch.rand((), generator=generator))
        side = max(8, int(round(frac * min(h, w))))
        y = int(torch.randint(0, h - side + 1, (), generator=generator))
        x = int(torch.randint(0, w - side + 1, (), generator=generator))
        crop = img[:, y : y + side, x : x + side]
        if flip and bool(torch.rand((), generator=generator) < 0.5):
            crop = crop.flip(-1)
        crop = F.interpolate(crop[None], size=(size, size), mode="bilinear", align_corners=False, antialias=True)[0]
        out[i] = (crop.clamp_(0.0, 1.0) - mean) / std
    return out


def natural_image_crops(
    n_calib: int = 256,
    n_eval: int = 360,
    seed: int = 0,
    size: int = 224,
    photos: Sequence[str] = PHOTOS,
    split_by: Literal["region", "photo"] = "region",
    calib_fraction: float = 0.4,
    calib_photos: Sequence[str] | None = None,
    scale: tuple[float, float] = (0.35, 1.0),
) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded ``(calibration, evaluation)`` crops ``[N, 3, size, size]`` from disjoint image areas.

    ``split_by="region"``: each photo's first ``calib_fraction`` (along its longer side) feeds calibration,
    the rest evaluation. ``split_by="photo"``: ``calib_photos`` (default: the first third of ``photos``)
    feed calibration, the other photos evaluation. The same ``seed`` gives the same crops.
    """
    if n_calib < 0 or n_eval < 0:
        raise ConfigError(f"n_calib and n_eval must be >= 0, got {n_calib}, {n_eval}")
    if not photos:
        raise ConfigError("photos is empty: pass names such as 'skimage:astronaut' (see PHOTOS)")
    images = {p: load_photo(p) for p in photos}
    if split_by == "region":
        if not 0.05 <= calib_fraction <= 0.95:
            raise ConfigError(f"calib_fraction must be in [0.05, 0.95], got {calib_fraction}")
        parts = [_split_region(images[p], calib_fraction) for p in photos]
        calib_regions = [a for a, _ in parts]
        eval_regions = [b for _, b in parts]
    elif split_by == "photo":
        chosen = list(calib_photos) if calib_photos is not None else list(photos[: max(1, len(photos) // 3)])
        unknown = [p for p in chosen if p not in images]
        if unknown:
            raise ConfigError(f"calib_photos {unknown} are not in photos {list(photos)}")
        calib_regions = [images[p] for p in chosen]
        eval_regions = [images[p] for p in photos if p not in chosen]
        if not eval_regions:
            raise ConfigError("split_by='photo' left no photo for evaluation: pass fewer calib_photos")
    else:
        raise ConfigError(f"split_by must be 'region' or 'photo', got {split_by!r}")
    g_calib = torch.Generator().manual_seed(seed)
    g_eval = torch.Generator().manual_seed(seed + 1_000_003)
    calib = random_crops(calib_regions, n_calib, g_calib, size=size, scale=scale)
    evaluation = random_crops(eval_regions, n_eval, g_eval, size=size, scale=scale)
    return calib, evaluation
