"""The norm-layer registry: every normalisation used by both replications, keyed by a string.

`create_norm(name, num_features, **kwargs)` builds a module; `get_norm_layer(name)` returns a
callable `(num_features, **kwargs)` usable as timm's `norm_layer`; `NORM_NAMES` lists the names.

Two families, by input layout:

* Sequence norms take fairseq's `(T, B, C)` layout and are called `norm(x, pad_mask=None)` with
  `pad_mask` of shape `(B, T)`, True at padding. Names: `layer`, `batch`, `bn_official`,
  `sync_batch`, `power_vanilla`, `power`, `rms`, `group`, `instance`, `dyt`.
* Image norms take `(B, C, H, W)`: `layer2d` (LayerNorm over C at each position, as in ConvNeXt),
  `batch2d`, `sync_batch2d`, `group2d`, `instance2d`, `dyt2d`.

Which axes each one reduces over (the "normalisation cube"; verified by perturbation tests):

=============  ======================================  ==========================================
name           statistics computed over                one statistic per
=============  ======================================  ==========================================
layer          C                                       token (t, b)
rms            C (no mean subtraction)                 token (t, b)
group          C/G channels of one group               token and group
instance       T (non-pad positions of one sentence)   sentence and channel (b, c)
batch          T x B (all non-pad tokens of the batch)  channel
bn_official    T x B, padding filled with the real mean channel (after scaling each token by its
                                                       root mean square over C; see its docstring)
sync_batch     T x B of every worker in the group      channel
power(_vanilla) T x B (non-pad; quadratic mean only)   channel
layer2d        C                                       position (b, h, w)
batch2d        B x H x W                               channel
sync_batch2d   B x H x W of every worker in the group  channel
group2d        C/G x H x W                             sample and group
instance2d     H x W                                   sample and channel
dyt, dyt2d     nothing: γ·tanh(α·x) + β, element-wise  element (Dynamic Tanh, `norm_dyt`)
=============  ======================================  ==========================================

Masked batch statistics (`batch`, `power_vanilla`, `power` forward) use only non-pad tokens, so
padding changes neither the statistics nor the output at real tokens. `batch`,
`power_vanilla` and `instance` output zeros at padding positions, so that their gradients are exact
gradients of a function of the real tokens; `power` keeps the official code's unmasked output.

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
Λ = mean(g·z); `tests/test_norms.py` checks this step by step.

`batch`, `bn_official` (training), `power`, `rms`, `group` and `instance` run as fused autograd
functions: one compiled forward and one compiled backward kernel each (`torch.compile`; the same
code runs eagerly when compilation is unavailable, under `eager_kernels()` or with
`NORMREPRO_COMPILE=0`), with hand-written backward passes that reuse the forward's statistics.
Both paths are checked against straightforward float64 references and transcriptions of the
official code in the tests. On CPU a forward is a statistics pass and an output pass, a backward
a column-sum pass and an input-gradient pass (LayerNorm: one pass each way).

**Synchronised BatchNorm** (`sync_batch`, `sync_batch2d`). `torch.nn.SyncBatchNorm` (and so
Lightning's `sync_batchnorm=True`) refuses CPU modules, so these are our own: in a training forward
each worker computes its per-channel count, mean and sum of squared deviations (M2), one
all-reduce combines them over the process group (`process_group=`, default: the whole world) with
Chan's parallel formula (stable, unlike E[x²] − E[x]² in float32), and the backward all-reduces
the two per-channel gradient sums Σ g and Σ g·x̂ that the BN input gradient needs. Weight and
bias gradients stay local (DDP averages them like any other parameter's). Outside an initialised
process group, with a group of one worker, and in eval mode they run exactly `batch` / `batch2d`
(the parent class's forward); they work with gloo (CPU) and NCCL (GPU).

**Batch-statistic recording** (the PowerNorm paper's fluctuation analysis). `batch`, `batch2d`,
their sync variants and `power_vanilla` have an attribute `record_stats` (False by default:
forward then costs one attribute check). When it is True, each training forward stores in
`module.last_stats` (0-dim tensors, d = C): `n` (elements per channel), for BN `mu_dist` =
(1/d)‖μ_B − μ‖ and `var_dist` = (1/d)‖σ²_B − σ²‖ with μ, σ² the running statistics before this
step's update (σ²_B biased, the running σ² unbiased, as torch keeps them), and for PN-V `psi_dist` = (1/d)‖ψ²_B − ψ²‖; the backward adds the norms of the
loss gradient with respect to the batch statistics, `g_mu` = (1/d)‖∂L/∂μ_B‖ and `g_var` =
(1/d)‖∂L/∂σ²_B‖ (BN) or `g_psi` = (1/d)‖∂L/∂ψ²_B‖ (PN-V). BN computes them in closed form from the
sums its backward already has (∂L/∂μ_B = −w·rstd·Σg, ∂L/∂σ²_B = −½·w·rstd²·Σg·x̂, summed over
the whole, synchronised batch), through an eager path that replaces the fused kernel only while
recording; PN-V reads ∂L/∂ψ²_B with a tensor hook. `normrepro.insights.fluctuation` switches this
on for chosen layers and writes the records to CSV.
"""

from __future__ import annotations

import contextlib
import inspect
import os
import types
import warnings
from typing import Callable

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from normrepro.norm_dyt import DyT, DyT2d

__all__ = ["NORM_NAMES", "SEQUENCE_NORMS", "IMAGE_NORMS", "create_norm", "get_norm_layer",
           "is_sequence_norm", "register_norm", "records_stats", "eager_kernels"]


# --------------------------------------------------------------------------------------------
# input checks shared by every module

