"""fairseq's Transformer with every normalisation layer taken from `normrepro.norms` by position.

Positions (each gets its own module from `create_norm`, called as `norm(x, pad_mask)` with
`x` (T, B, C) and `pad_mask` (B, T) True at padding, or None when the batch has no padding):

    encoder_self_attn, encoder_ffn, encoder_final      (pad_mask = the source padding)
    decoder_self_attn, decoder_cross_attn, decoder_ffn, decoder_final
                                                       (pad_mask = the target-prefix padding)

The default arms swap the encoder norms and keep LayerNorm in the decoder, as the official
PowerNorm scripts do (`--encoder-norm-self/-ff power --decoder-norm-self/-ff layer`).

We subclass fairseq's `TransformerEncoderLayerBase`, `TransformerDecoderLayerBase`,
`TransformerEncoderBase`, `TransformerDecoderBase` and `TransformerModel`, replacing only the norm
modules and the two layer `forward`s (fairseq calls `norm(x)` without a mask, so a batch-statistics
norm would average over padding). Our own layer forwards also mean no fairseq inference fast path
(newer fairseq versions run a fused kernel that reads `.weight`/`.eps` off the norm and computes
LayerNorm whatever the module is) can ever replace a BatchNorm/PowerNorm at eval;
`tests/tasks/test_translation.py` (the fast-path test) checks that a BN encoder's eval output differs from the same
weights with LayerNorm substituted.

The final encoder/decoder norms are stored as `final_norm` (fairseq's `layer_norm` is set to None
so the base class never calls it without a mask) and applied after the base class's forward.

Norms run in float32 with autocast disabled: batch statistics in bfloat16 lose too much precision.

The model is registered with fairseq as `norm_transformer` (architectures `norm_transformer`,
`norm_transformer_iwslt_de_en`, `norm_transformer_tiny`) so that `fairseq-train --user-dir
src/normrepro/tasks/translation/fairseq_plugin --arch norm_transformer_iwslt_de_en --encoder-norm power`
builds exactly what the Lightning module trains.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

import torch
from torch import Tensor, nn

from fairseq.models import register_model, register_model_architecture
from fairseq.models.transformer import (
    TransformerConfig,
    TransformerDecoderBase,
    TransformerEncoderBase,
    TransformerModel,
)
from fairseq.models.transformer.transformer_legacy import base_architecture
from fairseq.modules.transformer_layer import TransformerDecoderLayerBase, TransformerEncoderLayerBase

from normrepro.norms import SEQUENCE_NORMS, create_norm

ENCODER_POSITIONS = ("encoder_self_attn", "encoder_ffn", "encoder_final")
DECODER_POSITIONS = ("decoder_self_attn", "decoder_cross_attn", "decoder_ffn", "decoder_final")
POSITIONS = ENCODER_POSITIONS + DECODER_POSITIONS
# Norms whose constructor takes the number of channel groups, and under which keyword.
_GROUP_KWARG = {"power": "group_num", "group": "num_groups"}


@dataclass
class NormPlan:
    """Which norm sits at each position, with its constructor kwargs.

    `names[pos]` is a registry name; `kwargs[name]` applies to every position using that norm;
    `overrides[pos]` may replace the name (`{"norm": name}`) and add kwargs for one norm at that
    position only (`{"power": {"warmup_iters": 1000}}`: used only if the norm there is `power`).
    PowerNorm's `group_num` defaults to the number of attention heads of that side, as the
    official code passes it.
    """

    names: Dict[str, str]
    kwargs: Dict[str, Dict[str, Any]] = field(default_factory=dict)
    overrides: Dict[str, Dict[str, Any]] = field(default_factory=dict)

    def __post_init__(self):
        for pos, name in self.names.items():
            if pos not in POSITIONS:
                raise ValueError(f"unknown norm position {pos!r}; valid: {POSITIONS}")
            if name not in SEQUENCE_NORMS:
                raise ValueError(f"{pos}: {name!r} is not a sequence norm; valid: {sorted(SEQUENCE_NORMS)}")
        for pos, ov in self.overrides.items():
            if pos not in POSITIONS:
                raise ValueError(f"norm override for unknown position {pos!r}; valid: {POSITIONS}")
            bad = [k for k in ov if k != "norm" and k not in SEQUENCE_NORMS]
            if bad:
                raise ValueError(f"norm_overrides.{pos}: {bad} are neither 'norm' nor norm names; "
                                 'write e.g. {"power": {"warmup_iters": 1000}}')

    @classmethod
    def from_args(cls, args) -> "NormPlan":
        enc = getattr(args, "encoder_norm", None) or "layer"
        dec = getattr(args, "decoder_norm", None) or "layer"
        names = {p: enc for p in ENCODER_POSITIONS} | {p: dec for p in DECODER_POSITIONS}
        overrides = _json_arg(getattr(args, "norm_overrides", None))
        for pos, ov in overrides.items():
            if pos in names and "norm" in ov:
                names[pos] = ov["norm"]
        return cls(names=names, kwargs=_json_arg(getattr(args, "norm_kwargs", None)), overrides=overrides)

    def build(self, position: str, dim: int, heads: int) -> nn.Module:
        name = self.names[position]
        kwargs = dict(self.kwargs.get(name) or {})
        kwargs.update((self.overrides.get(position) or {}).get(name) or {})
        if name in _GROUP_KWARG:
            kwargs.setdefault(_GROUP_KWARG[name], heads)
        return create_norm(name, dim, **kwargs)


def _json_arg(value) -> dict:
    if value is None or value == "":
        return {}
    if isinstance(value, dict):
        return value
    try:
        out = json.loads(value)
    except json.JSONDecodeError as exc:
        raise ValueError(f"expected a JSON object, got {value!r}: {exc}") from exc
    if not isinstance(out, dict):
        raise ValueError(f"expected a JSON object, got {value!r}")
    return out


def apply_norm(norm: nn.Module, x: Tensor, pad_mask: Optional[Tensor]) -> Tensor:
    """`norm(x, pad_mask)` in float32, outside autocast; the result keeps x's dtype."""
    if torch.is_autocast_enabled(x.device.type):
        with torch.autocast(device_type=x.device.type, enabled=False):
            return norm(x.float(), pad_mask).to(x.dtype)
    return norm(x, pad_mask)


