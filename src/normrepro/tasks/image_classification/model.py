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

`model.variant: vit_*` builds a Vision Transformer instead (`normrepro.tasks.image_classification.vit`), trained by
the same Lightning module, data and recipe.
"""

from __future__ import annotations

import re
from typing import Callable

import timm
import torch
from torch import nn

from normrepro.config import ConfigError
from normrepro.tasks.image_classification.vit import build_vit
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
                          "model or one of the ViTs vit_* (normrepro.tasks.image_classification.vit.VIT_SIZES)")
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


# Largest map (in pixels, H x W) on which a depthwise conv runs as a matrix product (below).
# Measured on the 2-core CPU (one thread, batch 128, fwd+bwd, channels-last): 4 x 4 x 80 with a
# 7 x 7 kernel 32 -> 2.5 ms, 2 x 2 x 160 17 -> 2.5 ms; on 8 x 8 x 40 the 64 x 64 matrices cost
# about as much as oneDNN's conv (11 vs 15 ms), so larger maps keep the conv.
TOEPLITZ_MAX_PIXELS = 16


def _toeplitz_index(h: int, w: int, k_h: int, k_w: int) -> torch.Tensor:
    """(H·W, H·W) index into a depthwise kernel flattened to k_h·k_w taps (+1 zero column):
    entry [j, i] is the tap that multiplies input pixel i in output pixel j of a stride-1 conv
    with "same" zero padding, or k_h·k_w (the zero) where pixel i is out of the kernel's reach."""
    oh, ow = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    oh, ow = oh.reshape(-1), ow.reshape(-1)
    dh = oh[None, :] - oh[:, None] + k_h // 2
    dw = ow[None, :] - ow[:, None] + k_w // 2
    reach = (dh >= 0) & (dh < k_h) & (dw >= 0) & (dw < k_w)
    return torch.where(reach, dh * k_w + dw, k_h * k_w)


class _DepthwiseAsMatmul(torch.autograd.Function):
    """A "same"-padded stride-1 depthwise conv on a small map as one batched matrix product per
    channel: y_c (B, H·W) = x_c (B, H·W) · M_cᵀ, M_c the (H·W, H·W) Toeplitz matrix of channel
    c's kernel (`_toeplitz_index`). Backward by hand: ∂x_c = ∂y_c · M_c, and each tap's weight
    gradient is the sum of ∂M_c = ∂y_cᵀ · x_c over the entries that hold that tap (taps out of
    every pixel's reach get exactly 0). The operands are made contiguous per channel: CPU bmm
    otherwise copies every batch slice separately."""

    @staticmethod
    def forward(ctx, x, weight, index):
        B, C, H, W = x.shape
        taps = weight.shape[-2] * weight.shape[-1]
        flat = torch.cat([weight.reshape(C, taps), weight.new_zeros(C, 1)], 1)
        m = flat[:, index]                                              # (C, HW_out, HW_in)
        xs = x.permute(1, 0, 2, 3).reshape(C, B, H * W).contiguous()    # (C, B, HW_in)
        y = torch.bmm(xs, m.transpose(1, 2).contiguous())               # (C, B, HW_out)
        ctx.save_for_backward(xs, m, index)
        ctx.dims = (B, C, H, W, taps, weight.shape)
        return y.view(C, B, H, W).permute(1, 0, 2, 3)

    @staticmethod
    def backward(ctx, gy):
        xs, m, index = ctx.saved_tensors
        B, C, H, W, taps, wshape = ctx.dims
        gs = gy.permute(1, 0, 2, 3).reshape(C, B, H * W).contiguous()   # (C, B, HW_out)
        gx = torch.bmm(gs, m).view(C, B, H, W).permute(1, 0, 2, 3)
        gm = torch.bmm(gs.transpose(1, 2).contiguous(), xs)            # (C, HW_out, HW_in)
        gflat = gm.new_zeros(C, taps + 1).scatter_add_(
            1, index.view(1, -1).expand(C, -1), gm.reshape(C, -1))
        return gx, gflat[:, :taps].reshape(wshape), None