def _check_seq(module: nn.Module, x: torch.Tensor, pad_mask: torch.Tensor | None) -> None:
    if x.dim() != 3:
        raise ValueError(
            f"{type(module).__name__} expects a (T, B, C) sequence tensor, got shape "
            f"{tuple(x.shape)}; images use the '2d' variants (e.g. 'batch2d')"
        )
    if x.shape[-1] != module.num_features:
        raise ValueError(
            f"{type(module).__name__} was built for C={module.num_features} channels but the "
            f"input has C={x.shape[-1]} (shape {tuple(x.shape)}, layout (T, B, C))"
        )
    if pad_mask is not None:
        if pad_mask.shape != (x.shape[1], x.shape[0]):
            raise ValueError(
                f"pad_mask must have shape (B, T) = ({x.shape[1]}, {x.shape[0]}) for input "
                f"(T, B, C) = {tuple(x.shape)}, got {tuple(pad_mask.shape)}"
            )
        if pad_mask.dtype != torch.bool:
            raise ValueError(f"pad_mask must be a bool tensor (True at padding), got {pad_mask.dtype}")


def _check_img(module: nn.Module, x: torch.Tensor) -> None:
    if x.dim() != 4:
        raise ValueError(
            f"{type(module).__name__} expects a (B, C, H, W) image tensor, got shape "
            f"{tuple(x.shape)}; sequences use the names without '2d' (e.g. 'batch')"
        )
    if x.shape[1] != module.num_features:
        raise ValueError(
            f"{type(module).__name__} was built for C={module.num_features} channels but the "
            f"input has C={x.shape[1]} (shape {tuple(x.shape)}, layout (B, C, H, W))"
        )


def _real_weights(x: torch.Tensor, pad_mask: torch.Tensor | None) -> torch.Tensor:
    """(T*B,) float weights: 1 at real tokens, 0 at padding, in x's flattened (T, B) order."""
    T, B = x.shape[0], x.shape[1]
    if pad_mask is None:
        return x.new_ones(T * B)
    return (~pad_mask).t().reshape(T * B).to(x.dtype)


# --------------------------------------------------------------------------------------------
# per-token sequence norms

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


# --------------------------------------------------------------------------------------------
# fused kernels: pure tensor functions, compiled by torch.compile when available

_COMPILE_MODE = os.environ.get("NORMREPRO_COMPILE", "auto").lower()  # auto | 1 | 0
_FORCE_EAGER = False  # set by `eager_kernels()`
_KERNELS: list["_Kernel"] = []  # every kernel, in definition order (the tests run each both ways)
# Inductor writes an elementwise intermediate with several readers to memory once it reads more
# than a few inputs; these kernels are memory-bound, so recomputing it in each loop is cheaper
# than a full (N, C) write and read (e.g. the head and tail of `_colsum` both read it).
_INDUCTOR_OPTIONS = {"realize_reads_threshold": 64, "realize_opcount_threshold": 256,
                     "realize_acc_reads_threshold": 64}


@contextlib.contextmanager
def eager_kernels():
    """Run the fused kernels eagerly inside this block (same code, same numbers, no compile).

    For many tiny calls (the insights probes, float64 analyses) compiling costs seconds and gains
    nothing.
    """
    global _FORCE_EAGER
    before, _FORCE_EAGER = _FORCE_EAGER, True
    try:
        yield
    finally:
        _FORCE_EAGER = before


def _specialised(fn, static: dict):
    """`fn` with `static` bound as keyword defaults, on a copy of its code object.

    Dynamo keeps one cache (and one recompile limit) per code object. A `functools.partial`
    would put every kernel and configuration behind torch.compile's one wrapper code object, so
    that all of them share a cache, and a process with many of them (the test suite) hits the
    limit and silently falls back to eager; a copy per configuration keeps them apart.
    """
    bound = types.FunctionType(fn.__code__.replace(), fn.__globals__, fn.__name__, fn.__defaults__,
                               fn.__closure__)
    bound.__kwdefaults__ = dict(static)
    return bound


class _Kernel:
    """A pure tensor function run through `torch.compile` (one fused loop per reduction on CPU,
    Triton kernels on GPU), falling back to eager PyTorch if compilation is unavailable.

    Tensors are positional, with every dimension but the last (the channels) marked dynamic
    (1-D tensors and bool masks: all of them);
    keyword arguments are static (eps, alphas, group count) and get one compiled kernel per
    distinct value, so the generated loops know the group size and stay vectorised.
    `NORMREPRO_COMPILE=0` forces eager, `=1` makes a compile failure an error, and the context
    manager `eager_kernels()` forces eager within a block. Both paths run the same code, and the
    tests check both against independent references.
    """

    def __init__(self, fn):
        self.fn = fn
        self._compiled: dict = {}
        self._failed = _COMPILE_MODE in ("0", "false", "no", "off")
        _KERNELS.append(self)

    @property
    def active(self) -> bool:
        """True once a compiled kernel has run (False: the eager fallback is in use)."""
        return bool(self._compiled) and not self._failed

    def __call__(self, *tensors, **static):
        if self._failed or _FORCE_EAGER or torch.compiler.is_compiling():
            return self.fn(*tensors, **static)
        key = tuple(sorted(static.items()))
        if key not in self._compiled:
            # Every static configuration is one cache entry of the same frame: leave room for many.
            cfg = torch._dynamo.config
            name = "recompile_limit" if hasattr(cfg, "recompile_limit") else "cache_size_limit"
            setattr(cfg, name, max(getattr(cfg, name), 64))
            self._compiled[key] = torch.compile(_specialised(self.fn, static), dynamic=False,
                                                fullgraph=True, options=_INDUCTOR_OPTIONS)
        for t in tensors:
            if not isinstance(t, torch.Tensor):
                continue
            # Token dims (N, or T and B) vary between batches; the channel dim never does
            # (a bool tensor is a (B, T) pad mask: both vary).
            dims = t.dim() if t.dim() < 2 or t.dtype == torch.bool else t.dim() - 1
            for d in range(dims):
                if t.shape[d] > 1:
                    torch._dynamo.maybe_mark_dynamic(t, d)
        try:
            return self._compiled[key](*tensors)
        except Exception as exc:  # pragma: no cover - depends on the machine's toolchain
            if _COMPILE_MODE in ("1", "true", "yes", "on"):
                raise
            warnings.warn(f"normrepro.norms: torch.compile failed ({type(exc).__name__}: {exc}); "
                          "using the eager kernels (same numbers, slower)", RuntimeWarning)
            self._failed = True
            return self.fn(*tensors, **static)


