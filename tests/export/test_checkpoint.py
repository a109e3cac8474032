"""Checkpoint round trips (pruned shapes, tied weights) and clear errors on bad files."""

from __future__ import annotations

import json
import os

import pytest
import torch
from torch import nn

import torchslim.zoo
from torchslim.core.errors import CheckpointError
from torchslim.export.checkpoint import load_checkpoint, read_structure, save_checkpoint

torch.set_num_threads(1)


class Net(nn.Module):
    def __init__(self, width: int = 16) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, 8, 3, stride=2, padding=1)
        self.fc = nn.Linear(8 * 4 * 4, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        return self.fc(torch.flatten(self.conv2(x), 1))


def _trained_net(seed: int = 0) -> Net:
    torch.manual_seed(seed)
    net = Net()
    net.train()
    with torch.no_grad():  # move BN running stats away from their init values
        for _ in range(3):
            net(torch.randn(8, 3, 8, 8) * 2 + 0.5)
    return net.eval()


def _prune_by_hand(net: Net, keep: list[int]) -> Net:
    """Replace conv1 + bn1 + conv2 by thinner ones keeping channels ``keep`` (what channel pruning does)."""
    idx = torch.tensor(keep)
    c1 = nn.Conv2d(3, len(keep), 3, padding=1, bias=False)
    c1.weight.data = net.conv1.weight.data[idx].clone()
    bn = nn.BatchNorm2d(len(keep))
    for name in ("weight", "bias", "running_mean", "running_var"):
        getattr(bn, name).data = getattr(net.bn1, name).data[idx].clone()
    bn.num_batches_tracked.data = net.bn1.num_batches_tracked.data.clone()
    c2 = nn.Conv2d(len(keep), 8, 3, stride=2, padding=1)
    c2.weight.data = net.conv2.weight.data[:, idx].clone()
    assert net.conv2.bias is not None
    c2.bias.data = net.conv2.bias.data.clone()
    net.conv1, net.bn1, net.conv2 = c1, bn, c2
    return net.eval()


def test_round_trip_of_pruned_model_with_skeleton_is_exact(tmp_path):
    pruned = _prune_by_hand(_trained_net(), keep=[0, 2, 3, 5, 7, 11, 12, 15])
    x = torch.randn(4, 3, 8, 8)
    ref = pruned(x)
    d = save_checkpoint(pruned, tmp_path / "ckpt", recipe={"stages": ["prune"]}, meta={"seed": 0})
    assert sorted(os.listdir(d)) == ["model.safetensors", "structure.json"]
    st = read_structure(d)
    assert st["modules"]["conv1"]["args"]["out_channels"] == 8
    assert st["recipe"] == {"stages": ["prune"]} and st["meta"] == {"seed": 0}

    loaded = load_checkpoint(d, model=Net())  # a fresh, unpruned skeleton
    assert loaded.conv1.out_channels == 8 and loaded.bn1.num_features == 8 and loaded.conv2.in_channels == 8
    # metric: exact equality (same weights, same kernels)
    assert torch.equal(loaded(x), ref)


def test_round_trip_through_zoo_spec_records_only_changed_modules(tmp_path, monkeypatch):
    def fake_build(name: str, **kwargs):
        assert name == "tiny-net"
        m = Net(**kwargs)
        m._torchslim_spec = {"name": name, "kwargs": kwargs}
        return m

    monkeypatch.setattr(torchslim.zoo, "build", fake_build, raising=False)
    monkeypatch.setattr(
        torchslim.zoo, "spec_of", lambda m: getattr(m, "_torchslim_spec", None), raising=False
    )
    net = _trained_net()
    net._torchslim_spec = {"name": "tiny-net", "kwargs": {"width": 16}}
    pruned = _prune_by_hand(net, keep=list(range(0, 16, 2)))
    d = save_checkpoint(pruned, tmp_path / "ckpt")
    st = read_structure(d)
    assert st["spec"] == {"name": "tiny-net", "kwargs": {"width": 16}}
    assert set(st["modules"]) == {"conv1", "bn1", "conv2"}  # fc is unchanged: not recorded
    loaded = load_checkpoint(d)  # no skeleton: rebuilt from the spec
    x = torch.randn(2, 3, 8, 8)
    assert torch.equal(loaded(x), pruned(x))  # metric: exact


def test_tied_weights_are_stored_once_and_restored(tmp_path):
    class Tied(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.emb = nn.Embedding(50, 12)
            self.out = nn.Linear(12, 50, bias=False)
            self.out.weight = self.emb.weight

        def forward(self, t: torch.Tensor) -> torch.Tensor:
            return self.out(self.emb(t))

    torch.manual_seed(1)
    m = Tied()
    d = save_checkpoint(m, tmp_path / "tied")
    assert read_structure(d)["aliases"] == {"out.weight": "emb.weight"}
    m2 = load_checkpoint(d, model=Tied())
    t = torch.randint(0, 50, (3, 4))
    assert torch.equal(m2(t), m(t))


def test_truncated_weights_file(tmp_path):
    d = save_checkpoint(_trained_net(), tmp_path / "ckpt")
    f = d / "model.safetensors"
    data = f.read_bytes()
    f.write_bytes(data[: len(data) - 100])
    with pytest.raises(CheckpointError, match=r"truncated.*save the model again"):
        load_checkpoint(d, model=Net())
    f.write_bytes(data[:5])
    with pytest.raises(CheckpointError, match="truncated"):
        load_checkpoint(d, model=Net())


def test_random_bytes_instead_of_weights(tmp_path):
    d = save_checkpoint(_trained_net(), tmp_path / "ckpt")
    (d / "model.safetensors").write_bytes(os.urandom(4096))
    with pytest.raises(CheckpointError, match="model.safetensors"):
        load_checkpoint(d, model=Net())


def test_structure_json_of_another_tool(tmp_path):
    d = save_checkpoint(_trained_net(), tmp_path / "ckpt")
    (d / "structure.json").write_text(json.dumps({"architectures": ["BertModel"], "model_type": "bert"}))
    with pytest.raises(CheckpointError, match="another tool"):
        load_checkpoint(d, model=Net())


def test_missing_or_invalid_structure_json(tmp_path):
    d = save_checkpoint(_trained_net(), tmp_path / "ckpt")
    (d / "structure.json").write_text('{"format": "torchslim.checkp')
    with pytest.raises(CheckpointError, match="not valid JSON"):
        load_checkpoint(d, model=Net())
    (d / "structure.json").unlink()
    with pytest.raises(CheckpointError, match="structure.json is missing"):
        load_checkpoint(d, model=Net())
    with pytest.raises(CheckpointError, match="not a directory"):
        load_checkpoint(tmp_path / "nope", model=Net())


def test_weights_that_do_not_fit_the_skeleton(tmp_path):
    d = save_checkpoint(_trained_net(), tmp_path / "ckpt")

    class Other(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv1 = nn.Conv2d(3, 16, 3, padding=1, bias=False)
            self.head = nn.Linear(4, 2)

    with pytest.raises(CheckpointError, match="does not have|do not fit"):
        load_checkpoint(d, model=Other())


def test_no_spec_and_no_skeleton_says_what_to_pass(tmp_path):
    d = save_checkpoint(_trained_net(), tmp_path / "ckpt")
    with pytest.raises(CheckpointError, match="model=<"):
        load_checkpoint(d)


def test_no_pickle_in_checkpoint(tmp_path):
    d = save_checkpoint(_trained_net(), tmp_path / "ckpt")
    blob = (d / "model.safetensors").read_bytes()
    assert not blob.startswith(b"PK") and b"\x80\x02" not in blob[:16]  # neither zip (torch.save) nor pickle
    header_len = int.from_bytes(blob[:8], "little")
    assert json.loads(blob[8 : 8 + header_len])["__metadata__"]["torchslim_format"] == "torchslim.checkpoint"
