"""zoo registry: names, build/load, spec round trip, clear errors."""

from __future__ import annotations

import json

import pytest
import torch

from torchslim import zoo
from torchslim.core.errors import ConfigError


def test_available():
    assert {"resnet-fmnist", "mobilenet_v2", "minilm-l6", "tweet-classifier"} <= set(zoo.available())


def test_unknown_name_lists_known():
    with pytest.raises(ConfigError, match="unknown model 'resnet99'.*resnet-fmnist"):
        zoo.build("resnet99")
    with pytest.raises(ConfigError, match="known models"):
        zoo.load("nope")


def test_spec_round_trip_rebuilds_same_architecture():
    torch.manual_seed(0)
    model = zoo.build("resnet-fmnist", widths=(16, 32, 64), blocks=(1, 2, 1))
    spec = zoo.spec_of(model)
    assert spec == {"name": "resnet-fmnist", "kwargs": {"widths": [16, 32, 64], "blocks": [1, 2, 1]}}
    spec = json.loads(json.dumps(spec))  # survives JSON (what a checkpoint stores)
    again = zoo.build(spec["name"], **spec["kwargs"])
    a, b = model.state_dict(), again.state_dict()
    assert list(a) == list(b) and all(a[k].shape == b[k].shape for k in a)
    again.load_state_dict(a)
    x = torch.randn(2, 1, 28, 28)
    torch.testing.assert_close(model.eval()(x), again.eval()(x), rtol=0, atol=0)


def test_spec_of_foreign_model_is_none():
    assert zoo.spec_of(torch.nn.Linear(2, 2)) is None


def test_bad_kwargs_and_unserialisable_kwargs():
    with pytest.raises(ConfigError, match="bad arguments for 'resnet-fmnist'"):
        zoo.build("resnet-fmnist", depth=50)
    with pytest.raises(ConfigError, match="not JSON-serialisable"):
        zoo.build("tweet-classifier", encoder=torch.nn.Identity())


def test_load_untrained_and_no_pretrained():
    m = zoo.load("resnet-fmnist", pretrained=False)
    assert zoo.spec_of(m) == {"name": "resnet-fmnist", "kwargs": {}}
    with pytest.raises(ConfigError, match="no pretrained weights"):
        zoo.load("tweet-classifier")


def test_load_mobilenet_records_spec():
    m = zoo.load("mobilenet_v2")
    assert zoo.spec_of(m) == {"name": "mobilenet_v2", "kwargs": {}} and not m.training


def test_import_is_light():
    import subprocess
    import sys

    code = "import sys, torchslim.zoo, torchslim.data; print('transformers' in sys.modules, 'onnxruntime' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.split()
    assert out == ["False", "False"]