def _no_autocast(device_type: str):
    if not torch.is_autocast_enabled(device_type):
        return contextlib.nullcontext()
    return torch.autocast(device_type=device_type, enabled=False)


def _colsum(t: torch.Tensor, block: int = 16) -> torch.Tensor:
    """Σ over the first dim of an (N, ...) tensor, written so that inductor's CPU code is fast.

    For a plain `t.sum(0)` inductor walks each 8-float strip of a row down all N rows (~10x
    slower than ATen's sum for an (N, C) = (4096, 512) tensor). Summing blocks of `block` rows
    first keeps each walk inside a few rows that stay in L1; the block sums are then added. Rows
    4 KiB apart or a multiple of it (the time steps of a (T, B, C) tensor) share L1 cache sets, so
    their blocks must fit its 8 ways: `block=8` there. Eager and GPU code take the plain sum (the
    order of additions differs, the value up to rounding not).

    In that loop order every per-row factor (1/RMS, the real-token weight) is used once per
    8-float strip, so it must come from a buffer: computed inline, its division or square root
    would be repeated C/8 times per row. The kernels therefore pass such factors in, or return
    them (kernel outputs are always written to memory), rather than deriving them inline.
    """
    if not (t.device.type == "cpu" and torch.compiler.is_compiling()):
        return t.sum(0)
    N = t.shape[0]
    if N < 2 * block:  # (a guard on the dynamic N; inductor cannot lower an empty block view)
        return t.sum(0)
    k = N // block
    return t[: block * k].view(k, block, *t.shape[1:]).sum(1).sum(0) + t[block * k:].sum(0)


def _real_rows(pad_mask, N: int, like: torch.Tensor) -> torch.Tensor:
    """(N, 1) weights in `like`'s dtype: 1 at real tokens, 0 at padding, rows in (T, B) order.
    Built from the (B, T) pad mask inside the kernels, so that it costs no separate ops."""
    if pad_mask is None:
        return like.new_ones(N, 1)
    return (~pad_mask).t().reshape(N, 1).to(like.dtype)


def _moments(v: torch.Tensor, m1: torch.Tensor, n: torch.Tensor):
    """Per-channel mean and M2 = Σ m·(v − mean)² of the rows of v (N, C) weighted by m1 (N, 1)
    in {0, 1}, with n = max(Σ m1, 1), in one pass over v.

    The sums are taken about a pilot value p, the first row (in (T, B) order the first token of
    a sentence, a real one; zero if it is padding): M2 = Σ m(v − p)² − (Σ m(v − p))²/n then
    keeps its precision, since the batch mean lies about one standard deviation from a sample,
    whereas Σ m·v² − (Σ m·v)²/n cancels catastrophically when |mean| >> std.
    """
    p = v[0] * m1[0]
    d = (v - p) * m1
    s1, s2 = _colsum(d), _colsum(d * (v - p))
    shift = s1 / n
    return p + shift, (s2 - s1 * shift).clamp_min(0.0)


def _bn_fwd(x, pad_mask, weight, bias, running_mean, running_var, momentum, *, eps: float):
    m1 = _real_rows(pad_mask, x.shape[0], x)  # returned: a buffer (see `_colsum`)
    n_real = m1.sum()
    n = n_real.clamp_min(1.0)
    mean, m2 = _moments(x, m1, n)
    var = m2 / n
    rstd = torch.rsqrt(var + eps)
    y = ((x - mean) * (rstd * weight) + bias) * m1
    # torch's BatchNorm update (unbiased running variance); none when no token is real
    mom = momentum * (n_real > 0).to(x.dtype)
    unbiased = var * n_real / (n_real - 1).clamp_min(1.0)
    return (y, m1, n, mean, rstd, running_mean * (1 - mom) + mom * mean,
            running_var * (1 - mom) + mom * unbiased)


def _bn_bwd(gy, x, m1, n, mean, rstd, weight):
    z = (x - mean) * rstd
    gym = gy * m1
    gbias, gweight = _colsum(gym), _colsum(gym * z)
    # exact BN gradient restricted to the real tokens; zero at padding
    gx = (gym - gbias / n - z * (gweight / n)) * (rstd * weight) * m1
    return gx, gweight, gbias


_BN_FWD, _BN_BWD = _Kernel(_bn_fwd), _Kernel(_bn_bwd)


class _MaskedBatchNormFn(torch.autograd.Function):
    """y = m·(w·(x − μ_B)/√(σ²_B + ε) + b), statistics over the real rows (m = 1).

    x: (N, C) float32/64 in (T, B) row order, pad_mask: (B, T) bool or None, momentum: float or
    0-dim tensor. Returns y and the updated running mean and variance. Backward is the exact
    gradient.
    """

    @staticmethod
    def forward(ctx, x, pad_mask, weight, bias, running_mean, running_var, momentum, eps):
        with _no_autocast(x.device.type):
            y, m1, n, mean, rstd, rm, rv = _BN_FWD(x, pad_mask, weight, bias, running_mean,
                                                   running_var, momentum, eps=eps)
        ctx.save_for_backward(x, m1, n, mean, rstd, weight)
        ctx.mark_non_differentiable(rm, rv)
        return y, rm, rv

    @staticmethod
    def backward(ctx, gy, _grm, _grv):
        x, m1, n, mean, rstd, weight = ctx.saved_tensors
        with _no_autocast(gy.device.type):
            gx, gweight, gbias = _BN_BWD(gy.contiguous(), x, m1, n, mean, rstd, weight)
        return (gx, None, gweight if ctx.needs_input_grad[2] else None,
                gbias if ctx.needs_input_grad[3] else None, None, None, None, None)


