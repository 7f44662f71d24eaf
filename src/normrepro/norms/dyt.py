"""Dynamic Tanh (DyT), the element-wise stand-in for LayerNorm of Zhu, Chen, He, LeCun and Liu,
"Transformers without Normalization" (CVPR 2025, arXiv 2503.10622; code: jiachenzhu/DyT).

    DyT(x) = γ ⊙ tanh(α·x) + β

α is one learnable scalar per layer (initialised at `alpha_init`, 0.5 as in the paper), γ and β
are per-channel vectors initialised at 1 and 0, as a norm's affine parameters.

DyT computes no statistic of any kind: each output element depends on its own input element and
the parameters only. So its "reduction axes" are none (`normrepro.insights.axes` measures one
changed output per changed input), padding cannot change a real token's output, and a causal
model cannot leak through it; train and eval compute the same function.

Two registry names, as for the other norms:

* `dyt`: sequences, `(T, B, C)`, called `norm(x, pad_mask=None)`; `pad_mask` is checked like the
  other sequence norms' and otherwise ignored (padding positions get DyT of whatever they hold).
* `dyt2d`: images, `(B, C, H, W)`, γ and β broadcast over H and W (the official
  `DynamicTanh(channels_last=False)` that replaces ConvNeXt's `LayerNorm2d`).

The parameters are named and shaped as in the official `DynamicTanh` (`alpha` of shape (1,),
`weight`, `bias`), so its state dicts load here. Unlike the registry's norms, DyT takes no `eps`
(there is nothing to divide by): `create_norm("dyt", C, eps=...)` is an error, not a no-op.
`affine=False` drops γ and β (α stays learnable: without it the layer is not DyT).

**Kernels.** On CPU in float32 both names run through the hand-written kernels of
`normrepro.norms.native`: the forward reads x and writes y; the backward recomputes t = tanh(α·x)
from x and takes the input gradient, dα = Σ x·γ·(1−t²)·g, dγ = Σ t·g and dβ = Σ g in one pass
(so DyT keeps only x for the backward, as LayerNorm does). Elsewhere (float64, GPU, under
`eager_kernels()` or `NORMREPRO_COMPILE=0`) they run as one autograd function with compiled
kernels (see `normrepro.norms.kernels`), or eagerly: the forward writes y and t, both saved; the
backward takes the input gradient and dα in one loop over g, t and x, and dγ and dβ in one more
over g and t (ATen's BatchNorm backward, see `kernels._bn_sums`). Both give the same y and input
gradient bits. In float32 (and in half precision, computed in float32) tanh is the rational
function `_tanh`: torch's CPU tanh, eager or compiled, costs about three exps, several times the
rest of DyT; float64 keeps `torch.tanh`. Even so, on CPU DyT's tanh is what its time goes to: on
2 cores a (4096, 512) forward takes about 0.6 ms against 0.35 ms for LayerNorm's, whose work is
additions and multiplications only.
"""

from __future__ import annotations

import torch
from torch import nn

from normrepro.norms import native
from normrepro.norms.common import _check_img, _check_seq
from normrepro.norms.kernels import _bn_sums, _Kernel, _no_autocast

__all__ = ["DyT", "DyT2d"]


# --------------------------------------------------------------------------------------------
# tanh in float32

# tanh(z) ≈ z·P(z²)/Q(z²) on |z| ≤ 9.1 with P(0) = Q(0) = 1, both of degree 4 in z²: the
# coefficients minimise the largest relative error on [0, 9.1] (2.4e-8 in exact arithmetic;
# fitted in float64 by linearised least squares with Lawson's reweighting); beyond 9.1 float32's
# tanh is ±1. Evaluated in float32, as written below, it is within 6.1 ulp of tanh for every
# float32 input (97 % of them within 1 ulp; checked once over all of them, and on a sample in
# tests/norms/test_dyt.py, with its other properties). It only multiplies, adds, divides and clamps:
# inductor's vector loop runs it at about the cost of a copy, eager and compiled code give the
# same bits, and near 0 it is z·(1 + O(z²)), without the cancellation of 2·sigmoid(2z) − 1.
_TANH_P = (0.13377500838946021, 0.0034912916339784267, 2.0534109775260937e-05,
           1.3242880877253817e-08)
_TANH_Q = (0.46710821113042045, 0.025860919094296258, 0.0003278422846373689,
           7.732473211139078e-07)
_TANH_CLAMP = 9.1


