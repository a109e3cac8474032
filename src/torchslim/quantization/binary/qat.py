"""Quantisation-aware training with least-squares binary quantisation (weights and activations).

The training of Pouransari, Tu, Tuzel, *Least squares binary quantization of neural networks* (CVPR-W 2020,
2001.02786), on top of the closed forms of :mod:`torchslim.quantization.binary.lsbq`:

* **Forward.** :class:`LSBQConv2d` / :class:`LSBQLinear` compute ``layer(Q_x(x), Q_w(W))``. ``Q_w`` applies
  the chosen scheme (``1bit`` | ``ternary`` | ``2bit`` (LS optimal) | ``greedy`` | ``fp``) per output channel,
  its scales recomputed from the current weights at every forward pass. ``Q_x`` applies a scheme to the
  input activations *per sample* (one set of scales per image, computed on the fly, as in the paper), after an
  optional symmetric clamp ``[-act_clamp, act_clamp]`` (the paper's ImageNet runs clamp at 3). With
  ``act_scales="running"`` the per-sample scales are used in training and an exponential moving average of
  their batch mean (``momentum``) replaces them in ``eval()`` mode (the paper's cheaper inference variant).
* **Backward (the paper's STE, ``ste="paper"``).** Every scheme is a sum of scaled signs of residuals,
  ``x_hat = sum_i c_i sign(r_i)``, ``r_1 = x``, ``r_{i+1} = r_i - c_i sign(r_i)`` (1-bit: ``c = [a]``;
  ternary: ``c = [a/2, a/2]``; 2-bit: ``c = [a1, a2]``; greedy: ``c = [a_1..a_k]``). The scales ``c_i`` are
  constants (no gradient) and each ``sign`` passes its gradient straight through where ``|r_i| <= ste_clip``
  (1 in the paper) and blocks it outside. The chain rule then gives
  ``d x_hat / d x = 1 - prod_i (1 - c_i 1[|r_i| <= ste_clip])`` (``= a 1[|x| <= 1]`` for 1-bit).
  ``ste="identity"`` is the plain clipped STE, ``d x_hat / d x = 1[|x| <= ste_clip]``.
* The forward value is *exactly* the closed-form quantiser (:func:`~.lsbq.lsbq_quantize`); the STE graph only
  supplies the gradient.

:func:`prepare_lsbq_qat` swaps the Conv2d/Linear layers of a model for these modules; by default the first
and the last layer stay in full precision, as in the paper.

Note: symmetric {-1, +1} codes suit *signed* inputs; quantise the input of a layer after BatchNorm (the
XNOR-Net block order BN -> quantise -> conv -> ReLU that the paper uses), not right after a ReLU (a 1-bit
quantiser maps every non-negative value to ``+a``).

Example::

    import torch
    from torch import nn
    from torchslim.quantization.binary.qat import LSBQQAT, prepare_lsbq_qat
    model = nn.Sequential(nn.Conv2d(1, 8, 3), nn.BatchNorm2d(8), nn.Conv2d(8, 8, 3), nn.Flatten(),
                          nn.Linear(8 * 4 * 4, 10))
    prepare_lsbq_qat(model, LSBQQAT(weight_scheme="1bit", act_scheme="2bit"))
    print(type(model[2]).__name__)                  # LSBQConv2d (first and last layers stay nn.*)
    loss = model(torch.randn(4, 1, 8, 8)).sum()
    loss.backward()                                  # STE gradients reach model[2].weight
"""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from torchslim.core.config import Config
from torchslim.core.errors import ConfigError
from torchslim.quantization.binary.lsbq import binary_1bit, greedy_kbit, ls_2bit, ternary
from torchslim.quantization.weights import FilterFn

QScheme = Literal["fp", "1bit", "ternary", "2bit", "greedy"]

__all__ = [
    "LSBQQAT",
    "LSBQConv2d",
    "LSBQLinear",
    "ActivationQuantizer",
    "lsbq_qat_quantize",
    "prepare_lsbq_qat",
    "scheme_coefficients",
    "sign_sum",
]

_SCHEMES = ("fp", "1bit", "ternary", "2bit", "greedy")