def _momentum(module: nn.Module, like: torch.Tensor):
    """The momentum of this step's running-statistics update: module.momentum, or torch's
    cumulative average 1/num_batches_tracked when it is None (call after counting the step)."""
    if module.momentum is None:
        return 1.0 / module.num_batches_tracked.to(like.dtype)
    return float(module.momentum)


def _as_float(x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """Batch statistics in half precision are unreliable: compute them in the parameters' dtype
    (float32 under bf16 autocast), as autocast does for torch's own norms."""
    return x if x.dtype == ref.dtype else x.to(ref.dtype)


def _compute_dtype(x: torch.Tensor, weight: torch.Tensor | None) -> torch.dtype:
    """The dtype statistics are computed in: the parameters' (float32 under bf16 autocast), or,
    without parameters, at least float32."""
    if weight is not None:
        return weight.dtype
    return x.dtype if x.dtype in (torch.float32, torch.float64) else torch.float32


def _affine(weight, bias, C, ref):
    """weight and bias as tensors (ones and zeros when the norm has none), for the kernels."""
    w = weight if weight is not None else ref.new_ones(C)
    b = bias if bias is not None else ref.new_zeros(C)
    return w, b


# RMSNorm, per token: (N, C) rows. The kernels keep each row's sum of squares (a reduction
# output that inductor writes from the same loop as the output row) and derive 1/RMS from it.

def _rms_fwd(x, weight, *, eps: float):
    ss = (x * x).sum(-1, keepdim=True)
    return x * torch.rsqrt(ss / x.shape[-1] + eps) * weight, ss


def _rms_bwd(gy, x, ss, weight, *, eps: float):
    rstd = torch.rsqrt(ss / x.shape[-1] + eps)  # also returned, to be a buffer (see `_colsum`)
    xhat = x * rstd
    g = gy * weight
    # d/dx of x·r with r = (mean x² + ε)^(-1/2): r·(g − x̂·mean(g·x̂))
    gx = rstd * (g - xhat * (g * xhat).mean(-1, keepdim=True))
    return gx, _colsum(gy * xhat), rstd


_RMS_FWD, _RMS_BWD = _Kernel(_rms_fwd), _Kernel(_rms_bwd)


class _RMSNormFn(torch.autograd.Function):
    """y = x / √(mean_C x² + ε) · w on (N, C) rows; backward by hand from the saved Σx²."""

    @staticmethod
    def forward(ctx, x, weight, eps):
        with _no_autocast(x.device.type):
            y, ss = _RMS_FWD(x, weight, eps=eps)
        ctx.save_for_backward(x, ss, weight)
        ctx.eps = eps
        return y

    @staticmethod
    def backward(ctx, gy):
        x, ss, weight = ctx.saved_tensors
        with _no_autocast(gy.device.type):
            gx, gweight, _ = _RMS_BWD(gy.contiguous(), x, ss, weight, eps=ctx.eps)
        return gx, gweight if ctx.needs_input_grad[1] else None, None


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
    # One pass for the mean and variance, about the sentence's first token (see `_moments`).
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


# The released PowerNorm code's BatchNorm (`bn_official`), training: (N, C) rows in (T, B) order.

def _bno_fwd(x, pad_mask, weight, bias, running_mean, running_var, momentum, *, eps: float,
             scale_eps: float):
    N, C = x.shape
    m1 = _real_rows(pad_mask, N, x)
    n_real = m1.sum()
    n = n_real.clamp_min(1.0)
    s = torch.rsqrt((x * x).mean(-1, keepdim=True) + scale_eps)  # LayerScaling1D: 1/RMS per row
    u = x * s
    # Padding holds the real rows' mean μ, so the batch mean over all N rows is μ and the batch
    # variance is Σ_real (u − μ)² / N.
    mean, m2 = _moments(u, m1, n)
    var = m2 / N
    rstd = torch.rsqrt(var + eps)
    y = (u - mean) * m1 * (rstd * weight) + bias
    # F.batch_norm's update over the N rows (unbiased variance); none when no token is real
    mom = momentum * (n_real > 0).to(x.dtype)
    unbiased = var * N / (N - 1 if N > 1 else 1)
    # m1 and s are returned (buffers, see `_colsum`) and saved for the backward, with n
    return (y, m1, n, s, mean, rstd, running_mean * (1 - mom) + mom * mean,
            running_var * (1 - mom) + mom * unbiased)


def _bno_bwd(gy, x, m1, n, s, mean, rstd, weight):
    N, C = x.shape
    u = x * s
    zhat = (u - mean) * rstd * m1  # normalised z; exactly 0 at padding (z = μ there)
    gbias, gweight, g_real = _colsum(gy), _colsum(gy * zhat), _colsum(gy * m1)
    k = weight * rstd
    # BatchNorm's gradient w.r.t. z over all N rows: gz = k·(g − Σg/N − ẑ·Σgẑ/N). The padding
    # rows' z is μ, the real rows' mean, so their gz sum reaches every real row, divided by n.
    gz_pad = k * ((gbias - g_real) - (N - n) * (gbias / N))
    gu = (k * (gy - gbias / N - zhat * (gweight / N)) + gz_pad / n) * m1
    # LayerScaling1D backward: s·(gu − u·mean_C(gu·u))
    gx = s * (gu - u * (gu * u).mean(-1, keepdim=True))
    return gx, gweight, gbias


_BNO_FWD, _BNO_BWD = _Kernel(_bno_fwd), _Kernel(_bno_bwd)


class _OfficialBatchNormFn(torch.autograd.Function):
    """`bn_official` in training on (N, C) rows, pad_mask (B, T) or None: RMS scaling per row,
    padding filled with the real mean, BatchNorm over all N rows. Returns y and the updated
    running mean and variance; backward by hand."""

    @staticmethod
    def forward(ctx, x, pad_mask, weight, bias, running_mean, running_var, momentum, eps,
                scale_eps):
        with _no_autocast(x.device.type):
            y, m1, n, s, mean, rstd, rm, rv = _BNO_FWD(x, pad_mask, weight, bias, running_mean,
                                                       running_var, momentum, eps=eps,
                                                       scale_eps=scale_eps)
        ctx.save_for_backward(x, m1, n, s, mean, rstd, weight)
        ctx.mark_non_differentiable(rm, rv)
        return y, rm, rv

    @staticmethod
    def backward(ctx, gy, _grm, _grv):
        x, m1, n, s, mean, rstd, weight = ctx.saved_tensors
        with _no_autocast(gy.device.type):
            gx, gweight, gbias = _BNO_BWD(gy.contiguous(), x, m1, n, s, mean, rstd, weight)
        return (gx, None, gweight if ctx.needs_input_grad[2] else None,
                gbias if ctx.needs_input_grad[3] else None) + (None,) * 5


# --------------------------------------------------------------------------------------------
# BatchNorm, eager path: synchronised statistics and batch-statistic recording

def records_stats(module: nn.Module) -> bool:
    """Whether `module` supports `record_stats` (the BN family and PN-V)."""
    return hasattr(module, "record_stats") and hasattr(module, "last_stats")


def _vec_dist(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(1/d)‖a − b‖ for two (d,) vectors, as the PowerNorm paper's Figure 2 plots it."""
    return (a - b).norm() / a.numel()


def _sync_group(process_group) -> object | None:
    """The process group to synchronise over, or None when there is nothing to synchronise with
    (torch.distributed unavailable or not initialised, or a group of one worker)."""
    if not (dist.is_available() and dist.is_initialized()):
        return None
    group = process_group if process_group is not None else dist.group.WORLD
    return group if dist.get_world_size(group) > 1 else None


def _combine_moments(n_loc, mean_loc, m2_loc, group):
    """Global count, mean and M2 from every worker's, with one all-reduce.

    Each worker writes its (count, mean, M2) into its own row of a zero (world, 2C+1) buffer and
    the buffer is all-reduced (summed), which gathers every row on every worker with a collective
    that every backend and torch version has. Chan's formula then combines the rows without the
    cancellation of E[x²] − E[x]².
    """
    C = mean_loc.numel()
    world, rank = dist.get_world_size(group), dist.get_rank(group)
    rows = mean_loc.new_zeros(world, 2 * C + 1)
    rows[rank, 0] = n_loc
    rows[rank, 1:C + 1] = mean_loc
    rows[rank, C + 1:] = m2_loc
    dist.all_reduce(rows, group=group)
    n_r, mean_r, m2_r = rows[:, :1], rows[:, 1:C + 1], rows[:, C + 1:]
    n = n_r.sum()
    mean = (n_r * mean_r).sum(0) / n.clamp_min(1.0)
    m2 = (m2_r + n_r * (mean_r - mean) ** 2).sum(0)
    return n, mean, m2


class _BatchNormFn(torch.autograd.Function):
    """y = w·(x − μ)/√(σ² + ε) + b per channel of x3 (N, C, L), in eager PyTorch.

    Statistics over dims (0, 2), restricted to the rows with m = 1 when a row mask m (N,) is
    given (sequences: N = T·B, L = 1; the output is zero at masked rows), and combined over
    `group` when it is not None (forward: one all-reduce of the moments; backward: one
    all-reduce of Σg and Σg·x̂). When `record` is a dict, backward stores in it the norms of
    the loss gradient with respect to μ and σ². Returns y, μ, σ² (biased) and the count n.
    """

    @staticmethod
    def forward(ctx, x3, m, weight, bias, eps, group, record):
        N, C, L = x3.shape
        with _no_autocast(x3.device.type):
            m3 = None if m is None else m.view(N, 1, 1)
            if m3 is None:
                n_loc = torch.full((), float(N * L), dtype=x3.dtype, device=x3.device)
                mean_loc = x3.mean((0, 2))
                xc = x3 - mean_loc.view(1, C, 1)
            else:
                n_loc = m.sum() * L
                mean_loc = (x3 * m3).sum((0, 2)) / n_loc.clamp_min(1.0)
                xc = (x3 - mean_loc.view(1, C, 1)) * m3
            m2_loc = (xc * xc).sum((0, 2))
            if group is None:
                n, mean, m2 = n_loc, mean_loc, m2_loc
            else:
                n, mean, m2 = _combine_moments(n_loc, mean_loc, m2_loc, group)
            var = m2 / n.clamp_min(1.0)
            rstd = torch.rsqrt(var + eps)
            z = (x3 - mean.view(1, C, 1)) * rstd.view(1, C, 1)
            w = weight if weight is not None else torch.ones_like(mean)
            y = z * w.view(1, C, 1)
            if bias is not None:
                y = y + bias.view(1, C, 1)
            if m3 is not None:
                y = y * m3
        ctx.save_for_backward(z, m, n, rstd, w)
        ctx.group, ctx.record = group, record
        ctx.mark_non_differentiable(mean, var, n)
        return y, mean, var, n

    @staticmethod
    def backward(ctx, gy, _gmean, _gvar, _gn):
        z, m, n, rstd, w = ctx.saved_tensors
        N, C, L = z.shape
        with _no_autocast(gy.device.type):
            gy = gy.contiguous()
            if m is not None:
                gy = gy * m.view(N, 1, 1)
            gbias = gy.sum((0, 2))
            gweight = (gy * z).sum((0, 2))
            if ctx.group is None:
                sum_g, sum_gz = gbias, gweight
            else:
                sums = torch.stack([gbias, gweight])
                dist.all_reduce(sums, group=ctx.group)
                sum_g, sum_gz = sums[0], sums[1]
            nc = n.clamp_min(1.0)
            gx = (gy - (sum_g / nc).view(1, C, 1) - z * (sum_gz / nc).view(1, C, 1)) \
                * (rstd * w).view(1, C, 1)
            if m is not None:
                gx = gx * m.view(N, 1, 1)
            if ctx.record is not None:
                # y depends on μ through (x − μ)·rstd and on σ² through rstd = (σ² + ε)^(−1/2):
                # ∂L/∂μ = −w·rstd·Σg and ∂L/∂σ² = −½·w·rstd²·Σg·x̂ (x̂ = z), over the whole batch.
                ctx.record["g_mu"] = _vec_dist(w * rstd * sum_g, torch.zeros_like(sum_g))
                ctx.record["g_var"] = _vec_dist(0.5 * w * rstd * rstd * sum_gz, torch.zeros_like(sum_g))
        return (gx, None, gweight if ctx.needs_input_grad[2] else None,
                gbias if ctx.needs_input_grad[3] else None, None, None, None)


@torch.no_grad()
def _update_bn_running(module: nn.Module, mean, var, n) -> None:
    """torch's BatchNorm update of running_mean/var (unbiased) and num_batches_tracked, without a
    host sync; `momentum=None` is torch's cumulative average. A batch with no element (n = 0)
    leaves the running statistics untouched."""
    module.num_batches_tracked.add_(1)
    if module.momentum is None:
        mom = 1.0 / module.num_batches_tracked.to(mean.dtype)
    else:
        mom = torch.as_tensor(module.momentum, dtype=mean.dtype, device=mean.device)
    mom = mom * (n > 0).to(mean.dtype)
    unbiased = var * n / (n - 1).clamp_min(1.0)
    module.running_mean.mul_(1 - mom).add_(mom * mean)
    module.running_var.mul_(1 - mom).add_(mom * unbiased)


def _bn_train_eager(module: nn.Module, x3: torch.Tensor, m: torch.Tensor | None,
                    group) -> torch.Tensor:
    """One training forward of a BN module through `_BatchNormFn` (synchronised over `group`
    if given, recording into `module.last_stats` if `module.record_stats`)."""
    record = {} if module.record_stats else None
    if record is not None:
        before = module.running_mean.clone(), module.running_var.clone()
    y, mean, var, n = _BatchNormFn.apply(x3, m, module.weight, module.bias, module.eps, group,
                                         record)
    _update_bn_running(module, mean, var, n)
    if record is not None:
        record.update(n=n.detach().clone(), mu_dist=_vec_dist(mean, before[0]),
                      var_dist=_vec_dist(var, before[1]))
        module.last_stats = record  # the backward adds g_mu and g_var to this same dict
    return y


class MaskedBatchNorm(nn.Module):
    """BatchNorm over the non-pad tokens of a (T, B, C) batch, one statistic per channel.

    Training normalises with the batch mean and biased variance of the real tokens; the running
    mean and (unbiased, as in torch's BatchNorm) variance are updated with `momentum` and used in
    eval. Padding positions output zero. A batch whose tokens are all padding outputs zeros and
    leaves the running statistics untouched.
    """

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float = 0.1,
                 affine: bool = True):
        super().__init__()
        self.num_features, self.eps, self.momentum = num_features, eps, momentum
        self.weight = nn.Parameter(torch.ones(num_features), requires_grad=affine)
        self.bias = nn.Parameter(torch.zeros(num_features), requires_grad=affine)
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))
        self.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long))
        self.record_stats = False  # see "Batch-statistic recording" in the module docstring
        self.last_stats: dict[str, torch.Tensor] = {}

    def forward(self, x, pad_mask=None):  # noqa: D102
        _check_seq(self, x, pad_mask)
        T, B, C = x.shape
        x2d = _as_float(x, self.weight).reshape(T * B, C)
        if not self.training:
            m = _real_weights(x2d.view(T, B, C), pad_mask)
            scale = self.weight * torch.rsqrt(self.running_var + self.eps)
            shift = self.bias - self.running_mean * scale
            return torch.addcmul(shift, x2d, scale).mul_(m.unsqueeze(1)).reshape(T, B, C)
        if self.record_stats:
            return self._train_eager(x2d, _real_weights(x2d.view(T, B, C), pad_mask), None).reshape(T, B, C)
        self.num_batches_tracked.add_(1)
        y, rm, rv = _MaskedBatchNormFn.apply(x2d, pad_mask, self.weight, self.bias, self.running_mean,
                                             self.running_var, _momentum(self, x2d), self.eps)
        self.running_mean.copy_(rm)
        self.running_var.copy_(rv)
        return y.reshape(T, B, C)

    def _train_eager(self, x2d, m, group):
        return _bn_train_eager(self, x2d.unsqueeze(-1), m, group).squeeze(-1)


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
        self.record_stats = False  # see "Batch-statistic recording" in the module docstring
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
    y = xs * torch.rsqrt(phi_used + eps) * weight + bias
    # Running statistic: cumulative average during warm-up, then (no `else`, as upstream) the EMA.
    tf = t.to(x.dtype)
    rp = torch.where(t < warmup_iters, running_phi * (tf - 1) / tf + psi_b / tf, running_phi)
    rp = alpha_fwd * rp + (1 - alpha_fwd) * psi_b
    return y, m1, r, psi_b, phi_used, rp