def _unsupported(cfg, flags: Dict[str, Any]) -> None:
    for key, bad in flags.items():
        value = getattr(cfg, key, None)
        if value is not None and value == bad:
            raise ValueError(f"norm_transformer does not implement fairseq option {key}={value!r}")


class NormEncoderLayer(TransformerEncoderLayerBase):
    """fairseq's encoder layer with registry norms that receive the source padding mask."""

    def __init__(self, cfg, plan: NormPlan, return_fc: bool = False):
        if return_fc:
            raise ValueError("norm_transformer does not implement return_fc")
        super().__init__(cfg, return_fc=False)
        heads = cfg.encoder.attention_heads
        self.self_attn_layer_norm = plan.build("encoder_self_attn", self.embed_dim, heads)
        self.final_layer_norm = plan.build("encoder_ffn", self.embed_dim, heads)
        # Read by newer fairseq versions' fused inference path; our forward never takes it anyway.
        self.can_use_fastpath = False

    def forward(self, x, encoder_padding_mask: Optional[Tensor], attn_mask: Optional[Tensor] = None):
        if attn_mask is not None:
            attn_mask = attn_mask.masked_fill(attn_mask.to(torch.bool), -1e8 if x.dtype == torch.float32 else -1e4)
        pre = self.normalize_before
        residual = x
        if pre:
            x = apply_norm(self.self_attn_layer_norm, x, encoder_padding_mask)
        x, _ = self.self_attn(query=x, key=x, value=x, key_padding_mask=encoder_padding_mask,
                              need_weights=False, attn_mask=attn_mask)
        x = self.residual_connection(self.dropout_module(x), residual)
        if not pre:
            x = apply_norm(self.self_attn_layer_norm, x, encoder_padding_mask)
        residual = x
        if pre:
            x = apply_norm(self.final_layer_norm, x, encoder_padding_mask)
        x = self.fc2(self.activation_dropout_module(self.activation_fn(self.fc1(x))))
        x = self.residual_connection(self.dropout_module(x), residual)
        if not pre:
            x = apply_norm(self.final_layer_norm, x, encoder_padding_mask)
        return x


