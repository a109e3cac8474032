"""Tests of ChannelPrune / prune_: dependency groups, physical slicing, exactness, ONNX parity."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch
from torch import nn

from torchslim.core.errors import ConfigError
from torchslim.pruning import ChannelPrune, PruneError, count_params, prune_
from torchslim.pruning.importance import n_keep
from torchslim.pruning.structured import build_groups

torch.set_num_threads(1)


class Block(nn.Module):
    """Basic ResNet block: identity shortcut, or 1x1 conv + BN projection when the shape changes."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.short: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.short = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return torch.relu(y + self.short(x))


class TinyResNet(nn.Module):
    def __init__(self, w: tuple[int, int] = (16, 32), classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, w[0], 3, 1, 1, bias=False), nn.BatchNorm2d(w[0]), nn.ReLU())
        self.layer1 = nn.Sequential(Block(w[0], w[0]))
        self.layer2 = nn.Sequential(Block(w[0], w[1], 2), Block(w[1], w[1]))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(w[1], classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer2(self.layer1(self.stem(x)))
        return self.fc(torch.flatten(self.pool(x), 1))


def _randomise_bn(model: nn.Module, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.weight.data = torch.rand(n, generator=g) + 0.5
            m.bias.data = torch.randn(n, generator=g) * 0.1
            m.running_mean.copy_(  # type: ignore[union-attr]
                torch.randn(n, generator=g) * 0.1)
            m.running_var.copy_(  # type: ignore[union-attr]
                torch.rand(n, generator=g) + 0.5)


def _model(w: tuple[int, int] = (16, 32)) -> Any:
    torch.manual_seed(0)
    m = TinyResNet(w)
    _randomise_bn(m)
    return m.eval()


X = torch.randn(4, 1, 16, 16, generator=torch.Generator().manual_seed(1))


def test_groups_couple_residual_producers() -> None:
    groups = {g.name: g for g in build_groups(_model(), (X,))}
    stem = groups["stem.0"]
    # the identity residual in layer1 couples the stem with layer1.0's last conv
    assert {m.path for m in stem.producers} == {"stem.0", "layer1.0.conv2"}
    assert {m.path for m in stem.consumers} == {"layer1.0.conv1", "layer2.0.conv1", "layer2.0.short.0"}
    proj = groups["layer2.0.conv2"]
    # projection shortcut, and layer2.1's identity residual, share one index set feeding the classifier
    assert {m.path for m in proj.producers} == {"layer2.0.conv2", "layer2.0.short.0", "layer2.1.conv2"}
    assert {m.path for m in proj.passthrough} == {"layer2.0.bn2", "layer2.0.short.1", "layer2.1.bn2"}
    assert "fc" in {m.path for m in proj.consumers}
    assert not groups["fc"].prunable and groups["fc"].fixed == "model output"


def test_output_shape_and_channel_counts_with_round_to() -> None:
    model = _model((32, 64))
    ref_shape = model(X).shape
    r = prune_(model, ChannelPrune(ratio=0.6, round_to=16), (X,))
    assert model(X).shape == ref_shape
    # 32 -> ceil(12.8)=13 -> 16 ; 64 -> ceil(25.6)=26 -> 32   (exact)
    assert model.stem[0].out_channels == 16 and model.stem[1].num_features == 16
    assert model.layer1[0].conv1.out_channels == 16 and model.layer1[0].conv1.in_channels == 16
    assert model.layer2[0].conv1.out_channels == 32 and model.layer2[0].short[0].out_channels == 32
    assert model.layer2[1].conv2.out_channels == 32 and model.fc.in_features == 32
    assert model.fc.out_features == 10  # the output is never pruned
    assert {(g.channels_before, g.channels_after) for g in r.groups} == {(32, 16), (64, 32)}
    assert r.skipped == []
    assert r.params_after == count_params(model) < r.params_before


def test_ratio_zero_is_bit_identical() -> None:
    model = _model()
    ref = model(X)
    r = prune_(model, ChannelPrune(ratio=0.0), (X,))
    assert torch.equal(model(X), ref)  # metric: exact
    assert r.params_after == r.params_before
    assert all(g.channels_before == g.channels_after for g in r.groups)


def _zero_channels(convs_bns: list[tuple[Any, Any]], idx: torch.Tensor) -> None:
    """Make channels ``idx`` exactly zero after conv+BN (filters, gamma, beta all 0)."""
    for conv, bn in convs_bns:
        conv.weight.data[idx] = 0
        bn.weight.data[idx] = 0
        bn.bias.data[idx] = 0


def test_pruning_zero_channels_is_exact_through_residual_adds() -> None:
    model = _model()
    g = torch.Generator().manual_seed(3)
    s, l1, l2a, l2b = model.stem, model.layer1[0], model.layer2[0], model.layer2[1]
    # group of the stem: stem conv + layer1.0.conv2 (identity residual)   -> zero 8 of 16
    _zero_channels([(s[0], s[1]), (l1.conv2, l1.bn2)], torch.randperm(16, generator=g)[:8])
    _zero_channels([(l1.conv1, l1.bn1)], torch.randperm(16, generator=g)[:8])
    _zero_channels([(l2a.conv1, l2a.bn1)], torch.randperm(32, generator=g)[:16])
    _zero_channels([(l2b.conv1, l2b.bn1)], torch.randperm(32, generator=g)[:16])
    # projection shortcut + both residual branches of layer2 feed the same sum  -> zero 16 of 32
    _zero_channels([(l2a.conv2, l2a.bn2), (l2a.short[0], l2a.short[1]), (l2b.conv2, l2b.bn2)],
                   torch.randperm(32, generator=g)[:16])
    ref = model(X)
    r = prune_(model, ChannelPrune(ratio=0.5), (X,))
    out = model(X)
    assert model.layer2[1].conv2.out_channels == 16 and model.fc.in_features == 16
    assert r.params_after < 0.35 * r.params_before
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)  # metric: allclose 1e-5
    # no zero filter survived: the kept indices are exactly the non-zero ones
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            assert (m.weight.flatten(1).abs().sum(1) > 0).all()


def test_pruned_model_exports_to_onnx_and_matches_ort(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import onnxruntime as ort

    model = _model((32, 64))
    prune_(model, ChannelPrune(ratio=0.5, round_to=16), (X,))
    path = tmp_path / "pruned.onnx"
    torch.onnx.export(model, (X,), str(path), dynamo=False, input_names=["x"], output_names=["y"])
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = sess.run(None, {"x": X.numpy()})[0]
    with torch.no_grad():
        ref = model(X).numpy()
    assert got.shape == (4, 10)
    assert abs(got - ref).max() < 1e-4  # metric: max abs diff < 1e-4


def _hand_model() -> Any:
    m: Any = nn.Sequential(nn.Conv2d(4, 4, 1, bias=False), nn.ReLU(), nn.Conv2d(4, 2, 1, bias=False))
    with torch.no_grad():
        m[0].weight.copy_(torch.tensor([
            [3.0, 0.0, 0.0, 0.0],   # L1 3.0, L2 3.0
            [1.0, 1.0, 1.0, 1.0],   # L1 4.0, L2 2.0
            [0.5, 0.0, 0.0, 0.0],   # L1 0.5, L2 0.5
            [2.0, -1.5, 0.0, 0.0],  # L1 3.5, L2 2.5
        ]).view(4, 4, 1, 1))
        m[2].weight.copy_(torch.arange(8.0).view(2, 4, 1, 1))
    return m


@pytest.mark.parametrize(("importance", "kept"), [("l1", [1, 3]), ("l2", [0, 3])])
def test_norm_importance_keeps_largest_channels(importance: str, kept: list[int]) -> None:
    m = _hand_model()
    w0, w2 = m[0].weight.detach().clone(), m[2].weight.detach().clone()
    prune_(m, ChannelPrune(ratio=0.5, importance=importance), (torch.randn(1, 4, 3, 3),))  # type: ignore[arg-type]
    assert torch.equal(m[0].weight, w0[kept])  # exact: the kept filters, in order
    assert torch.equal(m[2].weight, w2[:, kept])  # consumer's input columns follow


def test_param_count_drops_as_computed_by_hand() -> None:
    torch.manual_seed(0)
    m: Any = nn.Sequential(
        nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 6, 3), nn.BatchNorm2d(6), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 5),
    ).eval()
    x = torch.randn(2, 3, 10, 10)
    # before: conv 8*27+8=224, bn 16, conv 6*72+6=438, bn 12, fc 6*5+5=35 -> 725
    # after (8->4, 6->3): conv 4*27+4=112, bn 8, conv 3*36+3=111, bn 6, fc 3*5+5=20 -> 257
    r = prune_(m, ChannelPrune(ratio=0.5), (x,))
    assert (r.params_before, r.params_after) == (725, 257)
    assert m(x).shape == (2, 5)


