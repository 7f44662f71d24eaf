"""What every norm family shares: input checks (with the registry's error messages), the dtype
statistics are computed in, and the distance that batch-statistic recording reports.

Sequence norms take `(T, B, C)` and a `(B, T)` bool `pad_mask` (True at padding); image norms
take `(B, C, H, W)`. The checks name the other layout's registry name in their hint.
"""

from __future__ import annotations

import torch
from torch import nn


# --------------------------------------------------------------------------------------------
# input checks shared by every module

def _check_seq(module: nn.Module, x: torch.Tensor, pad_mask: torch.Tensor | None,
               image_name: str = "batch2d") -> None:
    """Check a (T, B, C) input and its (B, T) pad mask; `image_name` is the image variant that
    the error for a 4-D input suggests."""
    if x.dim() != 3:
        raise ValueError(
            f"{type(module).__name__} expects a (T, B, C) sequence tensor, got shape "
            f"{tuple(x.shape)}; images use the '2d' variants (e.g. {image_name!r})"
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


def _check_img(module: nn.Module, x: torch.Tensor, sequence_name: str = "batch") -> None:
    """Check a (B, C, H, W) input; `sequence_name` is the sequence variant that the error for a
    3-D input suggests."""
    if x.dim() != 4:
        raise ValueError(
            f"{type(module).__name__} expects a (B, C, H, W) image tensor, got shape "
            f"{tuple(x.shape)}; sequences use the names without '2d' (e.g. {sequence_name!r})"
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
# the dtype of the statistics

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


# --------------------------------------------------------------------------------------------
# batch-statistic recording (see `normrepro.norms.batch`)

def _vec_dist(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(1/d)‖a − b‖ for two (d,) vectors, as the PowerNorm paper's Figure 2 plots it."""
    return (a - b).norm() / a.numel()