class NormDecoderLayer(TransformerDecoderLayerBase):
    """fairseq's decoder layer with registry norms that receive the target padding mask.

    The forward keeps fairseq's incremental decoding (used by `SequenceGenerator`) and drops the
    options this replication never uses (cross+self attention, head/residual scaling), which
    are rejected at construction.
    """

    def __init__(self, cfg, plan: NormPlan, no_encoder_attn: bool = False):
        _unsupported(cfg, {"cross_self_attention": True, "scale_attn": True, "scale_heads": True,
                           "scale_fc": True, "scale_resids": True})
        super().__init__(cfg, no_encoder_attn=no_encoder_attn)
        heads = cfg.decoder.attention_heads
        self.self_attn_layer_norm = plan.build("decoder_self_attn", self.embed_dim, heads)
        if self.encoder_attn is not None:
            self.encoder_attn_layer_norm = plan.build("decoder_cross_attn", self.embed_dim, heads)
        self.final_layer_norm = plan.build("decoder_ffn", self.embed_dim, heads)

    def forward(self, x, encoder_out: Optional[Tensor] = None, encoder_padding_mask: Optional[Tensor] = None,
                incremental_state: Optional[Dict[str, Dict[str, Optional[Tensor]]]] = None,
                prev_self_attn_state: Optional[List[Tensor]] = None,
                prev_attn_state: Optional[List[Tensor]] = None,
                self_attn_mask: Optional[Tensor] = None, self_attn_padding_mask: Optional[Tensor] = None,
                need_attn: bool = False, need_head_weights: bool = False):
        if prev_self_attn_state is not None or prev_attn_state is not None:
            raise NotImplementedError("norm_transformer does not take prev_*_attn_state")
        need_attn = need_attn or need_head_weights
        pre = self.normalize_before
        tgt_pad = self_attn_padding_mask  # (B, T) of the tokens in x, or None

        residual = x
        if pre:
            x = apply_norm(self.self_attn_layer_norm, x, tgt_pad)
        x, attn = self.self_attn(query=x, key=x, value=x, key_padding_mask=self_attn_padding_mask,
                                 incremental_state=incremental_state, need_weights=False,
                                 attn_mask=self_attn_mask)
        x = self.residual_connection(self.dropout_module(x), residual)
        if not pre:
            x = apply_norm(self.self_attn_layer_norm, x, tgt_pad)

        if self.encoder_attn is not None and encoder_out is not None:
            residual = x
            if pre:
                x = apply_norm(self.encoder_attn_layer_norm, x, tgt_pad)
            x, attn = self.encoder_attn(query=x, key=encoder_out, value=encoder_out,
                                        key_padding_mask=encoder_padding_mask,
                                        incremental_state=incremental_state, static_kv=True,
                                        need_weights=need_attn or (not self.training and self.need_attn),
                                        need_head_weights=need_head_weights)
            x = self.residual_connection(self.dropout_module(x), residual)
            if not pre:
                x = apply_norm(self.encoder_attn_layer_norm, x, tgt_pad)

        residual = x
        if pre:
            x = apply_norm(self.final_layer_norm, x, tgt_pad)
        x = self.fc2(self.activation_dropout_module(self.activation_fn(self.fc1(x))))
        x = self.residual_connection(self.dropout_module(x), residual)
        if not pre:
            x = apply_norm(self.final_layer_norm, x, tgt_pad)
        return x, attn, None


def _no_checkpointing(cfg) -> None:
    if getattr(cfg, "checkpoint_activations", False) or getattr(cfg, "offload_activations", False):
        raise ValueError("norm_transformer does not implement activation checkpointing")


class NormTransformerEncoder(TransformerEncoderBase):
    def __init__(self, cfg, dictionary, embed_tokens, plan: NormPlan):
        _no_checkpointing(cfg)
        self.norm_plan = plan  # read by build_encoder_layer during the base __init__
        super().__init__(cfg, dictionary, embed_tokens)
        self.final_norm = (plan.build("encoder_final", embed_tokens.embedding_dim, cfg.encoder.attention_heads)
                           if cfg.encoder.normalize_before else None)
        self.layer_norm = None

    def build_encoder_layer(self, cfg):
        return NormEncoderLayer(cfg, self.norm_plan)

    def forward_scriptable(self, src_tokens, src_lengths: Optional[Tensor] = None,
                           return_all_hiddens: bool = False, token_embeddings: Optional[Tensor] = None):
        out = super().forward_scriptable(src_tokens, src_lengths, return_all_hiddens, token_embeddings)
        if self.final_norm is not None:
            pad = out["encoder_padding_mask"][0]
            out["encoder_out"] = [apply_norm(self.final_norm, out["encoder_out"][0], pad if pad.any() else None)]
        return out