def _pn_bwd(gy, x, r, psi_b, phi_used, weight, ema_gz, *, eps: float, alpha_bkw: float,
            group_num: int):
    N, C = x.shape
    K = C // group_num
    xsv = x.reshape(N, group_num, K) * r
    xs = xsv.reshape(N, C)
    z = xs * torch.rsqrt(phi_used + eps)
    gweight = _colsum(gy * z)
    gbias = _colsum(gy)
    # approx = g − ν z with g = gy·w and ν = (1 − α_bkw)·ema_gz from before this step
    approx = gy * weight - ((1 - alpha_bkw) * ema_gz) * z
    # ema_gz += mean over all N positions (padding included, as upstream) of approx·z
    new_ema = ema_gz + _colsum(approx * z) / N
    # divided by the *batch* statistic, as upstream
    gxs = (approx * torch.rsqrt(psi_b + eps)).reshape(N, group_num, K)
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
            y, _, r, psi_b, phi_used, rp = _PN_FWD(
                x, pad_mask, weight, bias, running_phi, t, eps=eps, alpha_fwd=alpha_fwd,
                group_num=group_num, warmup_iters=warmup_iters)
        running_phi.copy_(rp)
        ctx.save_for_backward(x, r, psi_b, phi_used, weight, ema_gz)
        ctx.consts = (eps, alpha_bkw, group_num)
        return y

    @staticmethod
    def backward(ctx, gy):
        x, r, psi_b, phi_used, weight, ema_gz = ctx.saved_tensors
        eps, alpha_bkw, group_num = ctx.consts
        with _no_autocast(gy.device.type):
            gx, gweight, gbias, new_ema = _PN_BWD(
                gy.contiguous(), x, r, psi_b, phi_used, weight, ema_gz, eps=eps,
                alpha_bkw=alpha_bkw, group_num=group_num)
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


