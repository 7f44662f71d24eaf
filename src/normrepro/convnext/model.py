"""timm's ConvNeXt with every normalization layer taken from the normrepro registry by name.

How timm wires `norm_layer` (checked in timm 1.0's `timm/models/convnext.py`): with a callable
norm and `conv_mlp=True`, the same callable builds the stem norm, the norm before each
downsampling conv, the norm inside every block and the head's norm (after global pooling, on a
(B, C, 1, 1) map); with `conv_mlp=True` the block MLP is two 1×1 convs, so every norm sees NCHW
input and no permute to channels-last happens anywhere. timm refuses a custom norm without
`conv_mlp=True`. So the `bn` and `ln` arms are the same network except for the norm modules:
same parameters (both norms have a per-channel weight and bias), BN adds running-stat buffers.

timm passes `device=`/`dtype=` to the norm constructor and, when the norm is a
`functools.partial`, rebinds only its keyword arguments; the adapter below therefore hands timm
a plain function that calls the registry and places the module itself.

`model.variant: vit_*` builds a Vision Transformer instead (`normrepro.convnext.vit`), trained by
the same Lightning module, data and recipe.
"""

from __future__ import annotations

import re
from typing import Callable

import timm
import torch
from torch import nn

from normrepro.config import ConfigError
from normrepro.convnext.vit import build_vit
from normrepro.norms import IMAGE_NORMS, SEQUENCE_NORMS, get_norm_layer


def timm_norm_layer(name: str, eps: float | None = None) -> Callable[..., nn.Module]:
    """A `norm_layer=` for timm: `(num_features, device=None, dtype=None, **kw)` → registry norm."""
    defaults = {} if eps is None else {"eps": float(eps)}
    try:
        return get_norm_layer(name, **defaults)
    except ValueError as exc:  # unknown name: say which config key to change
        raise ConfigError(f"model.norm: {exc}") from exc


def build_model(model_cfg: dict, num_classes: int, in_chans: int,
                image_size: int | None = None) -> nn.Module:
    """The ConvNeXt (or, for `model.variant: vit_*`, the ViT) of one arm: `model.variant`,
    `model.norm`, `model.patch_size`, ...

    `model.kwargs` passes anything else to the timm constructor (tests shrink `dims`/`depths`).
    `image_size` (the side of the input images) is needed by a ViT only.
    """
    variant = model_cfg["variant"]
    if variant.startswith("vit_"):
        return build_vit(model_cfg, num_classes, in_chans, image_size)
    if not variant.startswith("convnext"):
        raise ConfigError(f"model.variant={variant!r}: this replication needs a timm convnext_* "
                          "model or one of the ViTs vit_* (normrepro.convnext.vit.VIT_SIZES)")
    if model_cfg["norm"] in SEQUENCE_NORMS:
        raise ConfigError(f"model.norm={model_cfg['norm']!r} is a sequence norm (for a ViT's "
                          f"tokens); a ConvNeXt takes the image norms {', '.join(IMAGE_NORMS)}")
    kwargs = dict(model_cfg.get("kwargs") or {})
    for key in ("norm_layer", "conv_mlp", "num_classes", "in_chans"):
        if key in kwargs:
            raise ConfigError(f"model.kwargs.{key} is set by the pipeline; use model.norm / data "
                             "settings instead")
    if model_cfg.get("patch_size") is not None:
        kwargs["patch_size"] = int(model_cfg["patch_size"])
    if model_cfg.get("ls_init_value", "default") != "default":
        kwargs["ls_init_value"] = model_cfg["ls_init_value"]
    model = timm.create_model(
        variant,
        pretrained=False,
        num_classes=num_classes,
        in_chans=in_chans,
        conv_mlp=True,  # both arms: 1×1-conv MLP, so every norm is an NCHW norm
        norm_layer=timm_norm_layer(model_cfg["norm"], model_cfg.get("norm_eps")),
        drop_path_rate=float(model_cfg.get("drop_path_rate", 0.0)),
        **kwargs,
    )
    use_fast_convs(model)
    return model


