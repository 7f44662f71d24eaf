"""BatchNorm and its variants: `batch` (masked), `batch_unmasked`, `bn_official`, `sync_batch` on
`(T, B, C)` sequences; `batch2d` and `sync_batch2d` on `(B, C, H, W)` maps.

`batch` computes its statistics over the non-pad tokens only, so padding changes neither the
statistics nor the output at real tokens, and outputs zeros at padding positions (its gradients
are then exact gradients of a function of the real tokens). `batch_unmasked` is the same norm
with padding counted, as `torch.nn.BatchNorm1d` on the flattened (T·B, C) tokens would count it
(the insights' padding experiment, `normrepro.insights.padding`). `bn_official` is BatchNorm as
the released PowerNorm code runs it (see `OfficialBatchNorm`). `batch` and `bn_official` train
through fused kernels (see `normrepro.norms.kernels`); `batch2d` is torch's BatchNorm2d.

**Synchronised BatchNorm** (`sync_batch`, `sync_batch2d`). `torch.nn.SyncBatchNorm` (and so
Lightning's `sync_batchnorm=True`) refuses CPU modules, so these are our own: in a training forward
each worker computes its per-channel count, mean and sum of squared deviations (M2), one
all-reduce combines them over the process group (`process_group=`, default: the whole world) with
Chan's parallel formula (stable, unlike E[x²] − E[x]² in float32), and the backward all-reduces
the two per-channel gradient sums Σ g and Σ g·x̂ that the BN input gradient needs. Weight and
bias gradients stay local (DDP averages them like any other parameter's). Outside an initialised
process group, with a group of one worker, and in eval mode they run exactly `batch` / `batch2d`
(the parent class's forward); they work with gloo (CPU) and NCCL (GPU).

**Batch-statistic recording** (the PowerNorm paper's fluctuation analysis). `batch`,
`batch_unmasked`, `batch2d`, the sync variants and `power_vanilla` (`normrepro.norms.power`) have
an attribute `record_stats` (False by default: forward then costs one attribute check). When it
is True, each training forward stores in `module.last_stats` (0-dim tensors, d = C): `n`
(elements per channel), for BN `mu_dist` = (1/d)‖μ_B − μ‖ and `var_dist` = (1/d)‖σ²_B − σ²‖ with
μ, σ² the running statistics before this step's update (σ²_B biased, the running σ² unbiased, as
torch keeps them), and for PN-V `psi_dist` = (1/d)‖ψ²_B − ψ²‖; the backward adds the norms of the
loss gradient with respect to the batch statistics, `g_mu` = (1/d)‖∂L/∂μ_B‖ and `g_var` =
(1/d)‖∂L/∂σ²_B‖ (BN) or `g_psi` = (1/d)‖∂L/∂ψ²_B‖ (PN-V). BN computes them in closed form from the
sums its backward already has (∂L/∂μ_B = −w·rstd·Σg, ∂L/∂σ²_B = −½·w·rstd²·Σg·x̂, summed over
the whole, synchronised batch), through an eager path that replaces the fused kernel only while
recording; PN-V reads ∂L/∂ψ²_B with a tensor hook. The numbers are computed here because they
need the backward's own sums; choosing layers, switching recording on and writing the records
to CSV is `normrepro.insights.fluctuation`'s.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from normrepro.norms.common import (_affine, _as_float, _check_img, _check_seq, _real_weights,
                                    _vec_dist)
from normrepro.norms.kernels import _colsum, _Kernel, _moments, _no_autocast, _real_rows

__all__ = ["MaskedBatchNorm", "UnmaskedBatchNorm", "BatchNorm2d", "SyncMaskedBatchNorm",
           "SyncBatchNorm2d", "OfficialBatchNorm"]


# --------------------------------------------------------------------------------------------
# masked BatchNorm, fused kernels

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


# --------------------------------------------------------------------------------------------
# the released PowerNorm code's BatchNorm (`bn_official`), fused kernels

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


# --------------------------------------------------------------------------------------------
# the modules

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


class UnmaskedBatchNorm(MaskedBatchNorm):
    """`batch_unmasked`: `batch` with padding counted, statistics over all T×B positions of a
    (T, B, C) batch.

    `pad_mask` is accepted, because the model passes it to every norm, checked like every
    sequence norm's, and deliberately ignored; the output at padding positions is therefore not
    zeroed either. Parameters, buffers, the running-statistics update and batch-statistic
    recording are those of `batch`.
    """

    def forward(self, x, pad_mask=None):  # noqa: D102
        _check_seq(self, x, pad_mask)
        return super().forward(x, None)


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
