"""PowerNorm: `power_vanilla` (PN-V, the paper's plain quadratic-mean norm) and `power` (PN, as
the official code computes it), on `(T, B, C)` sequences.

Both compute ψ²_B, the per-channel quadratic mean, over the non-pad tokens only. `power_vanilla`
outputs zeros at padding positions; `power` keeps the official code's unmasked output.

PowerNorm (`power`) follows the official implementation (sIncerass/powernorm,
`fairseq/modules/norms/mask_powernorm.py`) rather than the paper's text. Where they differ:

1. **GroupScaling first.** Each token is divided by the root of the mean of its squared features
   within each of `group_num` channel groups (the official code passes the number of attention
   heads). The paper's Algorithm 2 does not mention it. Its backward is the exact gradient.
2. **Warm-up on batch statistics.** For the first `warmup_iters` training steps the forward pass
   normalises with the batch quadratic mean ψ²_B, not the running ψ²; the paper's Algorithm 2
   always uses the running statistic.
3. **Running statistic.** During warm-up (t < warmup_iters) running_phi first becomes the
   cumulative average of the ψ²_B seen so far, and then, in every step including those, the
   exponential average α_fwd·running_phi + (1−α_fwd)·ψ²_B is applied on top (the official code
   has no `else` between the two updates; we keep that).
4. **Batch ψ in the backward pass.** The input gradient is divided by √(ψ²_B + ε), the batch
   statistic of the current step, whereas Algorithm 2 divides by the running ψ_{t−1}.
5. **Masked forward, unmasked backward statistics.** ψ²_B is computed over non-pad tokens only,
   but the backward moving average `ema_gz` averages approx·z over all B×T positions, padding
   included, as the official code does.

The paper's ν_t in Algorithm 2 is (1−α_bkw)·ema_gz: the official update
ema_gz ← ema_gz + mean(approx·z) equals ν_t = ν_{t−1}(1 − (1−α)Γ) + (1−α)Λ with Γ = mean(z²) and
Λ = mean(g·z); `tests/norms/test_norms.py` checks this step by step.

`power` runs as fused kernels (see `normrepro.norms.kernels`); `power_vanilla` is plain autograd
and records its batch statistic like the BN family (see "Batch-statistic recording" in
`normrepro.norms.batch`).
"""

from __future__ import annotations

import torch
from torch import nn

from normrepro.norms.common import _as_float, _check_seq, _real_weights, _vec_dist
from normrepro.norms.kernels import _colsum, _Kernel, _no_autocast, _real_rows

__all__ = ["PowerNormVanilla", "PowerNorm"]


# --------------------------------------------------------------------------------------------
# PowerNorm, vanilla (PN-V)

class PowerNormVanilla(nn.Module):
    """PN-V: z = x / √(ψ²_B + ε) with ψ²_B the per-channel mean of x² over non-pad tokens.

    Ordinary autograd (gradients flow through ψ²_B); a running ψ² (momentum `momentum`) is used
    in eval. Padding positions output zero.
    """

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float = 0.1,
                 affine: bool = True):
        super().__init__()
        self.num_features, self.eps, self.momentum = num_features, eps, momentum
        self.weight = nn.Parameter(torch.ones(num_features), requires_grad=affine)
        self.bias = nn.Parameter(torch.zeros(num_features), requires_grad=affine)
        self.register_buffer("running_phi", torch.ones(num_features))
        self.record_stats = False  # see "Batch-statistic recording" in `normrepro.norms.batch`
        self.last_stats: dict[str, torch.Tensor] = {}

    def forward(self, x, pad_mask=None):  # noqa: D102
        _check_seq(self, x, pad_mask)
        T, B, C = x.shape
        x2d = _as_float(x, self.weight).reshape(T * B, C)
        m = _real_weights(x2d.view(T, B, C), pad_mask)
        if self.training:
            n_real = m.sum()
            phi = torch.mv((x2d * x2d).t(), m) / n_real.clamp_min(1.0)
            if self.record_stats:
                self._record(phi, n_real)
            with torch.no_grad():
                mom = self.momentum * (n_real > 0).to(phi.dtype)
                self.running_phi.mul_(1 - mom).add_(mom * phi.detach())
        else:
            phi = self.running_phi
        z = x2d * torch.rsqrt(phi + self.eps)
        y = torch.addcmul(self.bias, z, self.weight) * m.unsqueeze(1)
        return y.reshape(T, B, C)

    def _record(self, phi: torch.Tensor, n_real: torch.Tensor) -> None:
        # Called before the running update, so ψ² is the value from before this step.
        record = {"n": n_real.detach().clone(), "psi_dist": _vec_dist(phi.detach(), self.running_phi)}
        if phi.requires_grad:
            def grab(grad, record=record):
                record["g_psi"] = grad.norm() / grad.numel()
            phi.register_hook(grab)
        self.last_stats = record