class SmallMapDepthwiseConv2d(nn.Conv2d):
    """A "same"-padded, stride-1 depthwise conv that skips the kernel taps which only ever see
    zero padding, and on CPU runs on the smallest maps as a matrix product.

    On an H x W map, a k x k kernel with padding k // 2 can reach a real pixel only with its
    central (2H - 1) x (2W - 1) taps; the others multiply padding zeros. ConvNeXt's 7 x 7
    depthwise convs run on 2 x 2 and 1 x 1 maps in the last stages at 32 x 32 inputs, where CPU
    kernels spend most of a training step on those zeros (the backward of the 1 x 1-map conv
    alone cost more than all 1 x 1 convs together). Cropping the kernel to the reachable taps
    computes the same function with the same parameters: the outputs are the same sums (up to
    float rounding order), and the unreachable taps get exactly zero gradient, as before.
    Even cropped, oneDNN's depthwise backward on 4 x 4 and 2 x 2 maps took 16-30 ms per call
    (batch 128, one thread): on CPU, maps of at most `TOEPLITZ_MAX_PIXELS` pixels therefore run
    as `_DepthwiseAsMatmul`, again the same sums in another order.
    """

    def _conv_forward(self, input, weight, bias):  # noqa: A002 - torch's signature
        kh, kw = self.kernel_size
        h, w = input.shape[-2:]
        if input.device.type == "cpu" and 1 < h * w <= TOEPLITZ_MAX_PIXELS:
            key = (h, w)
            cache = self.__dict__.setdefault("_toeplitz", {})
            if key not in cache:
                cache[key] = _toeplitz_index(h, w, kh, kw)
            y = _DepthwiseAsMatmul.apply(input, weight, cache[key])
            return y if bias is None else y + bias.view(1, -1, 1, 1)
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


class PatchConv2d(nn.Conv2d):
    """A conv whose kernel equals its stride (no padding, no groups): ConvNeXt's patchify stem
    and its 2 x 2 stride-2 downsampling layers. Each output pixel is a linear map of one
    non-overlapping patch, so the conv is one GEMM over the patches (`F.linear` with the kernel
    flattened in (kh, kw, C_in) order to match a channels-last patch): the same function and
    parameters. On CPU oneDNN's backward of the 2 x 2 downsampling convs took ~17 ms per step
    (batch 128, one thread, 2 x 2 -> 1 x 1 x 320). The output is channels-last in memory."""

    def _conv_forward(self, input, weight, bias):  # noqa: A002 - torch's signature
        B, C, H, W = input.shape
        kh, kw = self.kernel_size
        if H % kh or W % kw:  # (a remainder the conv would drop: leave it to the conv)
            return super()._conv_forward(input, weight, bias)
        patches = (input.permute(0, 2, 3, 1).reshape(B, H // kh, kh, W // kw, kw, C)
                   .transpose(2, 3).reshape(B, H // kh, W // kw, kh * kw * C))
        out = torch.nn.functional.linear(
            patches, weight.permute(0, 2, 3, 1).reshape(weight.shape[0], -1), bias)
        return out.permute(0, 3, 1, 2)

    @classmethod
    def applies_to(cls, conv: nn.Module) -> bool:
        return (type(conv) is nn.Conv2d and conv.groups == 1 and conv.kernel_size == conv.stride
                and conv.kernel_size != (1, 1) and conv.padding in ((0, 0), "valid")
                and conv.dilation == (1, 1))


def use_fast_convs(model: nn.Module) -> dict[str, int]:
    """Swap eligible convs in place for `SmallMapDepthwiseConv2d` / `PointwiseConv2d` /
    `PatchConv2d` (same weights, same state_dict keys, same function); returns how many of each
    were swapped."""
    swapped = {"depthwise": 0, "pointwise": 0, "patch": 0}
    for module in model.modules():
        for child in module.children():
            if SmallMapDepthwiseConv2d.applies_to(child):
                child.__class__ = SmallMapDepthwiseConv2d
                swapped["depthwise"] += 1
            elif PointwiseConv2d.applies_to(child):
                child.__class__ = PointwiseConv2d
                swapped["pointwise"] += 1
            elif PatchConv2d.applies_to(child):
                child.__class__ = PatchConv2d
                swapped["patch"] += 1
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