class LSBQQAT(Config):
    """Least-squares binary QAT settings (weights and activations).

    * ``weight_scheme`` / ``act_scheme``: ``fp`` (no quantisation) | ``1bit`` | ``ternary`` | ``2bit`` (LS
      optimal) | ``greedy`` (``bits`` residual terms).
    * ``bits``: number of binary terms of the ``greedy`` scheme (>= 1).
    * ``ste``: ``paper`` (sign STE per binary term, scales as constants) or ``identity`` (clipped identity).
    * ``ste_clip``: gradient blocked where the sign argument's magnitude exceeds it (paper: 1).
    * ``act_clamp``: symmetric clamp of the activations before quantisation (``None``: no clamp).
    * ``act_scales``: ``per_sample`` (optimal scales of each sample, train and eval; the paper's default) or
      ``running`` (per-sample in training, moving average of the batch-mean scales in eval).
    * ``momentum``: weight of the old value in the moving average.
    * ``keep_first`` / ``keep_last``: leave the first / last Conv2d-Linear layer in full precision.
    """

    type_name = "lsbq_qat"
    weight_scheme: QScheme = "1bit"
    act_scheme: QScheme = "2bit"
    bits: int = 2
    ste: Literal["paper", "identity"] = "paper"
    ste_clip: float = 1.0
    act_clamp: float | None = None
    act_scales: Literal["per_sample", "running"] = "per_sample"
    momentum: float = 0.99
    keep_first: bool = True
    keep_last: bool = True


def _check(cfg: LSBQQAT) -> None:
    if cfg.bits < 1:
        raise ConfigError(f"LSBQQAT.bits must be >= 1 (greedy terms), got {cfg.bits}")
    if cfg.ste_clip <= 0:
        raise ConfigError(f"LSBQQAT.ste_clip must be > 0, got {cfg.ste_clip}")
    if cfg.act_clamp is not None and cfg.act_clamp <= 0:
        raise ConfigError(f"LSBQQAT.act_clamp must be > 0 or None, got {cfg.act_clamp}")
    if not 0.0 <= cfg.momentum < 1.0:
        raise ConfigError(f"LSBQQAT.momentum must be in [0, 1), got {cfg.momentum}")


def scheme_coefficients(rows: Tensor, scheme: QScheme, bits: int = 2) -> tuple[Tensor, Tensor]:
    """Closed-form quantisation of each row of ``rows`` ``[R, N]`` and its sign-sum coefficients ``[R, K]``.

    Returns ``(q, c)``: ``q`` the closed-form quantised rows (:mod:`.lsbq`) and ``c`` the scales such that
    ``q = sign_sum(rows, c)`` (up to ties): 1-bit ``[a]``, ternary ``[a/2, a/2]``, 2-bit ``[a1, a2]``, greedy
    ``[a_1, ..., a_bits]``.

    Example::

        >>> import torch
        >>> x = torch.tensor([[0.1, -0.4, 2.0, -3.0]])
        >>> q, c = scheme_coefficients(x, "2bit")
        >>> bool(torch.allclose(sign_sum(x, c), q))
        True
    """
    if scheme == "1bit":
        q, a = binary_1bit(rows, per_channel=True)
        return q, a[:, None]
    if scheme == "ternary":
        q, a = ternary(rows, per_channel=True)
        half = (a / 2)[:, None]
        return q, torch.cat([half, half], dim=1)
    if scheme == "2bit":
        return ls_2bit(rows, per_channel=True)
    if scheme == "greedy":
        return greedy_kbit(rows, bits, per_channel=True)
    raise ValueError(f"lsbq_qat: no coefficients for scheme {scheme!r}; use one of {_SCHEMES[1:]}")


