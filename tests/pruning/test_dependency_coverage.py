"""Coverage of structured pruning across architectures: CNNs through ``prune_`` (dependency groups with
residual adds, depthwise convs, concatenation, GroupNorm, ConvTranspose) and transformers through
``prune_heads_`` / ``prune_ffn_``. For every model: output shape unchanged, forward runs, fewer params,
ONNX export + ONNX Runtime parity (allclose atol = rtol = 1e-4). Plus exactness of concat pruning."""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from torchslim.pruning import ChannelPrune, count_params, prune_
from torchslim.pruning.structured import build_groups

torch.set_num_threads(1)
transformers = pytest.importorskip("transformers")


class UNetish(nn.Module):
    """Two-level U-Net: skip connection concatenated with the upsampled path along channels."""

    def __init__(self) -> None:
        super().__init__()
        self.enc1 = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.enc2 = nn.Sequential(nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.GroupNorm(32, 32), nn.ReLU())
        self.up = nn.ConvTranspose2d(32, 16, 2, stride=2)
        self.dec = nn.Sequential(nn.Conv2d(32, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.head = nn.Conv2d(16, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.enc1(x)
        u = F.relu(self.up(self.enc2(a)))
        return self.head(self.dec(torch.cat([u, a], dim=1)))


class _HF(nn.Module):
    """Wraps a Hugging Face model so it maps one tensor to ``last_hidden_state``."""

    def __init__(self, model: nn.Module, key: str) -> None:
        super().__init__()
        self.model, self.key = model, key

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(**{self.key: x}).last_hidden_state  # type: ignore[no-any-return]


def _bert() -> tuple[nn.Module, torch.Tensor]:
    cfg = transformers.BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                  intermediate_size=64, vocab_size=100, max_position_embeddings=32)
    cfg._attn_implementation = "eager"
    return _HF(transformers.BertModel(cfg, add_pooling_layer=False), "input_ids"), torch.randint(0, 100, (2, 9))


def _gpt2() -> tuple[nn.Module, torch.Tensor]:
    cfg = transformers.GPT2Config(n_embd=32, n_layer=2, n_head=4, vocab_size=100, n_positions=32,
                                  bos_token_id=0, eos_token_id=0)
    cfg._attn_implementation = "eager"
    return _HF(transformers.GPT2Model(cfg), "input_ids"), torch.randint(0, 100, (2, 9))


def _vit() -> tuple[nn.Module, torch.Tensor]:
    cfg = transformers.ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                                 image_size=16, patch_size=8, num_channels=3)
    cfg._attn_implementation = "eager"
    return _HF(transformers.ViTModel(cfg, add_pooling_layer=False), "pixel_values"), torch.randn(2, 3, 16, 16)


def _resnet() -> tuple[nn.Module, torch.Tensor]:
    from torchslim import zoo

    return zoo.build("resnet-fmnist"), torch.randn(2, 1, 28, 28)


def _mobilenet() -> tuple[nn.Module, torch.Tensor]:
    from torchslim import zoo

    return zoo.build("mobilenet_v2"), torch.randn(2, 3, 64, 64)


def _unet() -> tuple[nn.Module, torch.Tensor]:
    return UNetish(), torch.randn(2, 1, 16, 16)


def _cnn_prune(m: nn.Module, x: torch.Tensor) -> None:
    prune_(m, ChannelPrune(ratio=0.5), (x,))


def _tf_prune(m: nn.Module, x: torch.Tensor) -> None:
    from torchslim.pruning.structured.transformer import prune_ffn_, prune_heads_

    prune_heads_(m, 0.5)
    prune_ffn_(m, 0.5, round_to=8)


CASES: dict[str, tuple[Callable[[], tuple[nn.Module, torch.Tensor]], Callable[[nn.Module, torch.Tensor], None]]] = {
    "resnet-fmnist": (_resnet, _cnn_prune),
    "mobilenet_v2": (_mobilenet, _cnn_prune),
    "unet-concat": (_unet, _cnn_prune),
    "bert": (_bert, _tf_prune),
    "gpt2": (_gpt2, _tf_prune),
    "vit": (_vit, _tf_prune),
}


@pytest.mark.parametrize("name", list(CASES))
def test_prune_export_parity(name: str, tmp_path: Path) -> None:
    """Metric: ORT vs PyTorch output of the PRUNED model, allclose atol=rtol=1e-4."""
    from torchslim.export import export_onnx
    from torchslim.export.parity import ort_session

    torch.manual_seed(0)
    build, prune = CASES[name]
    model, x = build()
    model.eval()
    with torch.no_grad():
        y0 = model(x)
    before = count_params(model)
    prune(model, x)
    model.eval()
    with torch.no_grad():
        y1 = model(x)
    assert y1.shape == y0.shape
    assert torch.isfinite(y1).all()
    assert count_params(model) < 0.9 * before
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        path = export_onnx(model, x, tmp_path / f"{name}.onnx", dynamic_batch=False)
    sess = ort_session(path, threads=1)
    feed = x.numpy() if x.dtype != torch.long else x.numpy().astype("int64")
    out = torch.from_numpy(sess.run(None, {sess.get_inputs()[0].name: feed})[0])
    assert out.shape == y1.shape
    assert torch.allclose(out, y1, atol=1e-4, rtol=1e-4), (out - y1).abs().max()


def _zero_half(m: UNetish) -> None:
    """Make channel halves of every prunable group contribute exactly zero."""
    with torch.no_grad():
        for conv, norm in ((m.enc1[0], m.enc1[1]), (m.enc2[0], m.enc2[1]), (m.dec[0], m.dec[1])):
            n = conv.out_channels
            dead = torch.arange(0, n, 2)
            conv.weight[dead] = 0
            conv.bias[dead] = 0  # type: ignore[index]
            norm.bias[dead] = 0  # type: ignore[index]
            if isinstance(norm, nn.BatchNorm2d):
                norm.running_mean[dead] = 0  # type: ignore[index]
        m.up.weight[:, ::2] = 0
        m.up.bias[::2] = 0  # type: ignore[index]


def test_concat_pruning_is_exact_for_zero_channels() -> None:
    """Metric: max |pruned - original| output, allclose atol=1e-5; the zeroed halves are removed."""
    torch.manual_seed(0)
    m = UNetish().eval()
    for bn in (m.enc1[1], m.dec[1]):
        bn.running_var.uniform_(0.5, 1.5)  # type: ignore[union-attr]
    _zero_half(m)
    x = torch.randn(3, 1, 16, 16)
    ref = m(x)
    r = prune_(m, ChannelPrune(ratio=0.5), (x,))
    assert {g.name: g.channels_after for g in r.groups} == {"enc1.0": 8, "enc2.0": 16, "up": 8, "dec.0": 8}
    # the decoder conv reads [up (8 kept), enc1 (8 kept)]: segment offsets tracked through both groups
    assert m.dec[0].in_channels == 16
    torch.testing.assert_close(m(x), ref, atol=1e-5, rtol=1e-5)


def test_concat_groups_have_segment_members() -> None:
    m = UNetish().eval()
    groups = {g.name: g for g in build_groups(m, (torch.randn(1, 1, 16, 16),))}
    assert [str(c) for c in groups["up"].consumers] == ["dec.0:in"]
    assert "dec.0:in" in [str(c) for c in groups["enc1.0"].consumers]
    assert groups["up"].channels == groups["enc1.0"].channels == 16


class CatThenBN(nn.Module):
    """DenseNet-style: concatenation -> BatchNorm -> conv, with the model input as one segment."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.b = nn.Conv2d(3, 6, 1)
        self.bn = nn.BatchNorm2d(17)
        self.c = nn.Conv2d(17, 4, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c(torch.relu(self.bn(torch.cat([self.a(x), x, self.b(x)], 1))))


def test_concat_then_batchnorm_matches_masked_reference() -> None:
    """Metric: pruned output vs the ORIGINAL model with the removed channels' BN output forced to zero,
    allclose atol=1e-5 (removing a channel == zeroing its input to the consumer)."""
    torch.manual_seed(0)
    m = CatThenBN().eval()
    m.bn.running_mean.uniform_(-0.2, 0.2)  # type: ignore[union-attr]
    x = torch.randn(2, 3, 8, 8)
    ref_model = copy.deepcopy(m)
    r = prune_(m, ChannelPrune(ratio=0.5), (x,))
    kept = {g.name: g.channels_after for g in r.groups}
    assert kept == {"a": 4, "b": 3}
    assert m.bn.num_features == 4 + 3 + 3 and m.c.in_channels == 10
    # reference: zero the BN outputs of removed channels of the original model
    scores_a = ref_model.a.weight.detach().abs().flatten(1).sum(1)
    scores_b = ref_model.b.weight.detach().abs().flatten(1).sum(1)
    keep_a = set(scores_a.argsort(descending=True)[:4].tolist())
    keep_b = set(scores_b.argsort(descending=True)[:3].tolist())
    mask = torch.tensor([i in keep_a for i in range(8)] + [True] * 3 + [i in keep_b for i in range(6)])
    bn = ref_model.bn
    with torch.no_grad():
        bn.weight[~mask] = 0
        bn.bias[~mask] = 0
    torch.testing.assert_close(m(x), ref_model(x), atol=1e-5, rtol=1e-5)


class Grouped(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 16, 1)
        self.g = nn.Conv2d(16, 16, 3, padding=1, groups=4)
        self.b = nn.Conv2d(16, 8, 1)
        self.c = nn.Conv2d(8, 8, 1)
        self.out = nn.Conv2d(8, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.c(self.b(self.g(self.a(x)))))


def test_grouped_conv_left_intact_and_reported() -> None:
    m = Grouped().eval()
    x = torch.randn(1, 3, 8, 8)
    y0 = m(x)
    r = prune_(m, ChannelPrune(ratio=0.5), (x,))
    assert any("grouped convolution (groups=4" in why for _, _, why in r.skipped)
    assert m.g.in_channels == 16 and m.g.out_channels == 16 and m.a.out_channels == 16
    assert m.b.out_channels == 4  # the groups not touching the grouped conv are still pruned
    assert m(x).shape == y0.shape


class MLPWithNorms(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(8, 32)
        self.ln = nn.LayerNorm(32)
        self.fc2 = nn.Linear(32, 4)
        self.conv = nn.Conv2d(1, 8, 3)
        self.gn = nn.GroupNorm(1, 8)
        self.conv2 = nn.Conv2d(8, 2, 3)

    def forward(self, x: torch.Tensor, img: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.fc2(torch.relu(self.ln(self.fc1(x)))), self.conv2(self.gn(self.conv(img)))


def test_layernorm_and_groupnorm_are_passthrough() -> None:
    m = MLPWithNorms().eval()
    ex = (torch.randn(2, 5, 8), torch.randn(2, 1, 8, 8))
    groups = {g.name: g for g in build_groups(m, ex)}
    assert [str(p) for p in groups["fc1"].passthrough] == ["ln:through"]
    assert [str(p) for p in groups["conv"].passthrough] == ["gn:through"]
    prune_(m, ChannelPrune(ratio=0.5), ex)
    assert m.ln.normalized_shape == (16,) and m.fc2.in_features == 16
    assert m.gn.num_channels == 4 and m.conv2.in_channels == 4
    a, b = m(*ex)
    assert a.shape == (2, 5, 4) and b.shape == (2, 2, 4, 4)


def test_groupnorm_with_several_groups_blocks() -> None:
    m = nn.Sequential(nn.Conv2d(1, 8, 3), nn.GroupNorm(2, 8), nn.Conv2d(8, 2, 3))
    g = build_groups(m, (torch.randn(1, 1, 8, 8),))[0]
    assert not g.prunable and "GroupNorm with 2 groups" in g.blocked[0][2]


class CatFlattenLinear(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(1, 6, 3, padding=1)
        self.b = nn.Conv2d(1, 4, 3, padding=1)
        self.fc = nn.Linear(10 * 4 * 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.cat([torch.relu(self.a(x)), torch.relu(self.b(x))], 1)
        return self.fc(torch.flatten(F.max_pool2d(y, 2), 1))


def test_concat_flatten_linear_is_exact_for_zero_channels() -> None:
    """Metric: output after removing zeroed channels of both concat inputs, allclose atol=1e-5."""
    torch.manual_seed(0)
    m = CatFlattenLinear().eval()
    with torch.no_grad():
        for conv, dead in ((m.a, [0, 3, 5]), (m.b, [1, 2])):
            conv.weight[dead] = 0
            conv.bias[dead] = 0  # type: ignore[index]
    x = torch.randn(2, 1, 8, 8)
    ref = m(x)
    prune_(m, ChannelPrune(ratio=0.5), (x,))
    assert (m.a.out_channels, m.b.out_channels, m.fc.in_features) == (3, 2, 5 * 16)
    torch.testing.assert_close(m(x), ref, atol=1e-5, rtol=1e-5)
