"""The fused-kernel machinery shared by the norm families: `_Kernel` (a pure tensor function run
through `torch.compile`, or eagerly), `eager_kernels()`, and the building blocks the kernels
share (`_colsum`, `_real_rows`, `_moments`).

`batch`, `batch_unmasked`, `bn_official` (training), `power`, `rms`, `group` and `instance` run as
fused autograd functions (`rms` and `dyt` on CPU in float32 through the hand-written one-pass
kernels of `normrepro.norms.native` instead, compiled with the same toolchain): one compiled
forward and one compiled backward kernel each (`torch.compile`; the same code runs eagerly when compilation is unavailable, under
`eager_kernels()` or with `NORMREPRO_COMPILE=0`), with hand-written backward passes that reuse the
forward's statistics. Each family's kernels live in its module (`layer`, `group`, `batch`,
`power`). Both paths are checked against straightforward float64 references and transcriptions
of the official code in the tests. On CPU a forward is a statistics pass and an output pass, a
backward a column-sum pass and an input-gradient pass (LayerNorm: one pass each way).
"""

from __future__ import annotations

import contextlib
import os
import types
import warnings

import torch

__all__ = ["eager_kernels"]

_COMPILE_MODE = os.environ.get("NORMREPRO_COMPILE", "auto").lower()  # auto | 1 | 0
_FORCE_EAGER = False  # set by `eager_kernels()`
_KERNELS: list["_Kernel"] = []  # every kernel of every family (the tests run each both ways)
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


# Column sums that need no loop of their own in a compiled kernel: ATen's norm backward kernels
# take the sums the affine parameters' gradients need in one walk over g and the normalised
# input, row-major with per-thread partial sums, in about half the time of the sums inductor
# generates on CPU (`_colsum`, whose loop cannot be shared with a kernel's other outputs). Called
# outside the kernels (inside one, inductor would decompose them again), in both paths.

def _bn_sums(g: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(Σ g·t, Σ g) over every dim but dim 1 of (N, C) or (B, C, L) tensors: BatchNorm's
    backward sums, its x̂ being t for mean 0 and inverse std 1."""
    C = g.shape[1]
    if g.numel() == 0:  # (ATen's CPU kernel divides by the element count: SIGFPE)
        return g.new_zeros(C), g.new_zeros(C)
    _, sum_gt, sum_g = torch.ops.aten.native_batch_norm_backward(
        g, t, None, None, None, g.new_zeros(C), g.new_ones(C), True, 0.0, [False, True, True])
    return sum_gt, sum_g


def _ln_sum(g: torch.Tensor, x: torch.Tensor, r: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Σ_n g·x·r_n over the rows of (N, C) tensors with r (N, 1): LayerNorm's backward sum for
    its weight (any (C,) tensor of x's dtype: ATen shapes the sum like it), its x̂ being x·r for
    mean 0 and inverse std r."""
    return torch.ops.aten.native_layer_norm_backward(
        g, x, [x.shape[-1]], torch.zeros_like(r), r, weight, None, [False, True, False])[1]


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