# --------------------------------------------------------------------------------------------
# image norms (B, C, H, W)

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


class BatchNorm2d(nn.BatchNorm2d):
    """torch's BatchNorm2d with the registry's shape checks (and, only while `record_stats` is
    on, an eager path that records the batch statistics; same numbers)."""

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float = 0.1,
                 affine: bool = True):
        super().__init__(num_features, eps=eps, momentum=momentum, affine=affine)
        self.record_stats = False  # see "Batch-statistic recording" in the module docstring
        self.last_stats: dict[str, torch.Tensor] = {}

    def forward(self, x):  # noqa: D102
        _check_img(self, x)
        if self.training and self.record_stats:
            return self._train_eager(x, None)
        return super().forward(x)

    def _train_eager(self, x, group):
        B, C, H, W = x.shape
        ref = self.weight if self.weight is not None else self.running_mean
        y = _bn_train_eager(self, _as_float(x, ref).reshape(B, C, H * W), None, group)
        return y.reshape(B, C, H, W).to(x.dtype)


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


# --------------------------------------------------------------------------------------------
# synchronised BatchNorm (statistics over every worker of a process group)

class SyncMaskedBatchNorm(MaskedBatchNorm):
    """`batch` with statistics over the non-pad tokens of every worker in `process_group`
    (default: the whole world); exactly `batch` outside a process group of two or more workers
    and in eval. Same buffers and state_dict as `batch`."""

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float = 0.1,
                 affine: bool = True, process_group=None):
        super().__init__(num_features, eps=eps, momentum=momentum, affine=affine)
        self.process_group = process_group

    def forward(self, x, pad_mask=None):  # noqa: D102
        group = _sync_group(self.process_group) if self.training else None
        if group is None:
            return super().forward(x, pad_mask)
        _check_seq(self, x, pad_mask)
        T, B, C = x.shape
        x2d = _as_float(x, self.weight).reshape(T * B, C)
        m = _real_weights(x2d.view(T, B, C), pad_mask)
        return self._train_eager(x2d, m, group).reshape(T, B, C)