class NormTransformerDecoder(TransformerDecoderBase):
    def __init__(self, cfg, dictionary, embed_tokens, plan: NormPlan, no_encoder_attn: bool = False):
        _no_checkpointing(cfg)
        self.norm_plan = plan
        super().__init__(cfg, dictionary, embed_tokens, no_encoder_attn=no_encoder_attn)
        if self.project_out_dim is not None:
            raise ValueError("norm_transformer needs decoder_output_dim == decoder_embed_dim")
        self.final_norm = (plan.build("decoder_final", self.embed_dim, cfg.decoder.attention_heads)
                           if self.layer_norm is not None else None)
        self.layer_norm = None

    def build_decoder_layer(self, cfg, no_encoder_attn=False):
        return NormDecoderLayer(cfg, self.norm_plan, no_encoder_attn)

    def extract_features_scriptable(self, prev_output_tokens, encoder_out: Optional[Dict[str, List[Tensor]]],
                                    incremental_state: Optional[Dict[str, Dict[str, Optional[Tensor]]]] = None,
                                    full_context_alignment: bool = False, alignment_layer: Optional[int] = None,
                                    alignment_heads: Optional[int] = None):
        x, extra = super().extract_features_scriptable(prev_output_tokens, encoder_out, incremental_state,
                                                       full_context_alignment, alignment_layer, alignment_heads)
        if self.final_norm is not None:
            # The base class embedded only the last position when decoding incrementally.
            tokens = prev_output_tokens[:, -1:] if incremental_state is not None else prev_output_tokens
            pad = tokens.eq(self.padding_idx)
            x = apply_norm(self.final_norm, x.transpose(0, 1), pad if pad.any() else None).transpose(0, 1)
        return x, extra


@register_model("norm_transformer")
class NormTransformerModel(TransformerModel):
    """fairseq `TransformerModel` whose norms come from `normrepro.norms` (see module doc)."""

    @classmethod
    def add_args(cls, parser):
        super().add_args(parser)
        names = sorted(SEQUENCE_NORMS)
        parser.add_argument("--encoder-norm", choices=names, help="norm at every encoder position")
        parser.add_argument("--decoder-norm", choices=names, help="norm at every decoder position")
        parser.add_argument("--norm-kwargs", type=str, metavar="JSON",
                            help='constructor kwargs per norm name, e.g. {"power": {"warmup_iters": 8000}}')
        parser.add_argument("--norm-overrides", type=str, metavar="JSON",
                            help='per-position norm and kwargs, e.g. {"encoder_final": {"power": {"warmup_iters": 1000}}}')

    @classmethod
    def build_encoder(cls, args, src_dict, embed_tokens):
        return NormTransformerEncoder(TransformerConfig.from_namespace(args), src_dict, embed_tokens,
                                      NormPlan.from_args(args))

    @classmethod
    def build_decoder(cls, args, tgt_dict, embed_tokens):
        return NormTransformerDecoder(TransformerConfig.from_namespace(args), tgt_dict, embed_tokens,
                                      NormPlan.from_args(args),
                                      no_encoder_attn=getattr(args, "no_cross_attention", False))


@register_model_architecture("norm_transformer", "norm_transformer")
def norm_transformer_base(args):
    args.encoder_norm = getattr(args, "encoder_norm", None) or "layer"
    args.decoder_norm = getattr(args, "decoder_norm", None) or "layer"
    args.norm_kwargs = getattr(args, "norm_kwargs", None)
    args.norm_overrides = getattr(args, "norm_overrides", None)
    base_architecture(args)


@register_model_architecture("norm_transformer", "norm_transformer_iwslt_de_en")
def norm_transformer_iwslt_de_en(args):
    """The PowerNorm paper's IWSLT14 model (official `transformer_iwslt_de_en_v2` minus the
    pre-norm default, which configs pass explicitly): 6+6 layers, d=512, FFN 1024, 4 heads,
    attention and ReLU dropout 0.1."""
    args.encoder_embed_dim = getattr(args, "encoder_embed_dim", 512)
    args.encoder_ffn_embed_dim = getattr(args, "encoder_ffn_embed_dim", 1024)
    args.encoder_attention_heads = getattr(args, "encoder_attention_heads", 4)
    args.encoder_layers = getattr(args, "encoder_layers", 6)
    args.decoder_embed_dim = getattr(args, "decoder_embed_dim", 512)
    args.decoder_ffn_embed_dim = getattr(args, "decoder_ffn_embed_dim", 1024)
    args.decoder_attention_heads = getattr(args, "decoder_attention_heads", 4)
    args.decoder_layers = getattr(args, "decoder_layers", 6)
    args.attention_dropout = getattr(args, "attention_dropout", 0.1)
    args.activation_dropout = getattr(args, "activation_dropout", 0.1)
    norm_transformer_base(args)


