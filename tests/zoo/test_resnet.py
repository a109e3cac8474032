"""Tests of the zoo ResNet: shapes, parameter count vs a hand count, thin (pruned-like) variants, and the
pretrained ``resnet-fmnist`` path with a tiny monkeypatched training budget / a fake cache."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from torchslim.core.errors import CheckpointError, ConfigError
from torchslim.zoo import registry
from torchslim.zoo import resnet as R


def test_forward_shapes_and_resolutions():
    model = R.ResNet().eval()
    x = torch.randn(4, 1, 28, 28)
    assert model(x).shape == (4, 10)
    seen = {}
    for name in ("stem", "layer1", "layer2", "layer3"):
        getattr(model, name).register_forward_hook(
            lambda m, i, o, name=name: seen.__setitem__(name, tuple(o.shape))
        )
    model(x)
    # the expensive resolution is brought down in the stem: stage 1 at 14x14
    assert seen == {
        "stem": (4, 32, 14, 14),
        "layer1": (4, 32, 14, 14),
        "layer2": (4, 64, 7, 7),
        "layer3": (4, 128, 4, 4),
    }


def test_param_count_matches_hand_count():
    # hand count (exact) for widths 32/64/128, blocks (1, 1, 2), 10 classes (BN: weight + bias per channel):
    stem = 1 * 32 * 9 + 2 * 32
    layer1 = 2 * (32 * 32 * 9 + 2 * 32)  # identity shortcut
    layer2 = 32 * 64 * 9 + 64 * 64 * 9 + 2 * 2 * 64 + (32 * 64 + 2 * 64)  # + 1x1 projection + BN
    layer3 = 64 * 128 * 9 + 128 * 128 * 9 + 2 * 2 * 128 + (64 * 128 + 2 * 128)
    layer3 += 2 * (128 * 128 * 9 + 2 * 128)  # second block, identity shortcut
    fc = 128 * 10 + 10
    hand = stem + layer1 + layer2 + layer3 + fc
    assert hand == 603_498
    assert sum(p.numel() for p in R.ResNet().parameters()) == hand
    assert R.resnet_param_count() == hand
    kw = dict(
        widths=(16, 32, 64, 128), blocks=(2, 1, 1, 2), strides=(1, 2, 2, 1), num_classes=7, in_channels=3
    )
    assert sum(p.numel() for p in R.ResNet(**kw).parameters()) == R.resnet_param_count(**kw)


def test_channel_counts_multiple_of_16():
    for m in R.ResNet().modules():
        if isinstance(m, nn.Conv2d) and m.in_channels > 1:
            assert m.in_channels % 16 == 0 and m.out_channels % 16 == 0


def test_forward_does_not_hardcode_channels():
    """Swap every conv/BN/linear for a thinner one (as a pruner would): forward must still run."""
    model = R.ResNet().eval()
    half = {32: 16, 64: 32, 128: 64}
    for mod in list(model.modules()):
        for cname, child in list(mod.named_children()):
            if isinstance(child, nn.Conv2d):
                cin = child.in_channels if child.in_channels == 1 else half[child.in_channels]
                new = nn.Conv2d(
                    cin, half[child.out_channels], child.kernel_size, child.stride, child.padding, bias=False
                )
                setattr(mod, cname, new)
            elif isinstance(child, nn.BatchNorm2d):
                setattr(mod, cname, nn.BatchNorm2d(half[child.num_features]))
            elif isinstance(child, nn.Linear):
                setattr(mod, cname, nn.Linear(half[child.in_features], child.out_features))
    assert model(torch.randn(2, 1, 28, 28)).shape == (2, 10)


def test_residual_block_is_identity_at_init():
    # ResNet zero-initialises each block's bn2: a block starts as relu(x + shortcut(x)) = relu(x) (identity shortcut)
    block = R.ResNet().layer1[0].eval()
    x = torch.randn(2, 32, 7, 7)
    torch.testing.assert_close(block(x), torch.relu(x), rtol=0, atol=0)


def test_bad_arguments():
    with pytest.raises(ConfigError, match="equal lengths"):
        R.ResNet(widths=(16, 32), blocks=(1,), strides=(1, 2))
    with pytest.raises(ConfigError, match="positive"):
        R.ResNet(widths=(0, 32, 64))


@pytest.fixture
def tmp_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCHSLIM_CACHE", str(tmp_path))
    return tmp_path


@pytest.fixture
def small_fmnist(monkeypatch):
    """Fashion-MNIST cut to 256 examples per split (keeps the training-path tests fast)."""
    import torchslim.data as data_pkg
    from torchslim.data.datasets import ImageDataset

    real = data_pkg.fashion_mnist

    def small(split="train", fallback=True):
        ds = real(split, fallback=fallback)
        return ImageDataset(ds.images[:256], ds.labels[:256], name=ds.name, classes=ds.classes)

    monkeypatch.setattr(data_pkg, "fashion_mnist", small)


def test_pretrained_path_trains_caches_and_reloads(tmp_cache, small_fmnist, monkeypatch):
    """First use trains (budget monkeypatched to 3 steps), saves atomically, logs; second use loads."""
    real_cfg = R.resnet_fmnist_train_config
    monkeypatch.setattr(
        R, "resnet_fmnist_train_config", lambda: real_cfg().model_copy(update={"max_steps": 3})
    )
    torch.manual_seed(123)
    model = registry.load("resnet-fmnist", pretrained=True, progress=False)
    weights, meta_path = R.resnet_fmnist_cache_paths()
    assert weights.is_file() and meta_path.is_file() and str(weights).startswith(str(tmp_cache))
    meta = json.loads(meta_path.read_text())
    assert meta["train_steps"] == 3 and meta["seed"] == 0 and "torch" in meta["versions"]
    assert 0.0 <= meta["test_accuracy"] <= 1.0
    assert not list(weights.parent.glob(".*.tmp"))  # no leftover temp files
    assert not model.training
    assert registry.spec_of(model) == {"name": "resnet-fmnist", "kwargs": {}}

    # second call: no training (would fail), exact same weights
    monkeypatch.setattr(
        R, "train_resnet_fmnist", lambda **k: (_ for _ in ()).throw(AssertionError("retrained"))
    )
    again = registry.load("resnet-fmnist", progress=False)
    for (k, a), (_, b) in zip(model.state_dict().items(), again.state_dict().items(), strict=True):
        assert torch.equal(a, b), k


def test_pretrained_training_is_deterministic(tmp_cache, small_fmnist):
    real_cfg = R.resnet_fmnist_train_config
    cfg = real_cfg().model_copy(update={"max_steps": 2})
    a, _ = R.train_resnet_fmnist(progress=False, config=cfg)
    b, _ = R.train_resnet_fmnist(progress=False, config=cfg)
    for (k, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert torch.equal(x, y), k


def test_pretrained_loads_fake_cache(tmp_cache):
    from safetensors.torch import save_file

    torch.manual_seed(5)
    ref = R.ResNet().eval()
    weights, meta_path = R.resnet_fmnist_cache_paths()
    weights.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, str(weights))
    meta_path.write_text(json.dumps({"test_accuracy": 0.5}))
    model = R.pretrained_resnet_fmnist(progress=False)
    x = torch.randn(3, 1, 28, 28)
    torch.testing.assert_close(model(x), ref(x), rtol=0, atol=0)  # exact: same weights


def test_corrupted_cache_gives_clear_error(tmp_cache):
    weights, meta_path = R.resnet_fmnist_cache_paths()
    weights.parent.mkdir(parents=True, exist_ok=True)
    weights.write_bytes(b"not a safetensors file")
    meta_path.write_text("{}")
    with pytest.raises(CheckpointError, match="Delete"):
        R.pretrained_resnet_fmnist(progress=False)


@pytest.mark.slow
def test_full_training_reaches_accuracy(tmp_cache):
    """The real first-use training (about 150 s uncontended on 2 cores): >= 91.5% test accuracy."""
    model = R.pretrained_resnet_fmnist(progress=False)
    meta = json.loads(R.resnet_fmnist_cache_paths()[1].read_text())
    assert meta["test_accuracy"] >= 0.915
    from torchslim.data import fashion_mnist

    test = fashion_mnist("test", fallback=False)
    assert abs(R.evaluate_top1(model, test.images, test.labels) - meta["test_accuracy"]) < 1e-9