class SyncBatchNorm2d(BatchNorm2d):
    """`batch2d` with statistics over every worker in `process_group` (default: the whole
    world), on CPU (gloo) as on GPU (NCCL); exactly `batch2d` outside a process group of two or
    more workers and in eval. Same buffers and state_dict as `batch2d`."""

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float = 0.1,
                 affine: bool = True, process_group=None):
        super().__init__(num_features, eps=eps, momentum=momentum, affine=affine)
        self.process_group = process_group

    def forward(self, x):  # noqa: D102
        group = _sync_group(self.process_group) if self.training else None
        if group is None:
            return super().forward(x)
        _check_img(self, x)
        return self._train_eager(x, group)


# --------------------------------------------------------------------------------------------
# the released PowerNorm code's BatchNorm

class OfficialBatchNorm(nn.Module):
    """`bn_official`: BatchNorm as the released PowerNorm code runs it, the norm behind the
    paper's BN rows.

    sIncerass/powernorm maps `--encoder-norm-self batch` to `MaskSyncBatchNorm`
    (`fairseq/modules/norms/mask_syncbatchnorm.py`), which is not textbook masked BatchNorm:

    1. every token (padding too) is first divided by the root of the mean of its squares over
       the C channels (its `LayerScaling1D`, eps `scale_eps` = 1e-5);
    2. padding positions are then replaced by the mean of the real tokens (a differentiable
       mean: gradients from the padding outputs reach the real tokens), and
    3. the batch statistics are those of `F.batch_norm` over all T x B positions: the mean is the
       real tokens' mean, the biased variance is the real tokens' variance shrunk by the
       fraction of real positions, and the running variance is updated with the unbiased
       variance over T x B, with momentum 0.05.

    Eval uses the running statistics, after the same scaling and padding fill. One difference,
    on purpose: a batch of padding only (no real token) fills with zeros instead of the official
    code's NaN mean. `batch` (textbook masked BN) stays in the registry; the PowerNorm
    replication's `bn` arm uses this one and its `bn_masked` arm the textbook one.
    """

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float = 0.05,
                 affine: bool = True, scale_eps: float = 1e-5):
        super().__init__()
        self.num_features, self.eps, self.momentum = num_features, eps, momentum
        self.scale_eps, self.affine = scale_eps, affine
        self.weight = nn.Parameter(torch.ones(num_features)) if affine else None
        self.bias = nn.Parameter(torch.zeros(num_features)) if affine else None
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))
        self.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long))

    def extra_repr(self) -> str:
        return (f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, "
                f"affine={self.affine}, scale_eps={self.scale_eps}")

    def forward(self, x, pad_mask=None):  # noqa: D102
        _check_seq(self, x, pad_mask)
        if not self.training:
            return self._forward_unfused(x, pad_mask)
        T, B, C = x.shape
        x2d = _as_float(x, self.running_mean).reshape(T * B, C)
        w, b = _affine(self.weight, self.bias, C, x2d)
        # The running statistics follow F.batch_norm's update over all T*B rows (unbiased
        # variance), skipped when the batch has no real token (momentum=None: torch's average).
        self.num_batches_tracked.add_(1)
        y, rm, rv = _OfficialBatchNormFn.apply(x2d, pad_mask, w, b, self.running_mean,
                                               self.running_var, _momentum(self, x2d), self.eps,
                                               self.scale_eps)
        self.running_mean.copy_(rm)
        self.running_var.copy_(rv)
        return y.reshape(T, B, C).to(x.dtype)

    def _forward_unfused(self, x, pad_mask):
        """Eval: the released code's steps one by one, normalising with the running statistics
        (the padding is still filled with this batch's real mean, as upstream)."""
        T, B, C = x.shape
        z = _as_float(x, self.running_mean)
        z = z * torch.rsqrt(z.square().mean(dim=-1, keepdim=True) + self.scale_eps)
        if pad_mask is not None:
            real = (~pad_mask).transpose(0, 1).unsqueeze(-1)  # (T, B, 1)
            real_mean = torch.where(real, z, 0.0).sum(dim=(0, 1)) / real.sum().clamp_min(1)
            z = torch.where(real, z, real_mean)
        y = F.batch_norm(z.reshape(T * B, C), self.running_mean, self.running_var, self.weight,
                         self.bias, False, 0.0, self.eps)
        return y.reshape(T, B, C).to(x.dtype)