class MobileBlock(nn.Module):
    """Inverted residual: 1x1 expand -> depthwise 3x3 -> 1x1 project, with a residual add."""

    def __init__(self, c: int = 8, e: int = 16) -> None:
        super().__init__()
        self.expand = nn.Conv2d(c, e, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(e)
        self.dw = nn.Conv2d(e, e, 3, 1, 1, groups=e, bias=False)
        self.bn2 = nn.BatchNorm2d(e)
        self.project = nn.Conv2d(e, c, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = nn.functional.relu6(self.bn1(self.expand(x)))
        y = nn.functional.relu6(self.bn2(self.dw(y)))
        return x + self.bn3(self.project(y))


class MobileNetLike(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1, bias=False), nn.BatchNorm2d(8), nn.ReLU6())
        self.block = MobileBlock()
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.block(self.stem(x)).mean((2, 3)))


def test_depthwise_conv_is_a_passthrough() -> None:
    torch.manual_seed(0)
    model: Any = MobileNetLike()
    _randomise_bn(model)
    model.eval()
    b = model.block
    x = torch.randn(2, 3, 16, 16)
    zero = torch.tensor([0, 2, 3, 5, 8, 9, 12, 15])
    b.expand.weight.data[zero] = 0
    for bn in (b.bn1, b.bn2):
        bn.weight.data[zero] = 0
        bn.bias.data[zero] = 0
    _zero_channels([(model.stem[0], model.stem[1]), (b.project, b.bn3)], torch.tensor([1, 6, 7, 2]))
    ref = model(x)
    r = prune_(model, ChannelPrune(ratio=0.5), (x,))
    dw = model.block.dw
    assert (dw.in_channels, dw.out_channels, dw.groups) == (8, 8, 8)
    assert model.block.expand.out_channels == 8 and model.block.project.in_channels == 8
    assert model.block.bn2.num_features == 8
    assert model.stem[0].out_channels == 4 and model.head.in_features == 4
    dw_group = next(g for g in r.groups if g.name == "block.expand")
    assert "block.dw:through" in dw_group.members
    torch.testing.assert_close(model(x), ref, atol=1e-5, rtol=1e-5)  # metric: allclose 1e-5


