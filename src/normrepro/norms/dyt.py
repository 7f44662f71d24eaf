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
"""

from __future__ import annotations

import torch
from torch import nn

from normrepro.norms.common import _check_img, _check_seq

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
        _check_seq(self, x, pad_mask, image_name="dyt2d")
        return self._dyt(x, (self.num_features,))


class DyT2d(_DyTBase):
    """`dyt2d`: Dynamic Tanh on a `(B, C, H, W)` map, γ and β per channel."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        _check_img(self, x, sequence_name="dyt")
        return self._dyt(x, (self.num_features, 1, 1))
