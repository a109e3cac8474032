"""BatchNorm folding: same outputs (allclose 1e-5), no BatchNorm left."""

from __future__ import annotations

import torch
from torch import nn

from torchslim.quantization.fold import fold_batchnorm


def _randomise_bn(model: nn.Module) -> None:
    g = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            n = m.num_features
            assert m.running_mean is not None and m.running_var is not None
            m.running_mean.copy_(torch.randn(n, generator=g))
            m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            m.weight.data.copy_(torch.randn(n, generator=g))
            m.bias.data.copy_(torch.randn(n, generator=g))


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 16, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(16)
        self.conv2 = nn.Conv2d(16, 16, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(16)
        self.fc = nn.Linear(16, 8)
        self.bn3 = nn.BatchNorm1d(8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn(self.conv(x)))
        x = torch.relu(self.bn2(self.conv2(x)) + x)
        return self.bn3(self.fc(x.mean((2, 3))))


def test_fold_equal_outputs_and_no_bn_left():
    """Folded model == original in eval mode (allclose atol 1e-5); all three BatchNorms gone; original untouched."""
    torch.manual_seed(0)
    model = Net().eval()
    _randomise_bn(model)
    x = torch.randn(4, 3, 8, 8)
    with torch.no_grad():
        ref = model(x)
        folded = fold_batchnorm(model)
        out = folded(x)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    assert not any(isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)) for m in folded.modules())
    assert model.conv.bias is None and isinstance(model.bn, nn.BatchNorm2d)


def test_bn_not_after_conv_is_kept():
    """A BatchNorm whose input is not a Conv/Linear output stays (outputs still allclose 1e-6)."""
    model = nn.Sequential(nn.ReLU(), nn.BatchNorm2d(3)).eval()
    _randomise_bn(model)
    x = torch.randn(2, 3, 4, 4)
    folded = fold_batchnorm(model)
    assert any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    torch.testing.assert_close(folded(x), model(x), atol=1e-6, rtol=0)
