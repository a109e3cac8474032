"""Model zoo: small CNNs for 28x28 images, MobileNetV2 (ImageNet), MiniLM-L6 (sentence embeddings).

Light to import: the model modules (and transformers) load only when a model is built.

Example::

    from torchslim import zoo
    model = zoo.load("resnet-fmnist")          # trained on first use (~2-3 min on 2 cores), then cached
    mnv2 = zoo.load("mobilenet_v2")            # torchvision ImageNet weights, offline
    enc = zoo.load("minilm-l6")                # all-MiniLM-L6-v2 sentence encoder
    zoo.spec_of(model)                          # {'name': 'resnet-fmnist', 'kwargs': {}}
"""

from __future__ import annotations

from torchslim.zoo.registry import ZooEntry, available, build, load, register, spec_of

__all__ = ["ZooEntry", "available", "build", "load", "register", "spec_of"]
