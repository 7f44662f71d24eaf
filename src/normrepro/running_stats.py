"""Recompute the running statistics of a model's BN/PN-family norms for the weights it has now.

Averaging weight snapshots (the paper's last-5-checkpoint average) also averages the norms'
running statistics, which were gathered under each snapshot's own weights: the averaged
statistics do not belong to the averaged weights. `recompute_running_stats` replaces them with
the statistics the averaged weights themselves produce on a fixed sequence of training batches,
as `torch.optim.swa_utils.update_bn` does for SWA:

1. every running statistic is reset (mean 0, variance 1, ψ² 1);
2. the model runs forward in train mode, without gradients, over the given batches, with
   dropout masks drawn from a fixed seed (the caller's RNG state is left as it was);
3. before the k-th batch each norm's momentum is set to 1/k, so that after K batches its
   running statistic is the plain mean of the K per-batch statistics (torch's
   `momentum=None` cumulative average, which `update_bn` uses);
4. everything else is put back: the norms' momenta and flags, every buffer that is not a
   running statistic (step counters such as `num_batches_tracked` and PowerNorm's `iters`,
   PowerNorm's backward-only `ema_gz`, ...) and the train/eval mode of every module.
   Parameters are never written (no backward, no optimiser).

Which buffers are running statistics, per norm of `normrepro.norms`:

=================================  ===========================  ====================================
norm (class)                       running statistics           how a train-mode forward updates it
=================================  ===========================  ====================================
batch, sync_batch, batch2d, torch  running_mean, running_var    momentum·(batch mean / unbiased var)
BatchNorm (MaskedBatchNorm, ...)
bn_official (OfficialBatchNorm)    running_mean, running_var    F.batch_norm with `momentum`
power_vanilla (PowerNormVanilla)   running_phi                  momentum·ψ²_B
power (PowerNorm)                  running_phi                  see below
=================================  ===========================  ====================================

PowerNorm (the official code's) normalises a training batch with its own ψ²_B only during its
warm-up (`iters` ≤ `warmup_iters`); during warm-up its running ψ² is the cumulative average of
the ψ²_B seen so far, to which an EMA step with `alpha_fwd` is then applied. For the
recomputation its step counter is set back to 0, `warmup_iters` raised above the number of
batches and `alpha_fwd` set to 1 (the EMA step then leaves the value unchanged), so every
batch is normalised with its own ψ²_B, like BatchNorm in train mode, and `running_phi` ends as
the mean of the K values of ψ²_B. All three are restored afterwards.

A model without such norms (LayerNorm, RMSNorm, GroupNorm, ...) has nothing to recompute: the
function returns at once without a forward pass. A module that has a `running_*` buffer but
is none of the classes above is an error, so that a new norm cannot be skipped silently.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable

import torch
from torch import nn

from normrepro.norms import (MaskedBatchNorm, OfficialBatchNorm, PowerNorm, PowerNormVanilla,
                             eager_kernels)

__all__ = ["RUNNING_BUFFERS", "running_stat_modules", "running_stat_keys", "recompute_running_stats"]

# kind -> names of the buffers that hold running statistics
RUNNING_BUFFERS = {"bn": ("running_mean", "running_var"), "power": ("running_phi",),
                   "power_vanilla": ("running_phi",)}

# A warm-up longer than any recomputation: PowerNorm then uses batch statistics throughout.
_NO_WARMUP_END = 1 << 62


def _kind(module: nn.Module) -> str | None:
    if isinstance(module, PowerNorm):
        return "power"
    if isinstance(module, PowerNormVanilla):
        return "power_vanilla"
    if isinstance(module, (MaskedBatchNorm, OfficialBatchNorm)):
        return "bn"
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        return "bn" if module.track_running_stats and module.running_mean is not None else None
    own = [name for name, _ in module.named_buffers(recurse=False) if name.startswith("running_")]
    if own:
        raise TypeError(f"{type(module).__name__} has running-statistic buffers {own} that "
                        "normrepro.running_stats does not know how to recompute; add its class there")
    return None


def running_stat_modules(model: nn.Module) -> list[tuple[str, nn.Module, str]]:
    """(qualified name, module, kind) of every norm in `model` that keeps running statistics."""
    out = []
    for name, module in model.named_modules():
        kind = _kind(module)
        if kind is not None:
            out.append((name, module, kind))
    return out


def running_stat_keys(model: nn.Module) -> list[str]:
    """The state_dict keys of `model` that hold running statistics (empty for LayerNorm models)."""
    return [f"{name}.{buf}" if name else buf
            for name, _, kind in running_stat_modules(model) for buf in RUNNING_BUFFERS[kind]]


def _reset(module: nn.Module, kind: str) -> None:
    if kind == "bn":
        module.running_mean.zero_()
        module.running_var.fill_(1.0)
    else:
        module.running_phi.fill_(1.0)
    if kind == "power":
        module.iters.zero_()
        module.warmup_iters = _NO_WARMUP_END
        module.alpha_fwd = 1.0


def _cuda_devices(model: nn.Module) -> list[int]:
    return sorted({p.device.index or 0 for p in model.parameters() if p.device.type == "cuda"})


@torch.no_grad()
def recompute_running_stats(model: nn.Module, batches: Iterable[Any],
                            forward: Callable[[nn.Module, Any], Any], seed: int = 0) -> dict:
    """Replace the running statistics of every BN/PN-family norm in `model` by the mean of its
    per-batch statistics over `batches` (see the module docstring).

    `forward(model, batch)` runs one batch through the model. Returns `{"modules": [names],
    "batches": K}`; K = 0 and no forward pass when the model has no running statistics.
    """
    mods = running_stat_modules(model)
    if not mods:
        return {"modules": [], "batches": 0}
    running = set(running_stat_keys(model))
    saved = {k: v.detach().clone() for k, v in model.named_buffers()}
    modes = [(m, m.training) for m in model.modules()]
    attrs = []
    for _, m, kind in mods:
        names = ["momentum", "record_stats"] if kind != "power" else ["warmup_iters", "alpha_fwd"]
        attrs.append((m, {a: getattr(m, a) for a in names if hasattr(m, a)}))
    count, done = 0, False
    try:
        for _, m, kind in mods:
            _reset(m, kind)
            if hasattr(m, "record_stats"):
                m.record_stats = False
        model.train()
        with torch.random.fork_rng(devices=_cuda_devices(model)), eager_kernels():
            # eager: PowerNorm's alpha_fwd is a compile-time constant of its fused kernel, and a
            # handful of forward passes does not repay a compilation.
            torch.manual_seed(seed)
            for count, batch in enumerate(batches, start=1):
                for _, m, kind in mods:
                    if kind != "power":
                        m.momentum = 1.0 / count
                forward(model, batch)
        done = count > 0
    finally:
        for m, values in attrs:
            for a, v in values.items():
                setattr(m, a, v)
        # Only the running statistics keep their new values, and only after a complete pass.
        buffers = dict(model.named_buffers())
        for k, v in saved.items():
            if k in buffers and buffers[k].shape == v.shape and (k not in running or not done):
                buffers[k].copy_(v)
        for m, mode in modes:
            m.training = mode
    if not done:
        raise ValueError("no batches to recompute the running statistics on")
    return {"modules": [name for name, _, _ in mods], "batches": count}
