"""Group and instance norms: `group` and `instance` on `(T, B, C)` sequences, `group2d` and
`instance2d` on `(B, C, H, W)` maps.

`group` normalises each token over the C/G channels of each group; `instance` each sentence and
channel over that sentence's real tokens (zero output at padding). Both sequence norms are fused
kernels (see `normrepro.norms.kernels`); the image ones are torch's GroupNorm and InstanceNorm2d
with the registry's shape checks.
"""

from __future__ import annotations

import torch
from torch import nn

from normrepro.norms.common import _affine, _check_img, _check_seq, _compute_dtype
from normrepro.norms.kernels import _colsum, _Kernel, _no_autocast

__all__ = ["SeqGroupNorm", "SeqInstanceNorm", "GroupNorm2d", "InstanceNorm2d"]


class SeqGroupNorm(nn.Module):
    """GroupNorm applied per token: C split into `num_groups` groups, each normalised alone."""

    def __init__(self, num_features: int, num_groups: int = 4, eps: float = 1e-5,
                 affine: bool = True):
        super().__init__()
        if num_features % num_groups:
            raise ValueError(f"group norm: C={num_features} is not divisible by num_groups={num_groups}")
        self.num_features, self.num_groups, self.eps = num_features, num_groups, eps
        self.weight = nn.Parameter(torch.ones(num_features)) if affine else None
        self.bias = nn.Parameter(torch.zeros(num_features)) if affine else None

    def forward(self, x, pad_mask=None):  # noqa: D102
        _check_seq(self, x, pad_mask)
        T, B, C = x.shape
        x2d = x.reshape(T * B, C).to(_compute_dtype(x, self.weight))
        w, b = _affine(self.weight, self.bias, C, x2d)
        return _GroupNormFn.apply(x2d, w, b, self.eps, self.num_groups).reshape(T, B, C)


class SeqInstanceNorm(nn.Module):
    """InstanceNorm for sequences: per sentence and channel, over that sentence's real tokens.

    This is what "instance norm" means for a (B, C, T) signal; transformer LayerNorm is *not* it
    (LayerNorm normalises each token over its C features).
    """

    def __init__(self, num_features: int, eps: float = 1e-5, affine: bool = True):
        super().__init__()
        self.num_features, self.eps = num_features, eps
        self.weight = nn.Parameter(torch.ones(num_features)) if affine else None
        self.bias = nn.Parameter(torch.zeros(num_features)) if affine else None

    def forward(self, x, pad_mask=None):  # noqa: D102
        _check_seq(self, x, pad_mask)
        xf = x.to(_compute_dtype(x, self.weight)).contiguous()
        w, b = _affine(self.weight, self.bias, x.shape[-1], xf)
        return _InstanceNormFn.apply(xf, pad_mask, w, b, self.eps)


# GroupNorm, per token: (N, C) rows, G groups of K = C/G channels; the kernels keep each group's
# Σx and Σ(x − mean)².

def _gn_fwd(x, weight, bias, *, eps: float, groups: int):
    N, C = x.shape
    K = C // groups
    xv = x.view(N, groups, K)
    s1 = xv.sum(-1, keepdim=True)
    xc = xv - s1 / K
    s2 = (xc * xc).sum(-1, keepdim=True)
    return (xc * torch.rsqrt(s2 / K + eps)).view(N, C) * weight + bias, s1, s2


def _gn_bwd(gy, x, s1, s2, weight, *, eps: float, groups: int):
    N, C = x.shape
    K = C // groups
    # mean and 1/std per group, also returned to be buffers (see `_colsum`)
    mean, rstd = s1 / K, torch.rsqrt(s2 / K + eps)
    xhat = (x.view(N, groups, K) - mean) * rstd
    g = (gy * weight).view(N, groups, K)
    gx = rstd * (g - g.mean(-1, keepdim=True) - xhat * (g * xhat).mean(-1, keepdim=True))
    return gx.view(N, C), _colsum(gy * xhat.view(N, C)), _colsum(gy), mean, rstd


_GN_FWD, _GN_BWD = _Kernel(_gn_fwd), _Kernel(_gn_bwd)