# --------------------------------------------------------------------------------------------
# PowerNorm, faithful to the official code (PN)

def _pn_fwd(x, pad_mask, weight, bias, running_phi, t, *, eps: float, alpha_fwd: float,
            group_num: int, warmup_iters: int):
    N, C = x.shape
    K = C // group_num
    m1 = _real_rows(pad_mask, N, x)  # m1 and r: returned, so buffers (see `_colsum`)
    n_real = m1.sum()
    xv = x.reshape(N, group_num, K)
    # GroupScaling: divide each token by the RMS of its channel group.
    r = torch.rsqrt((xv * xv).mean(-1, keepdim=True) + eps)
    xs = (xv * r).reshape(N, C)
    # Masked quadratic mean; with no real token, fall back on the running value (no information).
    psi_b = torch.where(n_real > 0, _colsum(xs * xs * m1) / n_real.clamp_min(1.0), running_phi)
    phi_used = torch.where(t <= warmup_iters, psi_b, running_phi)
    # The per-channel factors 1/√(φ + ε) are kernel outputs, so buffers: inline, their square
    # roots would be recomputed for every 16 floats of every row (in the backward too).
    inv_phi, inv_psi = torch.rsqrt(phi_used + eps), torch.rsqrt(psi_b + eps)
    y = xs * inv_phi * weight + bias
    # Running statistic: cumulative average during warm-up, then (no `else`, as upstream) the EMA.
    tf = t.to(x.dtype)
    rp = torch.where(t < warmup_iters, running_phi * (tf - 1) / tf + psi_b / tf, running_phi)
    rp = alpha_fwd * rp + (1 - alpha_fwd) * psi_b
    return y, m1, r, inv_psi, inv_phi, rp


def _pn_bwd(gy, x, r, inv_psi, inv_phi, weight, ema_gz, *, alpha_bkw: float, group_num: int):
    N, C = x.shape
    K = C // group_num
    xsv = x.reshape(N, group_num, K) * r
    xs = xsv.reshape(N, C)
    z = xs * inv_phi
    gweight = _colsum(gy * z)
    gbias = _colsum(gy)
    # approx = g − ν z with g = gy·w and ν = (1 − α_bkw)·ema_gz from before this step
    approx = gy * weight - ((1 - alpha_bkw) * ema_gz) * z
    # ema_gz += mean over all N positions (padding included, as upstream) of approx·z
    new_ema = ema_gz + _colsum(approx * z) / N
    # divided by the *batch* statistic, as upstream
    gxs = (approx * inv_psi).reshape(N, group_num, K)
    # GroupScaling backward: dx = r · (gxs − xs · mean_group(gxs·xs))
    gx = ((gxs - xsv * (gxs * xsv).mean(-1, keepdim=True)) * r).reshape(N, C)
    return gx, gweight, gbias, new_ema


_PN_FWD, _PN_BWD = _Kernel(_pn_fwd), _Kernel(_pn_bwd)