class _SignSTE(torch.autograd.Function):
    """``sign`` with ``sign(0) = +1``; gradient passed where ``|x| <= clip``, zero outside."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, clip: float) -> Tensor:
        ctx.save_for_backward(x)
        ctx.clip = clip
        return torch.where(x >= 0, torch.ones_like(x), -torch.ones_like(x))

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        (x,) = ctx.saved_tensors
        return grad * (x.abs() <= ctx.clip).to(grad.dtype), None


def sign_sum(rows: Tensor, coeffs: Tensor, ste_clip: float = 1.0) -> Tensor:
    """``sum_i c_i sign(r_i)`` with ``r_1 = rows``, ``r_{i+1} = r_i - c_i sign(r_i)``, row-wise.

    ``coeffs`` ``[R, K]`` (or ``[1, K]`` / ``[K]`` broadcast to every row) are treated as constants; each sign
    has the clipped straight-through gradient (``|r_i| <= ste_clip``). Given scales, this is the
    nearest-level quantiser of the schemes of :func:`scheme_coefficients`.

    Example::

        >>> import torch
        >>> sign_sum(torch.tensor([[0.2, -1.5]]), torch.tensor([[1.0, 0.5]]))
        tensor([[ 0.5000, -1.5000]])
    """
    c = coeffs.detach()
    if c.dim() == 1:
        c = c[None, :]
    out = torch.zeros_like(rows)
    res = rows
    for i in range(c.shape[1]):
        step = c[:, i : i + 1] * _SignSTE.apply(res, ste_clip)
        out = out + step
        res = rows - out
    return out


def lsbq_qat_quantize(
    x: Tensor, scheme: QScheme, bits: int = 2, ste: str = "paper", ste_clip: float = 1.0
) -> tuple[Tensor, Tensor | None]:
    """Row-wise (dim 0) closed-form quantisation of ``x`` with the STE gradient; returns ``(x_q, coeffs)``.

    The value of ``x_q`` is exactly :func:`~.lsbq.lsbq_quantize` ``(x, scheme, per_channel=True, bits)``;
    its gradient is the paper's sign STE (``ste="paper"``) or the clipped identity (``ste="identity"``).
    ``scheme="fp"`` returns ``(x, None)``.

    Example::

        >>> import torch
        >>> w = torch.tensor([[0.5, -0.25]], requires_grad=True)
        >>> q, c = lsbq_qat_quantize(w, "1bit")
        >>> q.sum().backward()
        >>> w.grad                               # a * 1[|w| <= 1], a = mean|w| = 0.375
        tensor([[0.3750, 0.3750]])
    """
    if scheme == "fp":
        return x, None
    if scheme not in _SCHEMES:
        raise ValueError(f"lsbq_qat: unknown scheme {scheme!r}; use one of {_SCHEMES}")
    if ste not in ("paper", "identity"):
        raise ValueError(f"lsbq_qat: unknown ste {ste!r}; use 'paper' or 'identity'")
    rows = x.reshape(x.shape[0], -1) if x.dim() > 1 else x.reshape(1, -1)
    q, c = scheme_coefficients(rows.detach(), scheme, bits)
    if ste == "paper":
        g = sign_sum(rows, c, ste_clip)
        grad_path = g - g.detach()
    else:
        grad_path = (rows - rows.detach()) * (rows.detach().abs() <= ste_clip).to(rows.dtype)
    return (q + grad_path).reshape(x.shape), c


class ActivationQuantizer(nn.Module):
    """Per-sample least-squares binary quantiser of activations (optionally with running scales for eval).

    Example::

        >>> import torch
        >>> aq = ActivationQuantizer("1bit")
        >>> y = aq(torch.tensor([[1.0, -3.0], [0.5, 0.5]]))
        >>> y                                     # per sample: a = mean|x| of that sample
        tensor([[ 2.0000, -2.0000],
                [ 0.5000,  0.5000]])
    """

    running_coeffs: Tensor
    num_batches_tracked: Tensor

    def __init__(
        self,
        scheme: QScheme = "2bit",
        bits: int = 2,
        ste: Literal["paper", "identity"] = "paper",
        ste_clip: float = 1.0,
        clamp: float | None = None,
        scales: Literal["per_sample", "running"] = "per_sample",
        momentum: float = 0.99,
    ) -> None:
        super().__init__()
        if scheme not in _SCHEMES:
            raise ValueError(f"ActivationQuantizer: unknown scheme {scheme!r}; use one of {_SCHEMES}")
        if scales not in ("per_sample", "running"):
            raise ValueError(f"ActivationQuantizer: scales must be 'per_sample' or 'running', got {scales!r}")
        self.scheme: QScheme = scheme
        self.bits = bits
        self.ste = ste
        self.ste_clip = ste_clip
        self.clamp = clamp
        self.scales = scales
        self.momentum = momentum
        k = {"fp": 0, "1bit": 1, "ternary": 2, "2bit": 2, "greedy": bits}[scheme]
        self.register_buffer("running_coeffs", torch.zeros(k))
        self.register_buffer("num_batches_tracked", torch.zeros((), dtype=torch.long))

    def forward(self, x: Tensor) -> Tensor:
        if self.clamp is not None:
            x = x.clamp(-self.clamp, self.clamp)
        if self.scheme == "fp":
            return x
        if self.scales == "running" and not self.training:
            if int(self.num_batches_tracked) == 0:
                raise RuntimeError(
                    "ActivationQuantizer: scales='running' but no training batch was seen; train first or use "
                    "scales='per_sample'"
                )
            rows = x.reshape(x.shape[0], -1)
            return sign_sum(rows, self.running_coeffs, self.ste_clip).reshape(x.shape)
        q, c = lsbq_qat_quantize(x, self.scheme, self.bits, self.ste, self.ste_clip)
        if self.scales == "running" and self.training and c is not None:
            with torch.no_grad():
                batch = c.mean(dim=0)
                if int(self.num_batches_tracked) == 0:
                    self.running_coeffs.copy_(batch)
                else:
                    self.running_coeffs.mul_(self.momentum).add_(batch, alpha=1.0 - self.momentum)
                self.num_batches_tracked += 1
        return q

    def extra_repr(self) -> str:
        return f"scheme={self.scheme}, clamp={self.clamp}, scales={self.scales}"


class _LSBQMixin:
    weight: Tensor
    act_quant: ActivationQuantizer
    weight_scheme: QScheme
    bits: int
    ste: str
    ste_clip: float

    def _setup(self, cfg: LSBQQAT) -> None:
        _check(cfg)
        self.weight_scheme = cfg.weight_scheme
        self.bits = cfg.bits
        self.ste = cfg.ste
        self.ste_clip = cfg.ste_clip
        self.act_quant = ActivationQuantizer(
            cfg.act_scheme, cfg.bits, cfg.ste, cfg.ste_clip, cfg.act_clamp, cfg.act_scales, cfg.momentum
        )

    def quantized_weight(self) -> Tensor:
        """The weight as used in the forward pass (per-output-channel closed form, STE gradient)."""
        return lsbq_qat_quantize(self.weight, self.weight_scheme, self.bits, self.ste, self.ste_clip)[0]


class LSBQConv2d(_LSBQMixin, nn.Conv2d):
    """``Conv2d`` computing ``conv(Q_x(x), Q_w(W)) + b`` (bias in full precision). Build with :meth:`from_float`.

    Example::

        >>> import torch
        >>> from torch import nn
        >>> q = LSBQConv2d.from_float(nn.Conv2d(4, 8, 3), LSBQQAT(weight_scheme="ternary"))
        >>> q(torch.randn(2, 4, 6, 6)).shape
        torch.Size([2, 8, 4, 4])
    """

    def __init__(self, *args: Any, config: LSBQQAT | None = None, **kwargs: Any) -> None:
        nn.Conv2d.__init__(self, *args, **kwargs)
        self._setup(config or LSBQQAT())

    @classmethod
    def from_float(cls, conv: nn.Conv2d, config: LSBQQAT) -> LSBQConv2d:
        """A copy of ``conv`` (same weights, bias, stride, padding...) with LSBQ quantisation."""
        if conv.padding_mode != "zeros":
            raise ValueError(f"LSBQConv2d: padding_mode {conv.padding_mode!r} is not supported; use 'zeros'")
        new = cls(
            conv.in_channels,
            conv.out_channels,
            conv.kernel_size,
            stride=conv.stride,
            padding=conv.padding,
            dilation=conv.dilation,
            groups=conv.groups,
            bias=conv.bias is not None,
            config=config,
            device=conv.weight.device,
            dtype=conv.weight.dtype,
        )
        with torch.no_grad():
            new.weight.copy_(conv.weight)
            if conv.bias is not None and new.bias is not None:
                new.bias.copy_(conv.bias)
        return new

    def forward(self, x: Tensor) -> Tensor:
        return F.conv2d(
            self.act_quant(x),
            self.quantized_weight(),
            self.bias,
            self.stride,
            self.padding,
            self.dilation,
            self.groups,
        )


class LSBQLinear(_LSBQMixin, nn.Linear):
    """``Linear`` computing ``Q_x(x) Q_w(W)^T + b`` (bias in full precision). Build with :meth:`from_float`.

    Activations are quantised per sample over all trailing dimensions. Example::

        >>> import torch
        >>> from torch import nn
        >>> q = LSBQLinear.from_float(nn.Linear(16, 4), LSBQQAT(weight_scheme="2bit", act_scheme="1bit"))
        >>> q(torch.randn(3, 16)).shape
        torch.Size([3, 4])
    """

    def __init__(self, *args: Any, config: LSBQQAT | None = None, **kwargs: Any) -> None:
        nn.Linear.__init__(self, *args, **kwargs)
        self._setup(config or LSBQQAT())

    @classmethod
    def from_float(cls, lin: nn.Linear, config: LSBQQAT) -> LSBQLinear:
        """A copy of ``lin`` (same weights and bias) with LSBQ quantisation."""
        new = cls(
            lin.in_features,
            lin.out_features,
            bias=lin.bias is not None,
            config=config,
            device=lin.weight.device,
            dtype=lin.weight.dtype,
        )
        with torch.no_grad():
            new.weight.copy_(lin.weight)
            if lin.bias is not None and new.bias is not None:
                new.bias.copy_(lin.bias)
        return new

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(self.act_quant(x), self.quantized_weight(), self.bias)


def _set_child(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, attr = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, attr, new)


def prepare_lsbq_qat(model: nn.Module, config: LSBQQAT, filter_fn: FilterFn | None = None) -> list[str]:
    """Swap the Conv2d/Linear layers of ``model`` (in place) for :class:`LSBQConv2d` / :class:`LSBQLinear`.

    Layers are taken in ``named_modules`` order; ``config.keep_first`` / ``config.keep_last`` keep the first /
    last of them in full precision, and ``filter_fn(name, module)`` (if given) must accept a layer for it to
    be swapped. Returns the names of the swapped layers. Raises ``ValueError`` when nothing is swapped.

    Example::

        >>> from torch import nn
        >>> m = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Linear(8, 8), nn.Linear(8, 2))
        >>> prepare_lsbq_qat(m, LSBQQAT())
        ['2']
    """
    _check(config)
    if isinstance(model, nn.Conv2d | nn.Linear):
        raise ValueError(
            "prepare_lsbq_qat: the model is a single layer and cannot be swapped in place; wrap it in "
            "nn.Sequential or use LSBQConv2d.from_float / LSBQLinear.from_float"
        )
    layers = [
        (n, m)
        for n, m in model.named_modules()
        if isinstance(m, nn.Conv2d | nn.Linear) and not isinstance(m, _LSBQMixin)
    ]
    if not layers:
        raise ValueError("prepare_lsbq_qat: the model has no Conv2d/Linear layer")
    candidates = layers[1 if config.keep_first else 0 : len(layers) - 1 if config.keep_last else len(layers)]
    swapped: list[str] = []
    for name, mod in candidates:
        if filter_fn is not None and not filter_fn(name, mod):
            continue
        if isinstance(mod, nn.Conv2d):
            new: nn.Module = LSBQConv2d.from_float(mod, config)
        else:
            new = LSBQLinear.from_float(mod, config)
        new.train(mod.training)
        _set_child(model, name, new)
        swapped.append(name)
    if not swapped:
        raise ValueError(
            f"prepare_lsbq_qat: no layer swapped ({len(layers)} Conv2d/Linear found; keep_first="
            f"{config.keep_first}, keep_last={config.keep_last}); set keep_first/keep_last=False or check filter_fn"
        )
    return swapped
