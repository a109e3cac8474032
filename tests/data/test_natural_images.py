"""Tests of torchslim.data.natural_images: the bundled photos load offline, crops have ImageNet
normalisation, are seeded, and calibration / evaluation crops come from disjoint image areas."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from torchslim.core.errors import ConfigError
from torchslim.data import natural_images as N

MEAN = torch.tensor(N.IMAGENET_MEAN).view(1, 3, 1, 1)
STD = torch.tensor(N.IMAGENET_STD).view(1, 3, 1, 1)


def _unnormalise(x: torch.Tensor) -> torch.Tensor:
    return x * STD + MEAN


@pytest.mark.parametrize("name", N.PHOTOS)
def test_bundled_photos_load_offline_as_rgb_uint8(name):
    img = N.load_photo(name)
    assert img.dtype == np.uint8
    assert img.ndim == 3 and img.shape[2] == 3
    assert min(img.shape[:2]) >= 300  # every bundled photo is at least 300 px on its shorter side
    assert 20 < float(img.mean()) < 235  # a real photo, not a blank array


def test_real_crops_shape_normalisation_and_seed():
    calib, ev = N.natural_image_crops(n_calib=14, n_eval=21, seed=3)
    assert calib.shape == (14, 3, 224, 224) and ev.shape == (21, 3, 224, 224)
    assert calib.dtype == torch.float32
    for x in (calib, ev):
        u = _unnormalise(x)
        # un-normalised pixels lie in [0, 1] (tolerance 1e-5 for float rounding)
        assert float(u.min()) >= -1e-5 and float(u.max()) <= 1 + 1e-5
        assert 0.15 < float(u.mean()) < 0.85
    again_c, again_e = N.natural_image_crops(n_calib=14, n_eval=21, seed=3)
    assert torch.equal(calib, again_c) and torch.equal(ev, again_e)  # exact reproducibility
    other, _ = N.natural_image_crops(n_calib=14, n_eval=1, seed=4)
    assert not torch.equal(other, calib)


def _fake_photos(monkeypatch, images: dict[str, np.ndarray]) -> None:
    monkeypatch.setattr(N, "load_photo", lambda name: images[name])


def test_region_split_is_disjoint(monkeypatch):
    # landscape 80x200: columns [0, 80) are black, [80, 200) white; calib_fraction 0.4 cuts at column 80,
    # portrait 200x80: rows [0, 80) black, the rest white. Calibration crops must be all black, evaluation
    # crops all white (bilinear resizing of a constant area is constant; tolerance 1e-5).
    land = np.full((80, 200, 3), 255, np.uint8)
    land[:, :80] = 0
    port = np.full((200, 80, 3), 255, np.uint8)
    port[:80] = 0
    _fake_photos(monkeypatch, {"skimage:a": land, "skimage:b": port})
    calib, ev = N.natural_image_crops(
        n_calib=12, n_eval=12, seed=0, size=32, photos=["skimage:a", "skimage:b"], calib_fraction=0.4
    )
    assert float(_unnormalise(calib).abs().max()) < 1e-5
    assert float((_unnormalise(ev) - 1).abs().max()) < 1e-5


def test_photo_split_uses_separate_photos(monkeypatch):
    imgs = {f"skimage:p{v}": np.full((60, 90, 3), v, np.uint8) for v in (0, 128, 255)}
    _fake_photos(monkeypatch, imgs)
    calib, ev = N.natural_image_crops(
        n_calib=6, n_eval=10, size=16, photos=list(imgs), split_by="photo", calib_photos=["skimage:p0"]
    )
    assert float(_unnormalise(calib).abs().max()) < 1e-5
    vals = torch.unique(torch.round(_unnormalise(ev) * 255))
    assert set(vals.tolist()) == {128.0, 255.0}


def test_split_region_partitions_every_pixel():
    img = np.arange(5 * 9 * 3, dtype=np.uint8).reshape(5, 9, 3)
    a, b = N._split_region(img, 0.4)
    assert np.array_equal(np.concatenate([a, b], axis=1), img)
    a, b = N._split_region(img.transpose(1, 0, 2), 0.4)
    assert np.array_equal(np.concatenate([a, b], axis=0), img.transpose(1, 0, 2))


def test_grayscale_and_alpha_become_rgb(monkeypatch):
    import skimage.data as skd

    monkeypatch.setattr(skd, "gray_test", lambda: np.full((20, 30), 7, np.uint8), raising=False)
    monkeypatch.setattr(skd, "rgba_test", lambda: np.full((20, 30, 4), 9, np.uint8), raising=False)
    assert N.load_photo("skimage:gray_test").shape == (20, 30, 3)
    rgba = N.load_photo("skimage:rgba_test")
    assert rgba.shape == (20, 30, 3) and int(rgba.max()) == 9


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"photos": ["astronaut"]}, "skimage:NAME"),
        ({"photos": ["skimage:no_such_image"]}, "no image"),
        ({"split_by": "random"}, "split_by"),
        ({"calib_fraction": 0.99}, "calib_fraction"),
        ({"n_calib": -1}, ">= 0"),
        ({"photos": []}, "empty"),
        ({"split_by": "photo", "calib_photos": ["skimage:nope"]}, "not in photos"),
    ],
)
def test_bad_input_errors_name_the_problem(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        N.natural_image_crops(n_calib=kwargs.pop("n_calib", 1), n_eval=1, **kwargs)
