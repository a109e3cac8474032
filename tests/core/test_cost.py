"""Cost model tests: every count is compared EXACTLY (integer equality) with hand-computed arithmetic."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from torchslim.core.cost import CostReport, op_macs, profile
from torchslim.core.errors import ConfigError

torch.set_num_threads(1)


# ---------------------------------------------------------------------------------------------------
# convolutions
# ---------------------------------------------------------------------------------------------------


def test_conv2d_stride_padding_bias() -> None:
    conv = nn.Conv2d(3, 8, kernel_size=3, stride=2, padding=1, bias=True)
    rep = profile(conv, (torch.randn(1, 3, 32, 32),))
    # out spatial: floor((32 + 2*1 - 3) / 2) + 1 = 16
    # MACs = N * Hout * Wout * Cout * Cin * k * k = 1 * 16 * 16 * 8 * 3 * 3 * 3 = 55296 (bias adds not MACs)
    assert rep.macs == 1 * 16 * 16 * 8 * 3 * 3 * 3 == 55296
    # params = Cout * Cin * k * k + Cout = 8*3*9 + 8 = 224
    assert rep.params == 8 * 3 * 9 + 8 == 224
    lc = rep.layer("")
    assert lc.type == "Conv2d"
    assert lc.input_shape == (1, 3, 32, 32)
    assert lc.output_shape == (1, 8, 16, 16)
    # output activations: 8*16*16 float32 = 8192 bytes
    assert lc.activation_bytes == 8 * 16 * 16 * 4 == 8192
    assert rep.bops == rep.macs * 32 * 32


def test_conv2d_without_bias_same_macs_fewer_params() -> None:
    conv = nn.Conv2d(3, 8, kernel_size=3, stride=2, padding=1, bias=False)
    rep = profile(conv, (torch.randn(2, 3, 32, 32),))
    assert rep.macs == 2 * 16 * 16 * 8 * 3 * 9  # batch 2 doubles MACs
    assert rep.params == 8 * 3 * 9


def test_grouped_conv_groups4() -> None:
    conv = nn.Conv2d(16, 32, kernel_size=3, padding=1, groups=4)
    rep = profile(conv, (torch.randn(2, 16, 8, 8),))
    # each output channel sees Cin/groups = 4 input channels
    # MACs = N * H * W * Cout * (Cin/g) * k*k = 2 * 8 * 8 * 32 * 4 * 9 = 147456
    assert rep.macs == 2 * 8 * 8 * 32 * (16 // 4) * 9 == 147456
    # params = Cout * (Cin/g) * k*k + Cout = 32*4*9 + 32 = 1184
    assert rep.params == 32 * 4 * 9 + 32 == 1184


def test_depthwise_conv() -> None:
    conv = nn.Conv2d(16, 16, kernel_size=3, padding=1, groups=16)
    rep = profile(conv, (torch.randn(1, 16, 8, 8),))
    # MACs = H * W * C * 1 * k*k = 8*8*16*9 = 9216
    assert rep.macs == 8 * 8 * 16 * 1 * 9 == 9216
    assert rep.params == 16 * 9 + 16 == 160


def test_conv_transpose_matches_formula() -> None:
    conv = nn.ConvTranspose2d(4, 6, kernel_size=2, stride=2)
    rep = profile(conv, (torch.randn(1, 4, 5, 5),))
    # every input pixel is multiplied by every weight: N * Hin * Win * Cin * Cout * k*k = 25 * 4 * 6 * 4
    assert rep.macs == 1 * 5 * 5 * 4 * 6 * 2 * 2 == 2400


def test_functional_conv_attributed_to_enclosing_module() -> None:
    class FConv(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = nn.Parameter(torch.randn(8, 2, 3, 3))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return F.conv2d(x, self.w, groups=2)

    class Outer(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = FConv()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.inner(x)

    rep = profile(Outer(), (torch.randn(1, 4, 6, 6),))
    # out 4x4; MACs = 4*4 * 8 * (4/2) * 9 = 2304, all in "inner"
    assert rep.layer("inner").macs == 4 * 4 * 8 * 2 * 9 == 2304
    assert rep.macs == 2304
    assert rep.layer("inner").params == 8 * 2 * 9


# ---------------------------------------------------------------------------------------------------
# linear
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("bias", [True, False])
def test_linear_3d_input(bias: bool) -> None:
    lin = nn.Linear(10, 20, bias=bias)
    rep = profile(lin, (torch.randn(2, 5, 10),))
    # MACs = B * L * in * out = 2 * 5 * 10 * 20 = 2000 (bias adds are not MACs)
    assert rep.macs == 2 * 5 * 10 * 20 == 2000
    assert rep.params == 10 * 20 + (20 if bias else 0)
    assert rep.layers[0].output_shape == (2, 5, 20)
    assert rep.layers[0].activation_bytes == 2 * 5 * 20 * 4


def test_functional_linear_counted() -> None:
    class M(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = nn.Parameter(torch.randn(7, 3))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return F.linear(x, self.w)

    rep = profile(M(), (torch.randn(4, 3),))
    assert rep.macs == 4 * 3 * 7 == 84


# ---------------------------------------------------------------------------------------------------
# attention
# ---------------------------------------------------------------------------------------------------


class Attention(nn.Module):
    """Multi-head self-attention with explicit Q/K/V/O projections."""

    def __init__(self, d: int, h: int, use_sdpa: bool) -> None:
        super().__init__()
        self.h, self.use_sdpa = h, use_sdpa
        self.q, self.k, self.v, self.o = (nn.Linear(d, d) for _ in range(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        dh = d // self.h

        def split(t: torch.Tensor) -> torch.Tensor:
            return t.view(b, n, self.h, dh).transpose(1, 2)

        q, k, v = split(self.q(x)), split(self.k(x)), split(self.v(x))
        if self.use_sdpa:
            a = F.scaled_dot_product_attention(q, k, v)
        else:
            scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(dh)
            a = scores.softmax(-1) @ v
        return self.o(a.transpose(1, 2).reshape(b, n, d))


def attention_macs(seq: int, d: int) -> tuple[int, int]:
    """(projection MACs, attention-matmul MACs) for batch 1: 4*L*D*D and 2*L*L*D (H heads of L*L*D/H each)."""
    return 4 * seq * d * d, 2 * seq * seq * d


@pytest.mark.parametrize("use_sdpa", [False, True])
def test_attention_block_exact(use_sdpa: bool) -> None:
    seq, d, h = 12, 32, 4
    rep = profile(Attention(d, h, use_sdpa), (torch.randn(1, seq, d),))
    proj, attn = attention_macs(seq, d)
    # QK^T: H * L * (D/H) * L = L*L*D = 4608 ; AV: H * L * L * (D/H) = 4608 ; projections 4 * 12*32*32 = 49152
    assert (proj, attn) == (49152, 9216)
    assert rep.macs == proj + attn
    for name in ("q", "k", "v", "o"):
        assert rep.layer(name).macs == seq * d * d
    assert rep.layer("").macs == attn  # functional matmuls / sdpa attributed to the attention module
    assert rep.params == 4 * (d * d + d)


def test_attention_bops_w4a8_weight_vs_activation_products() -> None:
    seq, d, h = 8, 16, 2
    rep = profile(Attention(d, h, use_sdpa=True), (torch.randn(1, seq, d),), weight_bits=4, act_bits=8)
    proj, attn = attention_macs(seq, d)
    # projections: weight x activation = 4 * 8 bits; QK^T and AV: activation x activation = 8 * 8 bits
    assert rep.bops == proj * 4 * 8 + attn * 8 * 8
    assert rep.layer("q").bops == seq * d * d * 32


# ---------------------------------------------------------------------------------------------------
# residual block
# ---------------------------------------------------------------------------------------------------


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.short = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return F.relu(y + self.short(x))


def test_resnet_block_total() -> None:
    block = BasicBlock(16, 32, stride=2)
    block.train()
    assert block.bn1.running_mean is not None
    running = block.bn1.running_mean.clone()
    rep = profile(block, (torch.randn(1, 16, 8, 8),))
    # output 4x4 after stride 2
    conv1 = 4 * 4 * 32 * 16 * 9  # 73728
    conv2 = 4 * 4 * 32 * 32 * 9  # 147456
    short = 4 * 4 * 32 * 16 * 1  # 8192
    assert rep.macs == conv1 + conv2 + short == 229376
    # params: 16*32*9 + 32*32*9 + 16*32 convs + 3 BNs * (weight + bias) * 32
    assert rep.params == 4608 + 9216 + 512 + 3 * 2 * 32 == 14528
    assert rep.params == sum(p.numel() for p in block.parameters())
    assert rep.layer("short.0").macs == short
    # profiling ran in eval mode (BN statistics untouched) and restored the training flag
    assert block.bn1.running_mean is not None and torch.equal(block.bn1.running_mean, running)
    assert block.training and block.bn1.training


def test_bops_w8a8_and_per_layer_bits() -> None:
    block = BasicBlock(16, 32, stride=2)
    x = torch.randn(1, 16, 8, 8)
    rep = profile(block, (x,), weight_bits=8, act_bits=8)
    assert rep.bops == 229376 * 8 * 8 == 14680064
    # per-layer: conv1 at w4, the shortcut (glob) at w2, the rest default 32 bits; activations a8
    rep2 = profile(block, (x,), weight_bits={"conv1": 4, "short.*": 2}, act_bits=8)
    assert rep2.layer("conv1").bops == 73728 * 4 * 8
    assert rep2.layer("short.0").bops == 8192 * 2 * 8
    assert rep2.layer("conv2").bops == 147456 * 32 * 8
    assert rep2.bops == 73728 * 32 + 8192 * 16 + 147456 * 256


def test_bad_bits_give_clear_errors() -> None:
    lin = nn.Sequential(nn.Linear(4, 4))
    with pytest.raises(ConfigError, match="matches no module"):
        profile(lin, (torch.randn(1, 4),), weight_bits={"conv1": 8})
    with pytest.raises(ConfigError, match="positive int"):
        profile(lin, (torch.randn(1, 4),), act_bits=0)
    with pytest.raises(TypeError, match="tuple"):
        profile(lin, [torch.randn(1, 4)])  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------------
# params, eager control flow, memory
# ---------------------------------------------------------------------------------------------------


def test_shared_weights_counted_once() -> None:
    class Tied(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.enc = nn.Linear(6, 6, bias=False)
            self.dec = nn.Linear(6, 6, bias=False)
            self.dec.weight = self.enc.weight

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.dec(self.enc(x))

    rep = profile(Tied(), (torch.randn(3, 6),))
    assert rep.params == 36  # one 6x6 weight, not two
    assert rep.layer("enc").params == 36 and rep.layer("dec").params == 0
    assert rep.macs == 2 * 3 * 6 * 6  # but both layers run


def test_data_dependent_branch_profiles_eagerly() -> None:
    class Branchy(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.small = nn.Linear(8, 4)
            self.big = nn.Linear(8, 64)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if x.sum() > 0:  # data-dependent: not traceable by torch.export without help
                return self.small(x)
            return self.big(x)

    m = Branchy()
    pos = profile(m, (torch.ones(2, 8),))
    neg = profile(m, (-torch.ones(2, 8),))
    assert pos.macs == 2 * 8 * 4
    assert neg.macs == 2 * 8 * 64
    assert pos.params == neg.params == 8 * 4 + 4 + 8 * 64 + 64  # the branch that did not run still counts


def test_peak_activation_liveness() -> None:
    seq = nn.Sequential(nn.Linear(100, 200), nn.Linear(200, 300), nn.Linear(300, 50))
    rep = profile(seq, (torch.randn(1, 100),))
    # float32 bytes: input 400, out1 800, out2 1200, out3 200. While layer 2 runs the input (held by the
    # caller), out1 and out2 are live: 400 + 800 + 1200 = 2400; out1 is freed before out3 is made.
    assert rep.peak_activation_bytes == 400 + 800 + 1200
    assert rep.activation_bytes == 800 + 1200 + 200


def test_aliasing_outputs_not_double_counted_in_total() -> None:
    net = nn.Sequential(nn.Linear(10, 10), nn.ReLU(inplace=True), nn.Flatten(), nn.Dropout(0.5))
    rep = profile(net, (torch.randn(2, 10),))
    assert [lc.activation_bytes for lc in rep.layers] == [80, 80, 80, 80]
    assert rep.activation_bytes == 80  # ReLU in place, Flatten view, eval Dropout alias the Linear output


def test_report_to_dict_and_table() -> None:
    rep = profile(BasicBlock(4, 8, 1), (torch.randn(1, 4, 6, 6),), weight_bits=8, act_bits=8)
    d = json.loads(json.dumps(rep.to_dict()))
    assert d["macs"] == rep.macs and d["params"] == rep.params
    assert sum(layer["macs"] for layer in d["layers"]) == rep.macs
    from rich.console import Console

    console = Console(record=True, width=160)
    console.print(rep.table())
    text = console.export_text()
    assert "conv1" in text and "total" in text
    assert isinstance(rep, CostReport)


# ---------------------------------------------------------------------------------------------------
# cross-check with torch's FlopCounterMode (FLOPs = 2 * MACs) where it counts the same ops
# ---------------------------------------------------------------------------------------------------


def test_agrees_with_flop_counter_mode() -> None:
    from torch.utils.flop_counter import FlopCounterMode

    model = nn.Sequential(
        nn.Conv2d(8, 16, 3, padding=1, groups=4), nn.Conv2d(16, 16, 3, groups=16), nn.Flatten(), nn.Linear(16 * 36, 5)
    )
    x = torch.randn(2, 8, 8, 8)
    with FlopCounterMode(display=False) as fc:
        model(x)
    assert profile(model, (x,)).macs * 2 == fc.get_total_flops()


def test_op_macs_direct() -> None:
    a, b = torch.randn(3, 4, 5), torch.randn(3, 5, 6)
    assert op_macs(torch.ops.aten.bmm.default, (a, b), {}, a @ b) == 3 * 4 * 5 * 6
    assert op_macs(torch.ops.aten.relu.default, (a,), {}, a) is None


# ---------------------------------------------------------------------------------------------------
# transformers BertModel (tiny random config, no download)
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("attn_impl", ["sdpa", "eager"])
def test_tiny_bert_attention_macs(attn_impl: str) -> None:
    transformers = pytest.importorskip("transformers")
    n_layers, d, heads, inter, seq = 2, 32, 4, 64, 8
    cfg = transformers.BertConfig(
        vocab_size=100,
        hidden_size=d,
        num_hidden_layers=n_layers,
        num_attention_heads=heads,
        intermediate_size=inter,
        max_position_embeddings=64,
        attn_implementation=attn_impl,
    )
    torch.manual_seed(0)
    model = transformers.BertModel(cfg)
    rep = profile(model, (torch.randint(0, 100, (1, seq)),))
    proj, attn = attention_macs(seq, d)  # Q/K/V in attention.self, O in attention.output.dense
    for i in range(n_layers):
        assert rep.macs_under(f"encoder.layer.{i}.attention") == proj + attn == 4 * 8 * 32 * 32 + 2 * 8 * 8 * 32
        assert rep.macs_under(f"encoder.layer.{i}.attention.self") == 3 * seq * d * d + attn
        assert rep.macs_under(f"encoder.layer.{i}.intermediate") == seq * d * inter
    # whole model: per layer attention + FFN (2 * L * D * I), plus the pooler on the first token (D * D)
    assert rep.macs == n_layers * (proj + attn + 2 * seq * d * inter) + d * d
    assert rep.params == sum(p.numel() for p in model.parameters())