def test_flatten_into_linear_prunes_feature_blocks() -> None:
    torch.manual_seed(0)
    m: Any = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 4 * 4, 3)).eval()
    x = torch.randn(2, 1, 4, 4)
    zero = torch.tensor([1, 2, 5, 6])
    m[0].weight.data[zero] = 0
    m[0].bias.data[zero] = 0
    ref = m(x)
    prune_(m, ChannelPrune(ratio=0.5), (x,))
    assert m[3].in_features == 4 * 16
    torch.testing.assert_close(m(x), ref, atol=1e-5, rtol=1e-5)  # metric: allclose 1e-5


class CatNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.b = nn.Conv2d(3, 8, 3, padding=1)
        self.c = nn.Conv2d(3, 8, 3, padding=1)
        self.d = nn.Conv2d(8, 8, 3, padding=1)
        self.out = nn.Conv2d(24, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.cat([torch.flip(self.a(x), [1]), self.b(x), self.d(torch.relu(self.c(x)))], 1))


def test_unknown_op_leaves_group_intact_and_is_reported() -> None:
    model: Any = CatNet().eval()
    x = torch.randn(1, 3, 8, 8)
    ref = model(x)
    r = prune_(model, ChannelPrune(ratio=0.5), (x,))
    assert model.a.out_channels == 8  # untouched: flip is not understood
    assert model.b.out_channels == 4 and model.d.out_channels == 4 and model.out.in_channels == 8 + 4 + 4
    assert model.c.out_channels == 4 and model.d.in_channels == 4  # the independent group is pruned
    assert ("", "flip", "op not understood by channel pruning") in r.skipped
    assert model(x).shape == ref.shape