def _tanh(z: torch.Tensor) -> torch.Tensor:
    """tanh(z): `torch.tanh` in float64, the rational approximation above in float32."""
    if z.dtype == torch.float64:
        return torch.tanh(z)
    z = z.clamp(-_TANH_CLAMP, _TANH_CLAMP)
    s = z * z
    p3, p2, p1, p0 = reversed(_TANH_P)
    q3, q2, q1, q0 = reversed(_TANH_Q)
    p = (((p3 * s + p2) * s + p1) * s + p0) * s + 1.0
    q = (((q3 * s + q2) * s + q1) * s + q0) * s + 1.0
    return (z * p / q).clamp(-1.0, 1.0)


# --------------------------------------------------------------------------------------------
# fused kernels: x is (N, C) rows (sequences, channels-last maps) with γ, β of shape (C,), or
# (B, C, L) (NCHW maps) with γ, β of shape (C, 1); α has shape (1,).

def _dyt_fwd(x, alpha, weight, bias):
    t = _tanh(alpha * x)
    return t * weight + bias, t


def _dyt_bwd(gy, x, t, alpha, weight):
    gz = gy * weight * (1 - t * t)  # ∂L/∂(α·x)
    # dα: a sum over each row first, which inductor takes in the loop that writes gx
    return gz * alpha, (gz * x).sum(-1).sum().view(1)


_DYT_FWD, _DYT_BWD = _Kernel(_dyt_fwd), _Kernel(_dyt_bwd)


class _DyTFn(torch.autograd.Function):
    """y = γ·tanh(α·x) + β on (N, C) rows or a (B, C, L) map; backward by hand.

    The forward also returns t = tanh(α·x) to save: recomputing it costs more than writing it
    once (tanh is the only arithmetic of note here). The backward walks gy and t twice: once for
    the input gradient and dα (which also reads x), once for dγ and dβ.
    """

    @staticmethod
    def forward(ctx, x, alpha, weight, bias):
        with _no_autocast(x.device.type):
            y, t = _DYT_FWD(x, alpha, weight, bias)
        ctx.save_for_backward(x, t, alpha, weight)
        ctx.mark_non_differentiable(t)
        ctx.set_materialize_grads(False)  # t's gradient is never used: no (N, C) zeros for it
        return y, t

    @staticmethod
    def backward(ctx, gy, _gt):
        if gy is None:  # (y's gradient undefined: autograd's "no gradient")
            return None, None, None, None
        x, t, alpha, weight = ctx.saved_tensors
        need = ctx.needs_input_grad
        gy = gy.contiguous()
        with _no_autocast(gy.device.type):
            gx, galpha = _DYT_BWD(gy, x, t, alpha, weight)
            gweight = gbias = None
            if need[2] or need[3]:
                gweight, gbias = _bn_sums(gy, t)
        return (gx, galpha if need[1] else None,
                gweight.view(weight.shape) if need[2] else None,
                gbias.view(weight.shape) if need[3] else None)


class _DyTNativeFn(torch.autograd.Function):
    """The same function through `normrepro.norms.native` (CPU, float32): the forward writes y
    only, the backward recomputes t from x and takes every gradient in one pass."""

    @staticmethod
    def forward(ctx, x, alpha, weight, bias):
        ctx.save_for_backward(x, alpha, weight)
        return native.dyt_forward(x, alpha, weight, bias)

    @staticmethod
    def backward(ctx, gy):
        x, alpha, weight = ctx.saved_tensors
        need = ctx.needs_input_grad
        gx, galpha, gweight, gbias = native.dyt_backward(gy.contiguous(), x, alpha, weight)
        return (gx, galpha if need[1] else None,
                gweight.view(weight.shape) if need[2] else None,
                gbias.view(weight.shape) if need[3] else None)


def _dyt(x, alpha, weight, bias):
    if native.usable(x, alpha, weight, bias):
        return _DyTNativeFn.apply(x, alpha, weight, bias)
    return _DyTFn.apply(x, alpha, weight, bias)[0]


# --------------------------------------------------------------------------------------------
# the modules

