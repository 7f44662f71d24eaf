"""The norm-layer registry: every normalisation used by the replications, keyed by a string.

`create_norm(name, num_features, **kwargs)` builds a module; `get_norm_layer(name)` returns a
callable `(num_features, **kwargs)` usable as timm's `norm_layer`; `NORM_NAMES` lists the names.

Two families, by input layout:

* Sequence norms take fairseq's `(T, B, C)` layout and are called `norm(x, pad_mask=None)` with
  `pad_mask` of shape `(B, T)`, True at padding. Names: `layer`, `batch`, `batch_unmasked`,
  `bn_official`, `sync_batch`, `power_vanilla`, `power`, `rms`, `group`, `instance`, `dyt`.
* Image norms take `(B, C, H, W)`: `layer2d` (LayerNorm over C at each position, as in ConvNeXt),
  `batch2d`, `sync_batch2d`, `group2d`, `instance2d`, `dyt2d`.

Which axes each one reduces over (the "normalisation cube"; verified by perturbation tests):

=============  ======================================  ==========================================
name           statistics computed over                one statistic per
=============  ======================================  ==========================================
layer          C                                       token (t, b)
rms            C (no mean subtraction)                 token (t, b)
group          C/G channels of one group               token and group
instance       T (non-pad positions of one sentence)   sentence and channel (b, c)
batch          T x B (all non-pad tokens of the batch)  channel
batch_unmasked T x B (all positions, padding included) channel
bn_official    T x B, padding filled with the real mean channel (after scaling each token by its
                                                       root mean square over C; see its docstring)
sync_batch     T x B of every worker in the group      channel
power(_vanilla) T x B (non-pad; quadratic mean only)   channel
layer2d        C                                       position (b, h, w)
batch2d        B x H x W                               channel
sync_batch2d   B x H x W of every worker in the group  channel
group2d        C/G x H x W                             sample and group
instance2d     H x W                                   sample and channel
dyt, dyt2d     nothing: γ·tanh(α·x) + β, element-wise  element (Dynamic Tanh, `norms.dyt`)
=============  ======================================  ==========================================

Masked batch statistics (`batch`, `power_vanilla`, `power` forward) use only non-pad tokens, so
padding changes neither the statistics nor the output at real tokens. `batch`,
`power_vanilla` and `instance` output zeros at padding positions, so that their gradients are exact
gradients of a function of the real tokens; `power` keeps the official code's unmasked output.

One module per family, each documenting its norms:

* `layer`: `layer`, `rms`, `layer2d`;
* `batch`: `batch`, `batch_unmasked`, `bn_official`, `sync_batch`, `batch2d`, `sync_batch2d`, and
  batch-statistic recording (`record_stats` / `last_stats`);
* `power`: `power_vanilla`, `power` (and where `power` follows the official code, not the paper);
* `group`: `group`, `instance`, `group2d`, `instance2d`;
* `dyt`: `dyt`, `dyt2d` (Dynamic Tanh, no statistics);
* `kernels`: the compiled-kernel machinery the fused norms share (`eager_kernels()`),
  `native`: hand-written one-pass CPU kernels of `rms` and `dyt` (float32), and
  `common`: input checks and dtype rules.
"""

from __future__ import annotations

import inspect
from typing import Callable

from torch import nn

from normrepro.norms.batch import (BatchNorm2d, MaskedBatchNorm, OfficialBatchNorm,
                                   SyncBatchNorm2d, SyncMaskedBatchNorm, UnmaskedBatchNorm)
from normrepro.norms.dyt import DyT, DyT2d
from normrepro.norms.group import GroupNorm2d, InstanceNorm2d, SeqGroupNorm, SeqInstanceNorm
from normrepro.norms.kernels import eager_kernels
from normrepro.norms.layer import LayerNorm2d, SeqLayerNorm, SeqRMSNorm
from normrepro.norms.power import PowerNorm, PowerNormVanilla