def test_include_and_exclude() -> None:
    model = _model()
    r = prune_(model, ChannelPrune(ratio=0.5, exclude=["layer2.*"]), (X,))
    assert model.layer1[0].conv1.out_channels == 8 and model.stem[0].out_channels == 16  # stem group touches layer2
    assert model.layer2[0].conv1.out_channels == 32
    assert ("stem.0", "matched by exclude") in r.untouched
    model = _model()
    prune_(model, ChannelPrune(ratio=0.5, include=["layer2.1.conv1"]), (X,))
    assert model.layer2[1].conv1.out_channels == 16 and model.layer1[0].conv1.out_channels == 16


def test_bad_input_fails_before_any_work() -> None:
    with pytest.raises(ConfigError, match="ratio"):
        ChannelPrune(ratio=1.0)
    with pytest.raises(ConfigError, match="ratio"):
        ChannelPrune(ratio=-0.1)
    model = _model()
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(PruneError, match="matches no module"):
        prune_(model, ChannelPrune(ratio=0.5, exclude=["nosuch.*"]), (X,))
    with pytest.raises(PruneError, match="min_channels=12"):
        prune_(model, ChannelPrune(ratio=0.5, min_channels=12), (X,))
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # exact: model untouched


def test_random_importance_is_seeded() -> None:
    a, b = _model(), _model()
    prune_(a, ChannelPrune(ratio=0.5, importance="random", seed=7), (X,))
    prune_(b, ChannelPrune(ratio=0.5, importance="random", seed=7), (X,))
    assert torch.equal(a(X), b(X))  # exact: same seed, same channels


def test_n_keep_rounding() -> None:
    assert n_keep(10, 0.3) == 7  # no float ceil artefact (0.7*10 = 7.000000000000001)
    assert n_keep(48, 0.5, round_to=16) == 32
    assert n_keep(8, 0.5, round_to=16) == 8  # never more than C
    assert n_keep(64, 0.0) == 64


def test_zoo_resnet_if_available() -> None:
    zoo = pytest.importorskip("torchslim.zoo")
    if not hasattr(zoo, "build"):
        pytest.skip("torchslim.zoo.build not available yet")
    model = zoo.build("resnet-fmnist").eval()
    x = torch.randn(2, 1, 28, 28)
    ref_shape = model(x).shape
    r = prune_(model, ChannelPrune(ratio=0.5, round_to=16), (x,))
    assert model(x).shape == ref_shape
    assert r.params_after < 0.4 * r.params_before
    assert not r.skipped


