"""End-to-end static PTQ on a small residual CNN trained on scikit-learn digits (upsampled to 16x16):
fidelity, ORT parity, int8 kernels, errors."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from torchslim.core.errors import ConfigError, NumericalError
from torchslim.quantization import Phase, StaticPTQ, quantize_static, sqnr_db
from torchslim.quantization.static import ActFakeQuant, WeightQuantWrapper

ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")


class Block(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.down: nn.Module | None = None
        if stride != 1 or cin != cout:
            self.down = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        idt = x if self.down is None else self.down(x)
        y = F.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return F.relu(y + idt)


class SmallResNet(nn.Module):
    """16/32 channels, two residual blocks, max-pool, global average pool, linear head."""

    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        self.pool0 = nn.MaxPool2d(2)
        self.layer1 = Block(16, 16, 1)
        self.layer2 = Block(16, 32, 2)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(32, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool0(self.stem(x))
        x = self.layer2(self.layer1(x))
        return self.fc(torch.flatten(self.pool(x), 1))


def _digits() -> tuple[torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0
    x = F.interpolate(x, size=(16, 16), mode="bilinear", align_corners=False)
    x = (x - 0.3) / 0.4
    return x, torch.tensor(d.target, dtype=torch.long)


@pytest.fixture(scope="session")
def digits_data() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    x, y = _digits()
    g = torch.Generator().manual_seed(0)
    perm = torch.randperm(x.shape[0], generator=g)
    x, y = x[perm], y[perm]
    return x[:1400], y[:1400], x[1400:], y[1400:]


@pytest.fixture(scope="session")
def trained_resnet(digits_data) -> nn.Module:  # type: ignore[no-untyped-def]
    """SmallResNet trained 300 steps (batch 32, Adam) on 1400 digits; > 90% held-out accuracy."""
    torch.set_num_threads(1)
    torch.manual_seed(0)
    xtr, ytr, _, _ = digits_data
    model = SmallResNet()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(1)
    model.train()
    for _ in range(300):
        idx = torch.randint(0, xtr.shape[0], (32,), generator=g)
        loss = F.cross_entropy(model(xtr[idx]), ytr[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


@pytest.fixture(scope="module")
def quantized(trained_resnet, digits_data):  # type: ignore[no-untyped-def]
    torch.set_num_threads(1)
    xtr, _, _, _ = digits_data
    return quantize_static(trained_resnet, StaticPTQ(num_calibration=256), xtr, progress=False)


@pytest.fixture(scope="module")
def exported(quantized, digits_data, tmp_path_factory):  # type: ignore[no-untyped-def]
    xtr = digits_data[0]
    return quantized.export_onnx(tmp_path_factory.mktemp("q") / "model_int8.onnx", xtr[:1])


def test_float_model_is_accurate(trained_resnet, digits_data):  # type: ignore[no-untyped-def]
    """Sanity of the fixture: held-out accuracy >= 0.85."""
    _, _, xte, yte = digits_data
    with torch.no_grad():
        acc = float((trained_resnet(xte).argmax(1) == yte).float().mean())
    assert acc >= 0.85


def test_sim_sqnr_and_accuracy(quantized, trained_resnet, digits_data):  # type: ignore[no-untyped-def]
    """SQNR of the simulation vs float logits >= 30 dB; accuracy drop <= 1 point on held-out digits."""
    _, _, xte, yte = digits_data
    with torch.no_grad():
        ref = trained_resnet(xte)
        sim = quantized.sim(xte)
    assert sqnr_db(ref, sim) >= 30.0
    acc_f = float((ref.argmax(1) == yte).float().mean())
    acc_q = float((sim.argmax(1) == yte).float().mean())
    assert acc_q >= acc_f - 0.01


def test_quantisation_points(quantized):  # type: ignore[no-untyped-def]
    """Every Conv/Linear is weight-quantised; ReLU outputs have zero point 0 (so ORT can drop the ReLU)."""
    sim = quantized.sim
    wrappers = [m for m in sim.modules() if isinstance(m, WeightQuantWrapper)]
    assert len(wrappers) == 7  # stem, 2 + 2 convs, 1 downsample, fc
    assert all(float(w.scale.min()) > 0 for w in wrappers)
    fqs = {n: m for n, m in sim.named_modules() if isinstance(m, ActFakeQuant)}
    assert all(m.phase is Phase.CONVERT for m in fqs.values())
    code = sim.code
    for line in code.splitlines():
        if "relu" in line and "= " in line:
            name = line.split("=")[0].strip()
            for n, m in fqs.items():
                if f"self.{n}({name})" in code:
                    assert int(m.zero_point) == 0, f"{n} after {name}"
    # max-pool shares its input's parameters
    shared = [m for m in fqs.values() if m.shares is not None]
    assert shared and all(float(m.scale) == float(fqs[m.shares].scale) for m in shared)


def test_export_is_int8_qdq(exported):  # type: ignore[no-untyped-def]
    """Weights stored as int8 initializers, biases int32, activations uint8 Q/DQ (exact type checks)."""
    from onnx import TensorProto

    model = onnx.load(str(exported))
    inits = {t.name: t for t in model.graph.initializer}
    conv_like = [n for n in model.graph.node if n.op_type in ("Conv", "Gemm")]
    assert len(conv_like) == 7
    producers = {o: n for n in model.graph.node for o in n.output}
    for node in conv_like:
        dq_w = producers[node.input[1]]
        assert dq_w.op_type == "DequantizeLinear"
        assert inits[dq_w.input[0]].data_type == TensorProto.INT8
        dq_b = producers[node.input[2]]
        assert inits[dq_b.input[0]].data_type == TensorProto.INT32
    float_weights = [
        t for t in model.graph.initializer if t.data_type == TensorProto.FLOAT and len(t.dims) >= 2
    ]
    assert not float_weights
    q_act = [n for n in model.graph.node if n.op_type == "QuantizeLinear"]
    assert q_act and all(inits[n.input[2]].data_type == TensorProto.UINT8 for n in q_act)


def test_ort_fuses_int8_kernels(exported):  # type: ignore[no-untyped-def]
    """After ORT optimisation: QLinearConv for every conv, QLinearAdd for both residual adds, no float Conv."""
    from torchslim.quantization.onnx_qdq import ort_optimized_op_counts

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ops = ort_optimized_op_counts(exported)
    assert ops.get("QLinearConv", 0) == 6, ops
    assert ops.get("QLinearAdd", 0) == 2, ops
    assert ops.get("Conv", 0) == 0 and ops.get("FusedConv", 0) == 0, ops
    assert ops.get("QGemm", 0) + ops.get("QLinearMatMul", 0) == 1, ops


def test_parity_sim_vs_ort(quantized, exported, digits_data):  # type: ignore[no-untyped-def]
    """ORT int8 vs the fake-quant simulation: top-1 agreement >= 0.99, cosine >= 0.999."""
    _, _, xte, _ = digits_data
    p = quantized.parity(exported, xte)
    assert p.top1_agreement >= 0.99, p
    assert p.cosine >= 0.999, p


def test_dynamic_batch(exported, digits_data):  # type: ignore[no-untyped-def]
    """The exported model accepts other batch sizes (shape check)."""
    sess = ort.InferenceSession(str(exported), providers=["CPUExecutionProvider"])
    out = sess.run(None, {"input": digits_data[2][:5].numpy()})[0]
    assert out.shape == (5, 10)


def test_exclude_leaves_layer_float(trained_resnet, digits_data):  # type: ignore[no-untyped-def]
    """exclude globs keep those Conv/Linear modules un-wrapped (exact structure check)."""
    xtr = digits_data[0]
    q = quantize_static(
        trained_resnet, StaticPTQ(exclude=["fc", "layer2.down*"], num_calibration=64), xtr, progress=False
    )
    assert isinstance(q.sim.get_submodule("fc"), nn.Linear)
    assert set(q.excluded) == {"fc", "layer2.down.0"}
    assert isinstance(q.sim.get_submodule("layer1.conv1"), WeightQuantWrapper)


def test_unsupported_layer_warns_and_stays_float(digits_data, tmp_path):  # type: ignore[no-untyped-def]
    """A layer type we do not quantise is left in float with a warning naming its module path; the exported
    model keeps it as a float op and ORT matches the simulation (cosine > 0.999, top-1 agreement >= 0.98)."""
    model = nn.Sequential(nn.Conv2d(1, 16, 3), nn.Sigmoid(), nn.Flatten(), nn.Linear(16 * 14 * 14, 10)).eval()
    with pytest.warns(UserWarning, match=r"1 \(Sigmoid\)"):
        q = quantize_static(model, StaticPTQ(num_calibration=32), digits_data[0], progress=False)
    assert q.unsupported == ["1 (Sigmoid)"]
    with torch.no_grad():
        assert sqnr_db(model(digits_data[0][:64]), q.sim(digits_data[0][:64])) >= 25.0
    path = q.export_onnx(tmp_path / "sigmoid.onnx", digits_data[0][:2])
    assert "Sigmoid" in {n.op_type for n in onnx.load(str(path)).graph.node}
    par = q.parity(path, digits_data[2][:128])
    assert par.cosine > 0.999 and par.top1_agreement >= 0.98, par


def test_calibration_errors(trained_resnet):  # type: ignore[no-untyped-def]
    """Empty calibration set -> ConfigError; fewer than MIN_CALIBRATION_SAMPLES -> ConfigError; NaN/Inf ->
    NumericalError naming the first bad sample. All raised before the model is traced (prepare not called)."""
    from torchslim.quantization import static

    def no_work(*a, **k):  # type: ignore[no-untyped-def]
        raise AssertionError("bad calibration data must fail before any work")

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(static, "prepare", no_work)
        with pytest.raises(ConfigError, match="calibration set is empty"):
            quantize_static(trained_resnet, StaticPTQ(), [], progress=False)
        with pytest.raises(ConfigError, match=f"too small \\(8 samples.*at least {static.MIN_CALIBRATION_SAMPLES}"):
            quantize_static(trained_resnet, StaticPTQ(), torch.randn(8, 1, 16, 16), progress=False)
        bad = torch.randn(8, 1, 16, 16)
        bad[2, 0, 3, 3] = float("nan")
        with pytest.raises(NumericalError, match="NaN or Inf \\(first at sample 2\\)"):
            quantize_static(trained_resnet, StaticPTQ(), bad, progress=False)
        inf = [torch.randn(64, 1, 16, 16), torch.randn(64, 1, 16, 16)]
        inf[1][7, 0, 0, 0] = float("inf")
        with pytest.raises(NumericalError, match="sample 71"):
            quantize_static(trained_resnet, StaticPTQ(), inf, progress=False)


def test_iterable_calibration_and_limit(trained_resnet, digits_data):  # type: ignore[no-untyped-def]
    """An iterable of (x, y) batches works and at most num_calibration samples are used (exact count)."""
    xtr, ytr, _, _ = digits_data
    batches = [(xtr[i : i + 50], ytr[i : i + 50]) for i in range(0, 500, 50)]
    q = quantize_static(trained_resnet, StaticPTQ(num_calibration=120), batches, progress=False)
    assert q.num_calibration == 120


def test_config_round_trip_and_validation():
    """StaticPTQ round-trips through dict/YAML; bad values raise ConfigError naming the field."""
    cfg = StaticPTQ(activations="uint8", granularity="per_tensor", exclude=["fc"])
    assert StaticPTQ.from_yaml(cfg.to_yaml()) == cfg
    assert cfg.to_dict()["type"] == "static_ptq"
    with pytest.raises(ConfigError, match="activations"):
        StaticPTQ(activations="int4")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="calibrator"):
        StaticPTQ(calibrator="kl")  # type: ignore[arg-type]


def test_per_tensor_and_int8_activations(trained_resnet, digits_data):  # type: ignore[no-untyped-def]
    """Per-tensor weights and int8 activations still simulate the float model closely (SQNR >= 25 dB)."""
    xtr, _, xte, _ = digits_data
    for cfg in (
        StaticPTQ(granularity="per_tensor", num_calibration=128),
        StaticPTQ(activations="int8", num_calibration=128),
    ):
        q = quantize_static(trained_resnet, cfg, xtr, progress=False)
        with torch.no_grad():
            assert sqnr_db(trained_resnet(xte), q.sim(xte)) >= 25.0, cfg


@pytest.mark.parametrize("reduce_range,limit", [(True, 63), (False, 127)])
def test_reduce_range_weight_bits(trained_resnet, digits_data, reduce_range, limit):  # type: ignore[no-untyped-def]
    """reduce_range=True keeps integer weights in [-63, 63] (no int16 saturation in ORT's AVX2 U8S8 kernel);
    False uses the full symmetric int8 range [-127, 127] (exact bounds; the largest weight hits the bound)."""
    q = quantize_static(
        trained_resnet,
        StaticPTQ(num_calibration=64, reduce_range=reduce_range),
        digits_data[0],
        progress=False,
    )
    for m in q.sim.modules():
        if isinstance(m, WeightQuantWrapper):
            iw = m.int_weight()
            assert int(iw.abs().max()) == limit


def test_relu6_is_fused_like_relu(tmp_path):  # type: ignore[no-untyped-def]
    """MobileNet's ReLU6: no 'unsupported' warning, ORT drops the Clip and runs both convs in int8,
    and ORT matches the simulation (cosine > 0.999)."""
    from torchslim.quantization.onnx_qdq import ort_optimized_op_counts

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU6(), nn.Conv2d(8, 4, 3)).eval()
    x = torch.randn(64, 3, 12, 12)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        q = quantize_static(model, StaticPTQ(), x, progress=False)
    assert q.unsupported == []
    path = q.export_onnx(tmp_path / "m.onnx", x[:2])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ops = ort_optimized_op_counts(path)
    assert ops.get("QLinearConv", 0) == 2 and ops.get("Clip", 0) == 0, ops
    assert q.parity(path, x).cosine > 0.999