@register_model_architecture("norm_transformer", "norm_transformer_tiny")
def norm_transformer_tiny(args):
    args.encoder_embed_dim = getattr(args, "encoder_embed_dim", 32)
    args.encoder_ffn_embed_dim = getattr(args, "encoder_ffn_embed_dim", 64)
    args.encoder_attention_heads = getattr(args, "encoder_attention_heads", 2)
    args.encoder_layers = getattr(args, "encoder_layers", 1)
    args.decoder_embed_dim = getattr(args, "decoder_embed_dim", args.encoder_embed_dim)
    args.decoder_ffn_embed_dim = getattr(args, "decoder_ffn_embed_dim", args.encoder_ffn_embed_dim)
    args.decoder_attention_heads = getattr(args, "decoder_attention_heads", 2)
    args.decoder_layers = getattr(args, "decoder_layers", 1)
    norm_transformer_base(args)


# ---------------------------------------------------------------------------------------------
# config (YAML `model:` section) <-> fairseq args

_ARCHS = {"norm_transformer": norm_transformer_base,
          "norm_transformer_iwslt_de_en": norm_transformer_iwslt_de_en,
          "norm_transformer_tiny": norm_transformer_tiny}
_JSON_KEYS = ("norm_kwargs", "norm_overrides")


def model_args_from_config(model_cfg: dict, warmup_updates: int | None = None) -> dict:
    """The `model:` config as fairseq argument values (JSON-encoded norm dicts), with PowerNorm's
    `warmup_iters` defaulting to the LR warm-up, as the official scripts pass `--warmup-updates`."""
    cfg = dict(model_cfg)
    arch = cfg.get("arch", "norm_transformer")
    if arch not in _ARCHS:
        raise ValueError(f"unknown arch {arch!r}; choose one of {sorted(_ARCHS)}")
    kwargs = {k: dict(v or {}) for k, v in (cfg.get("norm_kwargs") or {}).items()}
    for name, kw in kwargs.items():
        if name not in SEQUENCE_NORMS:
            raise ValueError(f"norm_kwargs: {name!r} is not a sequence norm; valid: {sorted(SEQUENCE_NORMS)}")
    uses_power = "power" in (cfg.get("encoder_norm"), cfg.get("decoder_norm")) or any(
        (ov or {}).get("norm") == "power" for ov in (cfg.get("norm_overrides") or {}).values())
    if uses_power and warmup_updates is not None:
        kwargs.setdefault("power", {}).setdefault("warmup_iters", int(warmup_updates))
    cfg["norm_kwargs"] = kwargs
    for key in _JSON_KEYS:
        cfg[key] = json.dumps(cfg.get(key) or {}, sort_keys=True)
    return cfg


def fairseq_cli_flags(model_args: dict) -> list[str]:
    """The same model as `fairseq-train` flags (`--arch`, `--encoder-layers 6`, store-true flags)."""
    flags = ["--arch", model_args.get("arch", "norm_transformer")]
    for key, value in model_args.items():
        if key == "arch" or value is None:
            continue
        flag = "--" + key.replace("_", "-")
        if isinstance(value, bool):
            if value:
                flags.append(flag)
            # fairseq's store-true flags default to False in every architecture used here.
            continue
        flags += [flag, str(value)]
    return flags


class _Task:
    """The two attributes `TransformerModel.build_model` reads from a fairseq task."""

    def __init__(self, src_dict, tgt_dict):
        self.source_dictionary, self.target_dictionary = src_dict, tgt_dict


def build_model(model_args: dict, src_dict, tgt_dict) -> NormTransformerModel:
    """Build the model from `model_args_from_config(...)` output, as `fairseq-train` would."""
    args = argparse.Namespace(**model_args)
    _ARCHS[model_args.get("arch", "norm_transformer")](args)
    return NormTransformerModel.build_model(args, _Task(src_dict, tgt_dict))


def norm_modules(model: nn.Module) -> Dict[str, nn.Module]:
    """Every norm module of the model by qualified name (for tests and reports)."""
    out = {}
    for name, mod in model.named_modules():
        if name.endswith(("self_attn_layer_norm", "encoder_attn_layer_norm", "final_layer_norm", "final_norm")):
            out[name] = mod
    return out