__all__ = ["NORM_NAMES", "SEQUENCE_NORMS", "IMAGE_NORMS", "create_norm", "get_norm_layer",
           "is_sequence_norm", "register_norm", "eager_kernels"]


# --------------------------------------------------------------------------------------------
# registry

SEQUENCE_NORMS: dict[str, type[nn.Module]] = {
    "layer": SeqLayerNorm,
    "batch": MaskedBatchNorm,
    "batch_unmasked": UnmaskedBatchNorm,
    "bn_official": OfficialBatchNorm,
    "sync_batch": SyncMaskedBatchNorm,
    "power_vanilla": PowerNormVanilla,
    "power": PowerNorm,
    "rms": SeqRMSNorm,
    "group": SeqGroupNorm,
    "instance": SeqInstanceNorm,
    "dyt": DyT,
}
IMAGE_NORMS: dict[str, type[nn.Module]] = {
    "layer2d": LayerNorm2d,
    "batch2d": BatchNorm2d,
    "sync_batch2d": SyncBatchNorm2d,
    "group2d": GroupNorm2d,
    "instance2d": InstanceNorm2d,
    "dyt2d": DyT2d,
}
_REGISTRY: dict[str, type[nn.Module]] = {**SEQUENCE_NORMS, **IMAGE_NORMS}
NORM_NAMES: tuple[str, ...] = tuple(_REGISTRY)


def register_norm(name: str, cls: type[nn.Module], sequence: bool) -> None:
    """Add a norm to the registry at run time (for a norm defined outside this package; the
    package's own norms are all in the dicts above)."""
    global NORM_NAMES
    (SEQUENCE_NORMS if sequence else IMAGE_NORMS)[name] = cls
    _REGISTRY[name] = cls
    NORM_NAMES = tuple(_REGISTRY)


def is_sequence_norm(name: str) -> bool:
    _lookup(name)
    return name in SEQUENCE_NORMS


def _lookup(name: str) -> type[nn.Module]:
    if name not in _REGISTRY:
        raise ValueError(f"unknown norm {name!r}; valid names: {', '.join(NORM_NAMES)}")
    return _REGISTRY[name]


def create_norm(name: str, num_features: int, **kwargs) -> nn.Module:
    """Build the norm `name` for `num_features` channels; kwargs go to its constructor
    (every norm accepts `affine`, and every one but `dyt`/`dyt2d` accepts `eps`: DyT divides by
    nothing; an unknown kwarg is an error)."""
    cls = _lookup(name)
    if not isinstance(num_features, int) or isinstance(num_features, bool) or num_features <= 0:
        raise ValueError(f"num_features must be a positive int, got {num_features!r}")
    accepted = [p for p in inspect.signature(cls.__init__).parameters if p not in ("self", "num_features")]
    unknown = sorted(set(kwargs) - set(accepted))
    if unknown:
        # Strict on purpose: a misspelt `warmup_iter` must not silently fall back to a default.
        raise ValueError(f"norm {name!r} does not take {unknown}; it accepts {accepted}")
    return cls(num_features, **kwargs)


def get_norm_layer(name: str, **defaults) -> Callable[..., nn.Module]:
    """A `(num_features, device=None, dtype=None, **kwargs)` factory for `name`, usable as
    timm's `norm_layer=`.

    A plain function rather than `functools.partial(create_norm, name)`: timm rebuilds partials
    from their keyword arguments only (losing the name), and passes `device`/`dtype`, which are
    placement, not norm options.
    """
    _lookup(name)

    def norm_layer(num_features: int, device=None, dtype=None, **kwargs) -> nn.Module:
        module = create_norm(name, num_features, **{**defaults, **kwargs})
        if device is not None or dtype is not None:
            module = module.to(device=device, dtype=dtype)
        return module

    norm_layer.__name__ = norm_layer.__qualname__ = f"{name}_norm_layer"
    return norm_layer