class _PowerNormFn(torch.autograd.Function):
    """GroupScaling + PowerFunction of the official code, fused, on (N, C) rows.

    Inputs: x (N, C) in (T, B) row order; pad_mask (B, T) or None; weight, bias; the buffers
    running_phi and ema_gz (C,), updated in place; t = the 1-based step (tensor).
    """

    @staticmethod
    def forward(ctx, x, pad_mask, weight, bias, running_phi, ema_gz, t, eps, alpha_fwd,
                alpha_bkw, warmup_iters, group_num):
        with _no_autocast(x.device.type):
            y, _, r, inv_psi, inv_phi, rp = _PN_FWD(
                x, pad_mask, weight, bias, running_phi, t, eps=eps, alpha_fwd=alpha_fwd,
                group_num=group_num, warmup_iters=warmup_iters)
        running_phi.copy_(rp)
        ctx.save_for_backward(x, r, inv_psi, inv_phi, weight, ema_gz)
        ctx.consts = (alpha_bkw, group_num)
        return y

    @staticmethod
    def backward(ctx, gy):
        x, r, inv_psi, inv_phi, weight, ema_gz = ctx.saved_tensors
        alpha_bkw, group_num = ctx.consts
        with _no_autocast(gy.device.type):
            gx, gweight, gbias, new_ema = _PN_BWD(
                gy.contiguous(), x, r, inv_psi, inv_phi, weight, ema_gz, alpha_bkw=alpha_bkw,
                group_num=group_num)
        ema_gz.copy_(new_ema)
        return (gx, None, gweight if ctx.needs_input_grad[2] else None,
                gbias if ctx.needs_input_grad[3] else None) + (None,) * 8


class PowerNorm(nn.Module):
    """PowerNorm as the official code computes it (see the module docstring for the differences
    from the paper). Buffers: `running_phi` (init 1), `ema_gz` (init 0), `iters` (init 0)."""

    def __init__(self, num_features: int, eps: float = 1e-5, alpha_fwd: float = 0.9,
                 alpha_bkw: float = 0.9, warmup_iters: int = 10000, group_num: int = 1,
                 affine: bool = True):
        super().__init__()
        if num_features % group_num:
            raise ValueError(f"power norm: C={num_features} is not divisible by group_num={group_num}")
        self.num_features, self.eps = num_features, eps
        self.alpha_fwd, self.alpha_bkw = alpha_fwd, alpha_bkw
        self.warmup_iters, self.group_num = int(warmup_iters), int(group_num)
        self.weight = nn.Parameter(torch.ones(num_features), requires_grad=affine)
        self.bias = nn.Parameter(torch.zeros(num_features), requires_grad=affine)
        self.register_buffer("running_phi", torch.ones(num_features))
        self.register_buffer("ema_gz", torch.zeros(num_features))
        self.register_buffer("iters", torch.tensor(0, dtype=torch.long))

    def extra_repr(self) -> str:
        return (f"{self.num_features}, eps={self.eps}, alpha_fwd={self.alpha_fwd}, "
                f"alpha_bkw={self.alpha_bkw}, warmup_iters={self.warmup_iters}, "
                f"group_num={self.group_num}")

    def group_scale(self, x2d: torch.Tensor) -> torch.Tensor:
        N, C = x2d.shape
        xv = x2d.view(N, self.group_num, C // self.group_num)
        return (xv * torch.rsqrt(xv.pow(2).mean(-1, keepdim=True) + self.eps)).view(N, C)

    def forward(self, x, pad_mask=None):  # noqa: D102
        _check_seq(self, x, pad_mask)
        T, B, C = x.shape
        x2d = _as_float(x, self.weight).reshape(T * B, C)
        if not self.training:
            z = self.group_scale(x2d) * torch.rsqrt(self.running_phi + self.eps)
            return torch.addcmul(self.bias, z, self.weight).reshape(T, B, C)
        self.iters.add_(1)
        y = _PowerNormFn.apply(x2d, pad_mask, self.weight, self.bias, self.running_phi,
                               self.ema_gz, self.iters, self.eps, self.alpha_fwd, self.alpha_bkw,
                               self.warmup_iters, self.group_num)
        return y.reshape(T, B, C)