class _GroupNormFn(torch.autograd.Function):
    """Per-row GroupNorm on (N, C); backward by hand from the saved group sums."""

    @staticmethod
    def forward(ctx, x, weight, bias, eps, groups):
        with _no_autocast(x.device.type):
            y, s1, s2 = _GN_FWD(x, weight, bias, eps=eps, groups=groups)
        ctx.save_for_backward(x, s1, s2, weight)
        ctx.eps, ctx.groups = eps, groups
        return y

    @staticmethod
    def backward(ctx, gy):
        x, s1, s2, weight = ctx.saved_tensors
        with _no_autocast(gy.device.type):
            gx, gweight, gbias, _, _ = _GN_BWD(gy.contiguous(), x, s1, s2, weight, eps=ctx.eps,
                                               groups=ctx.groups)
        return (gx, gweight if ctx.needs_input_grad[1] else None,
                gbias if ctx.needs_input_grad[2] else None, None, None)


# InstanceNorm for sequences: (T, B, C), statistics over the real tokens of each sentence.

def _real_tokens(pad_mask, x):
    """(T, B, 1) weights in x's dtype: 1 at real tokens, 0 at padding."""
    T, B = x.shape[0], x.shape[1]
    if pad_mask is None:
        return x.new_ones(T, B, 1)
    return (~pad_mask).t().unsqueeze(-1).to(x.dtype)


def _in_fwd(x, pad_mask, weight, bias, *, eps: float):
    m = _real_tokens(pad_mask, x)
    n = m.sum(0).clamp_min(1.0)  # real tokens per sentence (at least 1)
    # One pass for the mean and variance, about the sentence's first token (see `kernels._moments`).
    p = x[0] * m[0]
    d = (x - p) * m
    s1, s2 = _colsum(d, block=8), _colsum(d * (x - p), block=8)
    shift = s1 / n
    mean = p + shift
    rstd = torch.rsqrt((s2 - s1 * shift).clamp_min(0.0) / n + eps)
    return (x - mean) * m * (rstd * weight) + bias * m, mean, rstd


def _in_bwd(gy, x, pad_mask, mean, rstd, weight):
    m = _real_tokens(pad_mask, x)
    n = m.sum(0).clamp_min(1.0)
    xhat = (x - mean) * rstd * m
    g = gy * m
    sg, sgz = _colsum(g, block=8), _colsum(g * xhat, block=8)  # per sentence and channel
    # the BN gradient within each sentence, zero at padding
    gx = (g - sg / n - xhat * (sgz / n)) * (rstd * weight) * m
    return gx, sgz.sum(0), sg.sum(0)


_IN_FWD, _IN_BWD = _Kernel(_in_fwd), _Kernel(_in_bwd)


class _InstanceNormFn(torch.autograd.Function):
    """y = m·(w·(x − μ_b)/√(σ²_b + ε) + b) per sentence b and channel over its real tokens, on
    (T, B, C) with pad_mask (B, T) or None; backward by hand (exact gradient, zero at padding)."""

    @staticmethod
    def forward(ctx, x, pad_mask, weight, bias, eps):
        with _no_autocast(x.device.type):
            y, mean, rstd = _IN_FWD(x, pad_mask, weight, bias, eps=eps)
        ctx.save_for_backward(x, pad_mask, mean, rstd, weight)
        return y

    @staticmethod
    def backward(ctx, gy):
        x, pad_mask, mean, rstd, weight = ctx.saved_tensors
        with _no_autocast(gy.device.type):
            gx, gweight, gbias = _IN_BWD(gy.contiguous(), x, pad_mask, mean, rstd, weight)
        return (gx, None, gweight if ctx.needs_input_grad[2] else None,
                gbias if ctx.needs_input_grad[3] else None, None)


class GroupNorm2d(nn.GroupNorm):
    """GroupNorm over C/G channels and all positions of one sample."""

    def __init__(self, num_features: int, num_groups: int = 4, eps: float = 1e-5,
                 affine: bool = True):
        if num_features % num_groups:
            raise ValueError(f"group2d: C={num_features} is not divisible by num_groups={num_groups}")
        super().__init__(num_groups, num_features, eps=eps, affine=affine)
        self.num_features = num_features

    def forward(self, x):  # noqa: D102
        _check_img(self, x)
        return super().forward(x)


class InstanceNorm2d(nn.InstanceNorm2d):
    """InstanceNorm over H×W of one sample and channel (affine by default, no running stats)."""

    def __init__(self, num_features: int, eps: float = 1e-5, affine: bool = True):
        super().__init__(num_features, eps=eps, affine=affine)

    def forward(self, x):  # noqa: D102
        _check_img(self, x)
        return super().forward(x)