class _DyTBase(nn.Module):
    def __init__(self, num_features: int, alpha_init: float = 0.5, affine: bool = True):
        super().__init__()
        self.num_features, self.alpha_init, self.affine = num_features, float(alpha_init), affine
        self.alpha = nn.Parameter(torch.full((1,), self.alpha_init))
        self.weight = nn.Parameter(torch.ones(num_features)) if affine else None
        self.bias = nn.Parameter(torch.zeros(num_features)) if affine else None

    def extra_repr(self) -> str:
        return f"{self.num_features}, alpha_init={self.alpha_init}, affine={self.affine}"

    def _dtypes(self, x: torch.Tensor) -> tuple[torch.dtype, torch.dtype]:
        """(output dtype, compute dtype): the output's is what eager γ·tanh(α·x) + β would
        give (type promotion of x and the parameters); half precision is computed in float32."""
        out = torch.promote_types(x.dtype, self.alpha.dtype)
        if self.weight is not None:
            out = torch.promote_types(out, self.weight.dtype)
        return out, (torch.float64 if out == torch.float64 else torch.float32)

    def _params(self, C: int, dtype: torch.dtype, shape: tuple[int, ...]):
        alpha = self.alpha.to(dtype)
        if self.weight is None:
            ones = alpha.new_ones(shape)
            return alpha, ones, torch.zeros_like(ones)
        return alpha, self.weight.to(dtype).view(shape), self.bias.to(dtype).view(shape)

    def _rows(self, x2d: torch.Tensor) -> torch.Tensor:
        """DyT of (N, C) rows (a view of the input: no copy when it is contiguous)."""
        out, work = self._dtypes(x2d)
        alpha, w, b = self._params(x2d.shape[-1], work, (x2d.shape[-1],))
        return _dyt(x2d.to(work), alpha, w, b).to(out)


class DyT(_DyTBase):
    """`dyt`: Dynamic Tanh on a `(T, B, C)` sequence; `pad_mask` (B, T) is accepted and ignored."""

    def forward(self, x: torch.Tensor, pad_mask: torch.Tensor | None = None) -> torch.Tensor:  # noqa: D102
        _check_seq(self, x, pad_mask, image_name="dyt2d")
        return self._rows(x.reshape(-1, self.num_features)).view(x.shape)


class DyT2d(_DyTBase):
    """`dyt2d`: Dynamic Tanh on a `(B, C, H, W)` map, γ and β per channel; an NCHW map runs as
    (B, C, H·W), a channels-last one as (B·H·W, C) rows, so that neither is copied."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        _check_img(self, x, sequence_name="dyt")
        B, C, H, W = x.shape
        if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
            y = self._rows(x.permute(0, 2, 3, 1).reshape(B * H * W, C))
            return y.view(B, H, W, C).permute(0, 3, 1, 2)
        out, work = self._dtypes(x)
        alpha, w, b = self._params(C, work, (C, 1))
        y = _dyt(x.reshape(B, C, H * W).to(work), alpha, w, b)
        return y.to(out).view(B, C, H, W)


# ---------------------------------------------------------------------------------------------
# saturation (recording, not part of the norm)

# |α·x| at or above this is "in tanh's saturated range": tanh(2) = 0.964, where the slope
# 1 - tanh² has fallen to 0.071 of its value at 0, so the input's size barely reaches the output.
SATURATION_THRESHOLD = 2.0


class SaturationRecorder:
    """Counts, for every DyT layer of `model`, the inputs x with |α·x| ≥ `threshold` over the
    forward passes made inside `with recorder:` (forward hooks, removed on exit). The DyT paper's
    explanation of why DyT can stand in for LayerNorm is that it squashes the few extreme
    activations while staying nearly linear for the rest; `fractions()` says how many inputs
    each layer squashes, by module name in `model.named_modules()` order."""

    def __init__(self, model: nn.Module, threshold: float = SATURATION_THRESHOLD):
        self.threshold = float(threshold)
        self.layers = [(name, m) for name, m in model.named_modules() if isinstance(m, _DyTBase)]
        self.counts = {name: [0, 0] for name, _ in self.layers}   # saturated, total
        self._handles: list = []

    def _hook(self, name: str):
        def hook(module, inputs, output):
            z = (inputs[0].detach().float() * module.alpha.detach().float()).abs()
            self.counts[name][0] += int((z >= self.threshold).sum())
            self.counts[name][1] += z.numel()
        return hook

    def __enter__(self) -> "SaturationRecorder":
        self._handles = [m.register_forward_hook(self._hook(name)) for name, m in self.layers]
        return self

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    def fractions(self) -> dict[str, float]:
        return {name: (s / n if n else float("nan")) for name, (s, n) in self.counts.items()}
