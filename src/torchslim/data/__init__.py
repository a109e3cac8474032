"""Offline data sets and transforms (see :mod:`torchslim.data.datasets`).

Example::

    from torchslim import data
    train = data.fashion_mnist("train")   # 60,000 x [1, 28, 28], normalised; labels int64
"""

from __future__ import annotations

from torchslim.data.datasets import (
    FASHION_MNIST_CLASSES,
    FASHION_MNIST_MEAN,
    FASHION_MNIST_STD,
    MNIST_MEAN,
    MNIST_STD,
    ImageDataset,
    TextDataset,
    clear_cache,
    csv_text,
    digits,
    fashion_mnist,
    health_tweets,
    image_folder,
    mnist,
    news_text,
)

__all__ = [
    "FASHION_MNIST_CLASSES",
    "FASHION_MNIST_MEAN",
    "FASHION_MNIST_STD",
    "MNIST_MEAN",
    "MNIST_STD",
    "ImageDataset",
    "TextDataset",
    "clear_cache",
    "csv_text",
    "digits",
    "fashion_mnist",
    "health_tweets",
    "image_folder",
    "mnist",
    "news_text",
]
