"""Tests of the weight-only int8 LSTM (paper #17, KWS-QLSTM)."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor, nn

from torchslim.core.errors import ConfigError, UnsupportedModelError
from torchslim.quantization.lstm import QLSTMConfig, QuantizedLSTM, quantize_lstm_, quantize_rows

torch.set_num_threads(1)


def reference_lstm(
    x: Tensor, w: dict[str, Tensor], num_layers: int, hidden: int, bidirectional: bool, batch_first: bool
) -> Tensor:
    """The LSTM cell equations written out by hand (PyTorch gate order i, f, g, o)."""
    if batch_first:
        x = x.transpose(0, 1)
    seq_len, batch, _ = x.shape
    inp = x
    for layer in range(num_layers):
        outs = []
        for suffix in ([""] + (["_reverse"] if bidirectional else [])):
            wih, whh = w[f"weight_ih_l{layer}{suffix}"], w[f"weight_hh_l{layer}{suffix}"]
            b = w[f"bias_ih_l{layer}{suffix}"] + w[f"bias_hh_l{layer}{suffix}"]
            h = torch.zeros(batch, hidden, dtype=torch.float64)
            c = torch.zeros(batch, hidden, dtype=torch.float64)
            steps = range(seq_len - 1, -1, -1) if suffix else range(seq_len)
            hs: list[Tensor] = [torch.empty(0)] * seq_len
            for t in steps:
                gates = inp[t] @ wih.T + h @ whh.T + b
                i, f, g, o = gates.chunk(4, dim=1)
                c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
                h = torch.sigmoid(o) * torch.tanh(c)
                hs[t] = h
            outs.append(torch.stack(hs))
        inp = torch.cat(outs, dim=2)
    return inp.transpose(0, 1) if batch_first else inp


@pytest.mark.parametrize(
    ("layers", "bidir", "batch_first"), [(1, False, True), (2, False, False), (2, True, True)]
)
def test_matches_hand_written_cell_equations(layers: int, bidir: bool, batch_first: bool) -> None:
    # metric: max abs difference of the output sequence; tolerance 1e-6 (float32 vs float64 reference)
    torch.manual_seed(0)
    lstm = nn.LSTM(7, 12, num_layers=layers, bidirectional=bidir, batch_first=batch_first)
    q = QuantizedLSTM.from_float(lstm)
    x = torch.randn(3, 9, 7) if batch_first else torch.randn(9, 3, 7)
    with torch.no_grad():
        out, _ = q(x)
        ref = reference_lstm(
            x.double(),
            {k: v.double() for k, v in q.dequantized_weights().items()},
            layers,
            12,
            bidir,
            batch_first,
        )
    assert out.shape == ref.shape
    assert (out.double() - ref).abs().max().item() < 1e-6


@pytest.mark.parametrize("fuse_bias", [True, False])
def test_equals_nn_lstm_with_dequantized_weights(fuse_bias: bool) -> None:
    # metric: max abs difference of outputs and final (h, c); tolerance 1e-6
    torch.manual_seed(1)
    lstm = nn.LSTM(5, 16, num_layers=2, batch_first=True)
    q = QuantizedLSTM.from_float(lstm, QLSTMConfig(fuse_bias=fuse_bias))
    ref = nn.LSTM(5, 16, num_layers=2, batch_first=True)
    with torch.no_grad():
        for k, p in lstm.named_parameters():
            if k.startswith("weight_"):
                wq, s = quantize_rows(p)
                getattr(ref, k).copy_(wq.float() * s[:, None])
            else:
                getattr(ref, k).copy_(p)
        x = torch.randn(4, 11, 5)
        h0, c0 = torch.randn(2, 4, 16), torch.randn(2, 4, 16)
        (o1, (h1, c1)), (o2, (h2, c2)) = q(x, (h0, c0)), ref(x, (h0, c0))
    for a, b in ((o1, o2), (h1, h2), (c1, c2)):
        assert (a - b).abs().max().item() < 1e-6
    # to_float() rebuilds the same LSTM
    with torch.no_grad():
        assert (q.to_float()(x)[0] - q(x)[0]).abs().max().item() < 1e-6


def test_quantize_rows_error_bound_and_range() -> None:
    # metric: elementwise |dequant - w| <= scale/2 (+1e-7); int range within [-127, 127]; one scale per row
    torch.manual_seed(2)
    w = torch.randn(64, 30) * torch.linspace(0.01, 3.0, 64)[:, None]
    q, s = quantize_rows(w, 8)
    assert q.dtype == torch.int8 and s.shape == (64,)
    assert int(q.abs().max()) == 127 and int(q.min()) >= -127
    err = (q.float() * s[:, None] - w).abs()
    assert bool((err <= s[:, None] / 2 + 1e-7).all())
    q4, s4 = quantize_rows(w, 4)
    assert int(q4.abs().max()) == 7
    with pytest.raises(ValueError, match="2-D"):
        quantize_rows(torch.randn(3))


def test_quantize_lstm_replaces_and_state_dict_4x_smaller() -> None:
    # metric: safetensors bytes of the LSTM's state dict, float / int8 >= 3.7 (int8 weights + per-row scales
    # + one fused float bias: the ideal ratio 4 minus the scales/bias overhead); outputs close to float
    from torchslim.bench.size import state_dict_bytes

    torch.manual_seed(3)
    model = nn.Module()
    model.rnn = nn.LSTM(28, 128, num_layers=2, batch_first=True)
    float_bytes = state_dict_bytes(model)
    x = torch.randn(2, 28, 28)
    with torch.no_grad():
        ref = model.rnn(x)[0]
    names = quantize_lstm_(model, QLSTMConfig())
    assert names == ["rnn"] and isinstance(model.rnn, QuantizedLSTM)
    int8_bytes = state_dict_bytes(model)
    assert float_bytes / int8_bytes >= 3.7
    assert all(v.dtype == torch.int8 for k, v in model.state_dict().items() if k.endswith("_int8"))
    with torch.no_grad():
        out = model.rnn(x)[0]
    # int8 weights: outputs within 0.02 of float (max abs) on random data
    assert (out - ref).abs().max().item() < 0.02


def test_state_dict_round_trip_via_safetensors() -> None:
    # metric: exact equality of outputs after save/load of the int8 state dict
    from safetensors.torch import load_file, save_file

    torch.manual_seed(4)
    a = QuantizedLSTM.from_float(nn.LSTM(6, 8, batch_first=True))
    b = QuantizedLSTM.from_float(nn.LSTM(6, 8, batch_first=True))
    with tempfile.TemporaryDirectory() as d:
        f = Path(d) / "q.safetensors"
        save_file(dict(a.state_dict()), str(f))
        b.load_state_dict(load_file(str(f)))
    x = torch.randn(2, 5, 6)
    with torch.no_grad():
        assert torch.equal(a(x)[0], b(x)[0])


def test_bad_input() -> None:
    with pytest.raises(UnsupportedModelError, match="no nn.LSTM"):
        quantize_lstm_(nn.Sequential(nn.Linear(2, 2)))
    with pytest.raises(UnsupportedModelError, match="from_float"):
        quantize_lstm_(nn.LSTM(2, 2))
    with pytest.raises(ConfigError):
        QLSTMConfig(bits=9)
    with pytest.raises(TypeError, match="nn.LSTM"):
        QuantizedLSTM.from_float(nn.GRU(2, 2))  # type: ignore[arg-type]


@pytest.mark.slow
def test_qualitative_claim_int8_keeps_sequence_accuracy() -> None:
    # Paper claim at small scale: an 8-bit-weight LSTM keeps the float model's accuracy.
    # Task: sign of the sum of a length-12 sequence (train a tiny LSTM classifier 150 Adam steps).
    # metric: accuracy on 2,000 held-out sequences; tolerance: int8 within 1 point of float; 3-bit drops more.
    torch.manual_seed(5)

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.rnn = nn.LSTM(1, 24, batch_first=True)
            self.fc = nn.Linear(24, 2)

        def forward(self, x: Tensor) -> Tensor:
            return self.fc(self.rnn(x)[0][:, -1])

    def batch(n: int) -> tuple[Tensor, Tensor]:
        x = torch.randn(n, 12, 1)
        return x, (x.sum(dim=(1, 2)) > 0).long()

    net = Net()
    opt = torch.optim.Adam(net.parameters(), lr=0.01)
    for _ in range(150):
        x, y = batch(128)
        loss = nn.functional.cross_entropy(net(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    xt, yt = batch(2000)

    def acc(m: nn.Module) -> float:
        with torch.no_grad():
            return float((m(xt).argmax(1) == yt).float().mean())

    import copy

    fp = acc(net)
    q8, q2 = copy.deepcopy(net), copy.deepcopy(net)
    quantize_lstm_(q8, QLSTMConfig(bits=8))
    quantize_lstm_(q2, QLSTMConfig(bits=2))
    assert fp > 0.9
    assert abs(acc(q8) - fp) <= 0.01
    assert acc(q2) < acc(q8)


def test_unbatched_projection_and_packed_inputs() -> None:
    # metric: max abs difference vs nn.LSTM with the dequantised weights (to_float); tolerance 1e-6
    from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence

    torch.manual_seed(6)
    q = QuantizedLSTM.from_float(nn.LSTM(3, 5, proj_size=2, bidirectional=True))
    ref = q.to_float()
    x = torch.randn(7, 3)  # unbatched
    with torch.no_grad():
        assert q(x)[0].shape == (7, 4)
        assert (q(x)[0] - ref(x)[0]).abs().max().item() < 1e-6
        packed = pack_padded_sequence(torch.randn(4, 2, 3), [4, 2])
        out = q(packed)[0]
        assert isinstance(out, PackedSequence)
        assert (out.data - ref(packed)[0].data).abs().max().item() < 1e-6


# --------------------------------------------------------------------------- ORT int8 deployment
def test_dynamic_quantize_uint8_hand_computed() -> None:
    # metric: exact equality with a hand computation of ORT's rule (min/max widened to 0, scale = range/255,
    # zero point and values rounded half to even)
    from torchslim.quantization.lstm import dynamic_quantize_uint8

    q, s = dynamic_quantize_uint8(torch.tensor([-1.0, 0.0, 3.0, 1.0]))
    scale = 4.0 / 255.0  # range [-1, 3]
    zp = round(1.0 / scale)  # 63.75 -> 64
    assert abs(float(s) - scale) < 1e-9
    assert [int(v) for v in q] == [max(0, round(-1 / scale) + zp) - zp, 0, min(255, round(3 / scale) + zp) - zp,
                                   round(1 / scale)]
    # all-positive input: min widened to 0, zero point 0; constant zero input: scale 1
    q2, s2 = dynamic_quantize_uint8(torch.tensor([0.5, 2.0]))
    assert int(q2[1]) == 255 and abs(float(s2) - 2.0 / 255) < 1e-9
    q3, s3 = dynamic_quantize_uint8(torch.zeros(3))
    assert float(s3) == 1.0 and bool((q3 == 0).all())


def _qmodel(bits: int, bidirectional: bool, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.rnn = nn.LSTM(6, 16, num_layers=2, batch_first=True, bidirectional=bidirectional)
            self.fc = nn.Linear(16 * (2 if bidirectional else 1), 5)

        def forward(self, x: Tensor) -> Tensor:
            return self.fc(self.rnn(x)[0][:, -1])

    net = Net().eval()
    quantize_lstm_(net, QLSTMConfig(bits=bits, activations="dynamic_uint8"))
    return net


def test_dynamic_sim_matches_hand_written_integer_recurrence() -> None:
    # metric: max abs diff between the simulation and an independent float64 re-implementation of the integer
    # recurrence (per-call input quantisation, per-step hidden quantisation); tolerance 1e-5
    from torchslim.quantization.lstm import dynamic_quantize_uint8

    torch.manual_seed(7)
    q: Any = QuantizedLSTM.from_float(nn.LSTM(4, 8, batch_first=True), QLSTMConfig(activations="dynamic_uint8"))
    x = torch.randn(3, 5, 4)
    w_ih = q.weight_ih_l0_int8.double() * q.weight_ih_l0_scale.double()[:, None]
    w_hh = q.weight_hh_l0_int8.double() * q.weight_hh_l0_scale.double()[:, None]
    b = q.bias_l0.double()
    qx, sx = dynamic_quantize_uint8(x.transpose(0, 1).reshape(15, 4))
    xw = (qx.double() * float(sx)) @ w_ih.T
    h = torch.zeros(3, 8, dtype=torch.float64)
    c = torch.zeros(3, 8, dtype=torch.float64)
    ref = []
    for t in range(5):
        qh, sh = dynamic_quantize_uint8(h.float())
        i, f, g, o = (xw[t * 3 : (t + 1) * 3] + (qh.double() * float(sh)) @ w_hh.T + b).chunk(4, dim=1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(c)
        ref.append(h)
    with torch.no_grad():
        out, (hn, cn) = q(x)
    assert (out.double() - torch.stack(ref, 1)).abs().max().item() < 1e-5
    assert (hn[0].double() - h).abs().max().item() < 1e-5 and (cn[0].double() - c).abs().max().item() < 1e-5
    # and it stays close to the weight-only (float activation) model: max abs diff < 0.05
    q.activations = "float"
    with torch.no_grad():
        assert (q(x)[0] - out).abs().max().item() < 0.05


@pytest.mark.parametrize(("bits", "bidirectional", "weight_dtype"), [(8, False, "auto"), (7, True, "auto"),
                                                                      (8, True, "uint8")])
def test_onnx_export_runs_int8_in_ort_and_matches_simulation(bits: int, bidirectional: bool,
                                                             weight_dtype: str) -> None:
    # Parity check of every exported quantised LSTM: PyTorch simulation vs ONNX Runtime on 48 inputs.
    # metric: max abs logit diff < 1e-3, top-1 agreement 1.0, cosine > 0.99999. Float rounding (ORT's
    # approximate sigmoid/tanh) can move one activation across a rounding boundary: hence 1e-3, not 1e-7.
    import numpy as np
    import onnx

    from torchslim.export.parity import check_parity
    from torchslim.quantization.lstm import export_qlstm_onnx

    net = _qmodel(bits, bidirectional)
    x = torch.randn(48, 7, 6)
    with tempfile.TemporaryDirectory() as d:
        p = export_qlstm_onnx(net, x[:2], Path(d) / "q.onnx", weight_dtype=weight_dtype)  # type: ignore[arg-type]
        proto = onnx.load(str(p))
        rep = check_parity(net, p, x, threads=1)
    ops = [n.op_type for n in proto.graph.node]
    assert ops.count("DynamicQuantizeLSTM") == 2 and "LSTM" not in ops
    # the integers ORT runs are ours: layer 0 W, gate blocks reordered (i,f,g,o) -> (i,o,f,c), transposed
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in proto.graph.initializer}
    node = next(n for n in proto.graph.node if n.op_type == "DynamicQuantizeLSTM")
    w_ort = inits[node.input[1]].astype(np.int16) - (128 if inits[node.input[1]].dtype == np.uint8 else 0)
    rnn: Any = net.get_submodule("rnn")
    ours = rnn.weight_ih_l0_int8.numpy().astype(np.int16)
    h = 16
    expect = np.concatenate([ours[k * h : (k + 1) * h] for k in (0, 3, 1, 2)]).T
    assert np.array_equal(w_ort[0], expect)
    assert np.allclose(inits[node.input[8]][0], np.concatenate(
        [rnn.weight_ih_l0_scale.numpy()[k * h : (k + 1) * h] for k in (0, 3, 1, 2)]))
    assert inits[node.input[1]].dtype == (np.int8 if (weight_dtype == "auto" and bits <= 7) else np.uint8)
    assert rep.max_abs_diff < 1e-3 and rep.top1_agreement == 1.0 and rep.cosine > 0.99999


def test_ort_export_bad_input() -> None:
    from torchslim.quantization.lstm import export_qlstm_onnx

    with pytest.raises(UnsupportedModelError, match="no QuantizedLSTM"):
        export_qlstm_onnx(nn.Sequential(nn.Linear(2, 2)), torch.randn(1, 2), "/tmp/never.onnx")
    with pytest.raises(UnsupportedModelError, match="projection"):
        QuantizedLSTM.from_float(nn.LSTM(3, 8, proj_size=4), QLSTMConfig(activations="dynamic_uint8"))
    with pytest.raises(ConfigError):
        QLSTMConfig(activations="int4")  # type: ignore[arg-type]
