"""Per-token norms: `layer` and `rms` on `(T, B, C)` sequences, `layer2d` on `(B, C, H, W)` maps.

Each token (image position) is normalised over its own C channels, so padding cannot reach a
real token and `pad_mask` is checked and otherwise ignored. `layer` and `layer2d` are torch's
LayerNorm; `rms` (no mean subtraction) is a fused kernel (see `normrepro.norms.kernels`; on CPU
in float32 the one-pass kernels of `normrepro.norms.native`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from normrepro.norms import native
from normrepro.norms.common import _check_img, _check_seq, _compute_dtype
from normrepro.norms.kernels import _Kernel, _ln_sum, _no_autocast

__all__ = ["SeqLayerNorm", "SeqRMSNorm", "LayerNorm2d"]


class SeqLayerNorm(nn.LayerNorm):
    """LayerNorm over C for each token; `pad_mask` is accepted and ignored (per-token statistics
    cannot see other tokens, padding or not)."""

    def __init__(self, num_features: int, eps: float = 1e-5, affine: bool = True):
        super().__init__(num_features, eps=eps, elementwise_affine=affine)
        self.num_features = num_features

    def forward(self, x, pad_mask=None):  # noqa: D102
        _check_seq(self, x, pad_mask)
        return F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)


class SeqRMSNorm(nn.Module):
    """RMSNorm over C for each token (no mean subtraction)."""

    def __init__(self, num_features: int, eps: float = 1e-5, affine: bool = True):
        super().__init__()
        self.num_features, self.eps = num_features, eps
        self.weight = nn.Parameter(torch.ones(num_features)) if affine else None

    def forward(self, x, pad_mask=None):  # noqa: D102
        _check_seq(self, x, pad_mask)
        T, B, C = x.shape
        x2d = x.reshape(T * B, C).to(_compute_dtype(x, self.weight))
        w = self.weight if self.weight is not None else x2d.new_ones(C)
        return _RMSNormFn.apply(x2d, w, self.eps).reshape(T, B, C)


# RMSNorm, per token: (N, C) rows. The forward returns each row's 1/RMS (a kernel output, so a
# buffer written once per row; computed inline, its square root would be redone for every 16
# floats of the row, which cost a quarter of the forward and of the backward), and the backward
# reuses it, for the input gradient and for the weight's gradient Σ gy·x/RMS over the rows,
# which ATen's LayerNorm backward takes (`_ln_sum`) in less time than a column-sum loop in the
# kernel.

def _rms_fwd(x, weight, *, eps: float):
    rstd = torch.rsqrt((x * x).mean(-1, keepdim=True) + eps)
    return x * rstd * weight, rstd


def _rms_bwd(gy, x, rstd, weight):
    xhat = x * rstd
    g = gy * weight
    # d/dx of x·r with r = (mean x² + ε)^(-1/2): r·(g − x̂·mean(g·x̂))
    return rstd * (g - xhat * (g * xhat).mean(-1, keepdim=True))


_RMS_FWD, _RMS_BWD = _Kernel(_rms_fwd), _Kernel(_rms_bwd)


class _RMSNormFn(torch.autograd.Function):
    """y = x / √(mean_C x² + ε) · w on (N, C) rows; backward by hand from the saved 1/RMS."""

    @staticmethod
    def forward(ctx, x, weight, eps):
        ctx.native = native.usable(x, weight)
        if ctx.native:  # (CPU, float32: the one-pass kernels of `normrepro.norms.native`)
            y, rstd = native.rms_forward(x, weight, eps)
        else:
            with _no_autocast(x.device.type):
                y, rstd = _RMS_FWD(x, weight, eps=eps)
        ctx.save_for_backward(x, rstd, weight)
        return y

    @staticmethod
    def backward(ctx, gy):
        x, rstd, weight = ctx.saved_tensors
        gy = gy.contiguous()
        if ctx.native:
            gx, gweight = native.rms_backward(gy, x, rstd, weight)
            return gx, gweight if ctx.needs_input_grad[1] else None, None
        with _no_autocast(gy.device.type):
            gx = _RMS_BWD(gy, x, rstd, weight)
            gweight = _ln_sum(gy, x, rstd, weight) if ctx.needs_input_grad[1] else None
        return gx, gweight, None


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over C at each spatial position of a (B, C, H, W) map (ConvNeXt's choice)."""

    def __init__(self, num_features: int, eps: float = 1e-6, affine: bool = True):
        super().__init__(num_features, eps=eps, elementwise_affine=affine)
        self.num_features = num_features

    def forward(self, x):  # noqa: D102
        _check_img(self, x)
        y = F.layer_norm(x.permute(0, 2, 3, 1), self.normalized_shape, self.weight, self.bias,
                         self.eps)
        return y.permute(0, 3, 1, 2)