class TokenMLP(nn.Module):
    """Linear layers on [N, T, C] tokens, a LayerNorm (pass-through) and a raw parameter scale."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Linear(8, 32)
        self.ln = nn.LayerNorm(32)
        self.ff1 = nn.Linear(32, 64)
        self.ff2 = nn.Linear(64, 32)
        self.scale = nn.Parameter(torch.ones(32))
        self.head = nn.Linear(32, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.emb(x)
        h = h + self.ff2(nn.functional.gelu(self.ff1(self.ln(h))))
        return self.head((h * self.scale).mean(1))


def test_token_linears_pruned_and_unknown_ops_reported() -> None:
    torch.manual_seed(0)
    model: Any = TokenMLP().eval()
    x = torch.randn(2, 5, 8)
    zero = torch.arange(0, 64, 2)
    model.ff1.weight.data[zero] = 0
    model.ff1.bias.data[zero] = -1.0  # gelu(-1) != 0, so make ff2 ignore them instead
    model.ff2.weight.data[:, zero] = 0
    ref = model(x)
    r = prune_(model, ChannelPrune(ratio=0.5), (x,))
    assert model.ff1.out_features == 32 and model.ff2.in_features == 32
    assert model.emb.out_features == 32  # coupled with LayerNorm and the raw scale: left intact
    assert ("", "mul", "element-wise op with broadcasting across the channel dim") in r.skipped  # raw scale
    assert r.params_before - r.params_after == 32 * 32 + 32 + 32 * 32  # ff1 rows + bias, ff2 columns
    torch.testing.assert_close(model(x), ref, atol=1e-5, rtol=1e-5)  # metric: allclose 1e-5


def _ones_batch(n: int, c: int, h: int, w: int) -> torch.Tensor:
    return torch.ones(n, c, h, w)


torch.fx.wrap("_ones_batch")


class AddsConstant(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.out = nn.Conv2d(8, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x) + _ones_batch(x.shape[0], 8, x.shape[2], x.shape[3])
        return self.out(y)


def test_tensor_from_untracked_source_blocks_its_group() -> None:
    model: Any = AddsConstant().eval()
    x = torch.randn(1, 3, 6, 6)
    r = prune_(model, ChannelPrune(ratio=0.5), (x,))
    assert model.conv.out_channels == 8  # pruning would break the add with the (1, 8, 6, 6) constant
    assert any(op == "_ones_batch" and "untracked" in why for _, op, why in r.skipped), r.skipped
    assert model(x).shape == (1, 2, 6, 6)


def test_explicit_keep_indices_are_exactly_the_kept_channels() -> None:
    """keep={group: indices} keeps exactly those channels (sorted), whatever the ratio and criterion say.
    Metric: the pruned conv's weights equal the original rows at those indices (exact)."""
    m = nn.Sequential(nn.Conv2d(1, 6, 1), nn.ReLU(), nn.Conv2d(6, 2, 1))
    w = m[0].weight.detach().clone()
    prune_(m, ChannelPrune(ratio=0.5), (torch.randn(1, 1, 3, 3),), keep={"0": torch.tensor([4, 1])})
    assert m[0].out_channels == 2 and m[2].in_channels == 2
    assert torch.equal(m[0].weight, w[[1, 4]])
    with pytest.raises(PruneError, match="twice"):
        prune_(nn.Sequential(nn.Conv2d(1, 6, 1), nn.ReLU(), nn.Conv2d(6, 2, 1)), ChannelPrune(ratio=0.0),
               (torch.randn(1, 1, 3, 3),), keep={"0": [1, 1]})


@pytest.mark.parametrize("mode, expected", [("up", 32), ("nearest", 16), ("down", 16)])
def test_round_mode_decides_the_kept_multiple(mode: str, expected: int) -> None:
    """ratio 0.3 of 32 channels asks for 23 kept; round_to 16 gives 32 (up), 16 (nearest: |23-16| < |23-32|)
    or 16 (down). Metric: exact channel count."""
    m = nn.Sequential(nn.Conv2d(1, 32, 1), nn.ReLU(), nn.Conv2d(32, 2, 1))
    prune_(m, ChannelPrune(ratio=0.3, round_to=16, round_mode=mode), (torch.randn(1, 1, 3, 3),))
    assert m[0].out_channels == expected
    with pytest.raises(ConfigError):
        ChannelPrune.from_dict({"type": "channel_prune", "ratio": 0.3, "round_mode": "sideways"})
