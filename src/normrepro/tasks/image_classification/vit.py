"""timm's VisionTransformer on the ConvNeXt replication's images, every norm from the registry.

Why a ViT here: "Transformers use LayerNorm, ConvNets BatchNorm" mixes two causes, the
architecture (attention blocks vs convolutions) and the data (padded variable-length text vs
fixed-size images). A ViT trained on the same images, pipeline and recipe as ConvNeXt keeps the
data and changes the architecture (issue 11; the DyT paper, Zhu et al. 2025, trains both on
ImageNet-1K).

`model.variant` picks a size from `VIT_SIZES` (`model.kwargs` may override any timm
constructor argument, e.g. `depth` in tests); `model.patch_size` is the patch side (null: timm's
16) and the image side comes from the data (`data.image_size` or the data set's native size).
On 32 x 32 inputs with patches of 4 a ViT sees 8 x 8 = 64 patch tokens plus the class token.
The sizes below `vit_tiny` are ours, for CPU budgets; `vit_tiny`/`vit_small` are DeiT's widths
and `vit_base`/`vit_large` the paper's ViT-B/ViT-L (timm's `vit_base_patch16_224` and
`vit_large_patch16_224` at patch 16 and 224 pixels). Everything else is timm's default: class
token and `global_pool='token'`, learned position embeddings, MLP ratio 4, qkv bias, GELU, no
layer scale (`model.ls_init_value`, when set, becomes timm's `init_values`).

Norms: `model.norm` names a *sequence* norm of the registry (`layer`, `batch`, `rms`, `dyt`, ...):
the tokens of one image are a sequence without padding. `TokensAsSequence` hands timm's
(B, N, C) tokens to it in the registry's (T, B, C) layout with T = N and `pad_mask=None`, so

* `layer` / `rms`: statistics over C for each token (timm's LayerNorm; `norm_eps` null gives
  `layer` timm's ViT eps 1e-6 rather than the registry's fairseq default 1e-5);
* `batch`: statistics per channel over all B x N tokens of the batch, running statistics in
  eval (torch's BatchNorm1d on the flattened tokens; `tests/tasks/test_vit.py` checks it);
* `dyt`: element-wise γ·tanh(α·x) + β, no statistics.

A pooled (B, C) feature (timm's `fc_norm`, with `global_pool='avg'`) is passed as one token per
image (T = 1). With timm's defaults a ViT has norms in exactly these places: `norm1` and `norm2`
of every block and the final `norm`; the options that add more (`pre_norm`, `qk_norm`, ...) use
the same `norm_layer`, so they would take the registry norm too.
"""

from __future__ import annotations

from typing import Callable

import torch
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from normrepro.config import ConfigError
from normrepro.norms import IMAGE_NORMS, SEQUENCE_NORMS, get_norm_layer

# name: timm constructor arguments. Parameter counts for 1 input channel, 10 classes, 32 x 32
# inputs, patch 4 (`tests/tasks/test_vit.py` checks them): pico 0.31 M, nano 0.68 M, micro 2.69 M,
# tiny 5.36 M.
VIT_SIZES: dict[str, dict] = {
    "vit_pico": dict(embed_dim=64, depth=6, num_heads=2),
    "vit_nano": dict(embed_dim=96, depth=6, num_heads=3),
    "vit_micro": dict(embed_dim=192, depth=6, num_heads=3),
    "vit_tiny": dict(embed_dim=192, depth=12, num_heads=3),     # DeiT-Ti
    "vit_small": dict(embed_dim=384, depth=12, num_heads=6),    # DeiT-S
    "vit_base": dict(embed_dim=768, depth=12, num_heads=12),    # ViT-B (the DyT paper's)
    "vit_large": dict(embed_dim=1024, depth=24, num_heads=16),  # ViT-L (the DyT paper's)
}
# Where the registry's default eps differs from timm's ViT (timm.layers.LayerNorm: 1e-6).
_TIMM_VIT_EPS = {"layer": 1e-6}
_SET_BY_PIPELINE = ("norm_layer", "num_classes", "in_chans", "img_size", "patch_size")


class TokensAsSequence(nn.Module):
    """A registry sequence norm applied to ViT tokens: (B, N, C) in, (B, N, C) out.

    The tokens go in as the registry's (T, B, C) = (N, B, C) with no padding, so every sequence
    norm keeps its meaning (statistics per token, per image over its tokens, or over the whole
    batch); a (B, C) input is one token per image. The wrapped norm is `self.norm`, so the state
    dict keys read `...norm1.norm.weight`.
    """

    def __init__(self, norm: nn.Module):
        super().__init__()
        self.norm = norm

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        if x.dim() == 2:
            return self.norm(x.unsqueeze(0), pad_mask=None).squeeze(0)
        if x.dim() != 3:
            raise ValueError(f"ViT tokens must be (B, N, C) or (B, C), got shape {tuple(x.shape)}")
        return self.norm(x.transpose(0, 1), pad_mask=None).transpose(0, 1)


def token_norm_layer(name: str, eps: float | None = None) -> Callable[..., nn.Module]:
    """A timm `norm_layer=` building `TokensAsSequence(<registry sequence norm name>)`."""
    if name not in SEQUENCE_NORMS:
        hint = (f"{name!r} is an image norm; a ViT's tokens take the sequence norms"
                if name in IMAGE_NORMS else f"unknown norm {name!r}; choose from")
        raise ConfigError(f"model.norm: {hint} {', '.join(sorted(SEQUENCE_NORMS))}")
    if eps is None:
        eps = _TIMM_VIT_EPS.get(name)
    make = get_norm_layer(name, **({} if eps is None else {"eps": float(eps)}))

    def norm_layer(num_features: int, device=None, dtype=None, **kwargs) -> nn.Module:
        return TokensAsSequence(make(num_features, device=device, dtype=dtype, **kwargs))

    norm_layer.__name__ = norm_layer.__qualname__ = f"{name}_token_norm_layer"
    return norm_layer


def build_vit(model_cfg: dict, num_classes: int, in_chans: int, image_size: int | None) -> nn.Module:
    """The ViT of one arm: `model.variant` (a key of VIT_SIZES), `model.norm`, `model.patch_size`,
    `model.drop_path_rate`, `model.ls_init_value`, `model.kwargs`; `image_size` from the data."""
    variant = model_cfg["variant"]
    if variant not in VIT_SIZES:
        raise ConfigError(f"model.variant={variant!r} is not a ViT size of this pipeline; choose "
                          f"from {', '.join(VIT_SIZES)}")
    if image_size is None:
        raise ValueError("a ViT needs the input image size (its position embeddings are learned "
                         "per patch position); pass image_size=")
    user = dict(model_cfg.get("kwargs") or {})
    for key in _SET_BY_PIPELINE:
        if key in user:
            raise ConfigError(f"model.kwargs.{key} is set by the pipeline; use model.norm, "
                              "model.patch_size or the data settings instead")
    patch = int(model_cfg.get("patch_size") or 16)
    if image_size % patch:
        raise ConfigError(f"model.patch_size={patch} does not divide the {image_size}-pixel images")
    kwargs = {**VIT_SIZES[variant], **user}
    if model_cfg.get("ls_init_value", "default") != "default":
        kwargs["init_values"] = model_cfg["ls_init_value"]
    return VisionTransformer(
        img_size=int(image_size),
        patch_size=patch,
        in_chans=in_chans,
        num_classes=num_classes,
        norm_layer=token_norm_layer(model_cfg["norm"], model_cfg.get("norm_eps")),
        drop_path_rate=float(model_cfg.get("drop_path_rate", 0.0)),
        **kwargs,
    )