class SmallMapDepthwiseConv2d(nn.Conv2d):
    """A "same"-padded, stride-1 depthwise conv that skips the kernel taps which only ever see
    zero padding.

    On an H x W map, a k x k kernel with padding k // 2 can reach a real pixel only with its
    central (2H - 1) x (2W - 1) taps; the others multiply padding zeros. ConvNeXt's 7 x 7
    depthwise convs run on 2 x 2 and 1 x 1 maps in the last stages at 32 x 32 inputs, where CPU
    kernels spend most of a training step on those zeros (the backward of the 1 x 1-map conv
    alone cost more than all 1 x 1 convs together). Cropping the kernel to the reachable taps
    computes the same function with the same parameters: the outputs are the same sums (up to
    float rounding order), and the unreachable taps get exactly zero gradient, as before.
    """

    def _conv_forward(self, input, weight, bias):  # noqa: A002 - torch's signature
        kh, kw = self.kernel_size
        h, w = input.shape[-2:]
        ch, cw = min(kh, 2 * h - 1), min(kw, 2 * w - 1)
        if (ch, cw) == (kh, kw):
            return super()._conv_forward(input, weight, bias)
        top, left = (kh - ch) // 2, (kw - cw) // 2
        return torch.nn.functional.conv2d(input, weight[:, :, top:top + ch, left:left + cw],
                                          bias, 1, (ch // 2, cw // 2), 1, self.groups)

    @classmethod
    def applies_to(cls, conv: nn.Module) -> bool:
        """Only where cropping is exact: stride 1, dilation 1, zero "same" padding, odd kernel."""
        return (type(conv) is nn.Conv2d and conv.groups == conv.in_channels > 1
                and conv.stride == (1, 1) and conv.dilation == (1, 1)
                and conv.padding_mode == "zeros" and all(k % 2 == 1 for k in conv.kernel_size)
                and conv.padding == tuple(k // 2 for k in conv.kernel_size))


class PointwiseConv2d(nn.Conv2d):
    """A 1 x 1 conv computed as a matrix product over channels (`F.linear` on the channels-last
    view): the same function and parameters as the conv (a 1 x 1 conv *is* a per-position
    linear map), but one GEMM instead of a convolution kernel. With `conv_mlp=True` every block
    MLP of timm's ConvNeXt is two such convs; on CPU the GEMM trains them several times faster
    on the small late-stage maps. The output is channels-last in memory (a permuted view)."""

    def _conv_forward(self, input, weight, bias):  # noqa: A002 - torch's signature
        out = torch.nn.functional.linear(input.permute(0, 2, 3, 1),
                                         weight.reshape(weight.shape[0], weight.shape[1]), bias)
        return out.permute(0, 3, 1, 2)

    @classmethod
    def applies_to(cls, conv: nn.Module) -> bool:
        return (type(conv) is nn.Conv2d and conv.kernel_size == (1, 1) and conv.groups == 1
                and conv.stride == (1, 1) and conv.padding in ((0, 0), "valid")
                and conv.dilation == (1, 1))


def use_fast_convs(model: nn.Module) -> dict[str, int]:
    """Swap eligible convs in place for `SmallMapDepthwiseConv2d` / `PointwiseConv2d` (same
    weights, same state_dict keys, same function); returns how many of each were swapped."""
    swapped = {"depthwise": 0, "pointwise": 0}
    for module in model.modules():
        for child in module.children():
            if SmallMapDepthwiseConv2d.applies_to(child):
                child.__class__ = SmallMapDepthwiseConv2d
                swapped["depthwise"] += 1
            elif PointwiseConv2d.applies_to(child):
                child.__class__ = PointwiseConv2d
                swapped["pointwise"] += 1
    return swapped


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """AdamW groups: weight decay on conv/linear weights only, none on norms, biases, layer scale.

    Every 1-D parameter (norm weight/bias, DyT's α, conv/linear bias, layer-scale gamma) is
    excluded, as in the ConvNeXt reference code, and so are the parameters the model lists in
    timm's `no_weight_decay()` (a ViT's position embeddings and class token; timm's ConvNeXt
    lists none), which that code's optimizer factory also skips.
    """
    skip = set(model.no_weight_decay()) if hasattr(model, "no_weight_decay") else set()
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim <= 1 or name in skip else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0}]


_NORM_CLASS_NAME = re.compile(r"Norm(\d+d)?$")


def norm_modules(model: nn.Module) -> dict[str, list[str]]:
    """Names of the normalization modules by class name, to check what an arm really contains.

    Counts torch's norm classes and their subclasses, every registry class (e.g. DyT, which has
    no statistics), plus any class named like a norm (`...Norm`, `...Norm2d`; e.g. timm's own
    RmsNorm2d), so a norm that slipped past the registry shows up.
    """
    norm_types = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm,
                  nn.modules.instancenorm._InstanceNorm,
                  *SEQUENCE_NORMS.values(), *IMAGE_NORMS.values())
    out: dict[str, list[str]] = {}
    for name, module in model.named_modules():
        cls_name = type(module).__name__
        if isinstance(module, norm_types) or _NORM_CLASS_NAME.search(cls_name):
            out.setdefault(cls_name, []).append(name)
    return out


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_buffers(model: nn.Module) -> int:
    return sum(b.numel() for b in model.buffers())


@torch.no_grad()
def accuracy_counts(logits: torch.Tensor, target: torch.Tensor, ks=(1, 5)) -> list[torch.Tensor]:
    """How many samples have the target among the top-k logits, for each k (capped at classes)."""
    maxk = min(max(ks), logits.shape[1])
    top = logits.topk(maxk, dim=1).indices
    hit = top.eq(target[:, None])
    return [hit[:, :min(k, maxk)].any(dim=1).sum() for k in ks]
