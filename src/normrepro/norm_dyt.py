"""Dynamic Tanh (DyT), the element-wise stand-in for LayerNorm of Zhu, Chen, He, LeCun and Liu,
"Transformers without Normalization" (CVPR 2025, arXiv 2503.10622; code: jiachenzhu/DyT).

    DyT(x) = γ ⊙ tanh(α·x) + β

α is one learnable scalar per layer (initialised at `alpha_init`, 0.5 as in the paper), γ and β
are per-channel vectors initialised at 1 and 0, as a norm's affine parameters.

DyT computes no statistic of any kind: each output element depends on its own input element and
the parameters only. So its "reduction axes" are none (`normrepro.insights.axes` measures one
changed output per changed input), padding cannot change a real token's output, and a causal
model cannot leak through it; train and eval compute the same function.

Two registry names, as for the other norms (`normrepro.norms` registers them):

* `dyt`: sequences, `(T, B, C)`, called `norm(x, pad_mask=None)`; `pad_mask` is checked like the
  other sequence norms' and otherwise ignored (padding positions get DyT of whatever they hold).
* `dyt2d`: images, `(B, C, H, W)`, γ and β broadcast over H and W (the official
  `DynamicTanh(channels_last=False)` that replaces ConvNeXt's `LayerNorm2d`).

The parameters are named and shaped as in the official `DynamicTanh` (`alpha` of shape (1,),
`weight`, `bias`), so its state dicts load here. Unlike the registry's norms, DyT takes no `eps`
(there is nothing to divide by): `create_norm("dyt", C, eps=...)` is an error, not a no-op.
`affine=False` drops γ and β (α stays learnable: without it the layer is not DyT).

This module imports only torch, so `normrepro.norms` can import it without a cycle; its input
checks repeat the registry's messages.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["DyT", "DyT2d"]


class _DyTBase(nn.Module):
    def __init__(self, num_features: int, alpha_init: float = 0.5, affine: bool = True):
        super().__init__()
        self.num_features, self.alpha_init, self.affine = num_features, float(alpha_init), affine
        self.alpha = nn.Parameter(torch.full((1,), self.alpha_init))
        self.weight = nn.Parameter(torch.ones(num_features)) if affine else None
        self.bias = nn.Parameter(torch.zeros(num_features)) if affine else None

    def extra_repr(self) -> str:
        return f"{self.num_features}, alpha_init={self.alpha_init}, affine={self.affine}"

    def _dyt(self, x: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
        """γ ⊙ tanh(α·x) + β with γ, β viewed as `shape` to broadcast over x's channel axis."""
        y = torch.tanh(self.alpha * x)
        if self.weight is None:
            return y
        return torch.addcmul(self.bias.view(shape), y, self.weight.view(shape))


class DyT(_DyTBase):
    """`dyt`: Dynamic Tanh on a `(T, B, C)` sequence; `pad_mask` (B, T) is accepted and ignored."""

    def forward(self, x: torch.Tensor, pad_mask: torch.Tensor | None = None) -> torch.Tensor:  # noqa: D102
        if x.dim() != 3:
            raise ValueError(
                f"{type(self).__name__} expects a (T, B, C) sequence tensor, got shape "
                f"{tuple(x.shape)}; images use the '2d' variants (e.g. 'dyt2d')")
        if x.shape[-1] != self.num_features:
            raise ValueError(
                f"{type(self).__name__} was built for C={self.num_features} channels but the "
                f"input has C={x.shape[-1]} (shape {tuple(x.shape)}, layout (T, B, C))")
        if pad_mask is not None:
            if pad_mask.shape != (x.shape[1], x.shape[0]):
                raise ValueError(
                    f"pad_mask must have shape (B, T) = ({x.shape[1]}, {x.shape[0]}) for input "
                    f"(T, B, C) = {tuple(x.shape)}, got {tuple(pad_mask.shape)}")
            if pad_mask.dtype != torch.bool:
                raise ValueError(f"pad_mask must be a bool tensor (True at padding), got {pad_mask.dtype}")
        return self._dyt(x, (self.num_features,))


class DyT2d(_DyTBase):
    """`dyt2d`: Dynamic Tanh on a `(B, C, H, W)` map, γ and β per channel."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        if x.dim() != 4:
            raise ValueError(
                f"{type(self).__name__} expects a (B, C, H, W) image tensor, got shape "
                f"{tuple(x.shape)}; sequences use the names without '2d' (e.g. 'dyt')")
        if x.shape[1] != self.num_features:
            raise ValueError(
                f"{type(self).__name__} was built for C={self.num_features} channels but the "
                f"input has C={x.shape[1]} (shape {tuple(x.shape)}, layout (B, C, H, W))")
        return self._dyt(x, (self.num_features, 1, 1))