# --------------------------------------------------------------------------------------------
# registry

SEQUENCE_NORMS: dict[str, type[nn.Module]] = {
    "layer": SeqLayerNorm,
    "batch": MaskedBatchNorm,
    "bn_official": OfficialBatchNorm,
    "sync_batch": SyncMaskedBatchNorm,
    "power_vanilla": PowerNormVanilla,
    "power": PowerNorm,
    "rms": SeqRMSNorm,
    "group": SeqGroupNorm,
    "instance": SeqInstanceNorm,
    "dyt": DyT,
}
IMAGE_NORMS: dict[str, type[nn.Module]] = {
    "layer2d": LayerNorm2d,
    "batch2d": BatchNorm2d,
    "sync_batch2d": SyncBatchNorm2d,
    "group2d": GroupNorm2d,
    "instance2d": InstanceNorm2d,
    "dyt2d": DyT2d,
}
_REGISTRY: dict[str, type[nn.Module]] = {**SEQUENCE_NORMS, **IMAGE_NORMS}
NORM_NAMES: tuple[str, ...] = tuple(_REGISTRY)


def register_norm(name: str, cls: type[nn.Module], sequence: bool) -> None:
    """Add a norm to the registry (used by modules that define extra norms, e.g. sync BN)."""
    global NORM_NAMES
    (SEQUENCE_NORMS if sequence else IMAGE_NORMS)[name] = cls
    _REGISTRY[name] = cls
    NORM_NAMES = tuple(_REGISTRY)


def is_sequence_norm(name: str) -> bool:
    _lookup(name)
    return name in SEQUENCE_NORMS


def _lookup(name: str) -> type[nn.Module]:
    if name not in _REGISTRY:
        raise ValueError(f"unknown norm {name!r}; valid names: {', '.join(NORM_NAMES)}")
    return _REGISTRY[name]


def create_norm(name: str, num_features: int, **kwargs) -> nn.Module:
    """Build the norm `name` for `num_features` channels; kwargs go to its constructor
    (every norm accepts `affine`, and every one but `dyt`/`dyt2d` accepts `eps`: DyT divides by
    nothing; an unknown kwarg is an error)."""
    cls = _lookup(name)
    if not isinstance(num_features, int) or isinstance(num_features, bool) or num_features <= 0:
        raise ValueError(f"num_features must be a positive int, got {num_features!r}")
    accepted = [p for p in inspect.signature(cls.__init__).parameters if p not in ("self", "num_features")]
    unknown = sorted(set(kwargs) - set(accepted))
    if unknown:
        # Strict on purpose: a misspelt `warmup_iter` must not silently fall back to a default.
        raise ValueError(f"norm {name!r} does not take {unknown}; it accepts {accepted}")
    return cls(num_features, **kwargs)


def get_norm_layer(name: str, **defaults) -> Callable[..., nn.Module]:
    """A `(num_features, device=None, dtype=None, **kwargs)` factory for `name`, usable as
    timm's `norm_layer=`.

    A plain function rather than `functools.partial(create_norm, name)`: timm rebuilds partials
    from their keyword arguments only (losing the name), and passes `device`/`dtype`, which are
    placement, not norm options.
    """
    _lookup(name)

    def norm_layer(num_features: int, device=None, dtype=None, **kwargs) -> nn.Module:
        module = create_norm(name, num_features, **{**defaults, **kwargs})
        if device is not None or dtype is not None:
            module = module.to(device=device, dtype=dtype)
        return module

    norm_layer.__name__ = norm_layer.__qualname__ = f"{name}_norm_layer"
    return norm_layer
