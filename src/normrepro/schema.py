"""Typed schemas of the replications' configs: every key, its type and the checks on its value.

Each YAML layer (base.yaml, a profile, an arm, the command line's SET) is checked against the
schema of its replication's task (base.yaml's `task`) before it is merged, and the merged run config once more for the keys
every run needs, so that a mistake fails before anything under results/ is touched:

* an unknown key fails with the closest valid key (`optim.base_lrr` → did you mean
  `optim.base_lr`?);
* a value of the wrong type fails with the type expected (`optim.base_lr: 'abc' is not a number`);
  a number given as a string that YAML did not parse as one (`1e-3`) is converted;
* norm names are checked against the registry (`normrepro.norms`), data set names against the
  data modules, and the message names the file (or `SET`) the value came from.

The schemas are dataclasses used only as declarations: field name → type. Supported types:
`int`, `float` (an int is accepted), `bool`, `str`, `Optional[T]`, `list[T]`, `dict[str, T]`,
`Any`, `Literal[...]`, `Union[...]` of those, a nested schema, and `Annotated[T, Check]` for a
check on the value (norm and data set names).
"""

from __future__ import annotations

import dataclasses
import difflib
import sys
import types
import typing
from dataclasses import dataclass
from typing import Annotated, Any, Callable, Literal, Optional, Union

from normrepro.errors import ConfigError


@dataclass(frozen=True)
class Check:
    """A check on a value: `fn(value)` returns None when fine, else the problem in words."""

    fn: Callable[[Any], Optional[str]]


def _choice_problem(value: str, choices: list[str], what: str) -> Optional[str]:
    if value in choices:
        return None
    close = difflib.get_close_matches(str(value), choices, n=1, cutoff=0.6)
    hint = f"did you mean {close[0]!r}? (choices: " if close else "choose from "
    return f"{value!r} is not {what}; {hint}{', '.join(choices)}{')' if close else ''}"


# The registry's names and the image data sets, kept here so that checking a config imports
# neither torch nor the data modules (a make command is checked in well under a second); tests
# check they equal normrepro.norms' registry and normrepro.tasks.image_classification.data.DATASETS. A norm added
# at run time with `normrepro.norms.register_norm` counts once it is registered.
IMAGE_NORM_NAMES = ("layer2d", "batch2d", "sync_batch2d", "group2d", "instance2d", "dyt2d")
SEQUENCE_NORM_NAMES = ("layer", "batch", "batch_unmasked", "bn_official", "sync_batch",
                       "power_vanilla", "power", "rms", "group", "instance", "dyt")
IMAGE_DATASETS = ("fashion-mnist", "cifar10", "cifar100", "imagenette", "imagenet")


def _registered(attr: str, static: tuple[str, ...]) -> list[str]:
    norms = sys.modules.get("normrepro.norms")
    return sorted(getattr(norms, attr)) if norms is not None else sorted(static)


def _model_norm(value: str) -> Optional[str]:
    # ConvNeXt takes an image norm, a ViT (model.variant vit_*) a sequence norm for its tokens;
    # which one fits the variant is checked when the model is built.
    return _choice_problem(value, _registered("IMAGE_NORMS", IMAGE_NORM_NAMES)
                           + _registered("SEQUENCE_NORMS", SEQUENCE_NORM_NAMES),
                           "an image norm (ConvNeXt) or a sequence norm (ViT) of the registry")


def _sequence_norm(value: str) -> Optional[str]:
    return _choice_problem(value, _registered("SEQUENCE_NORMS", SEQUENCE_NORM_NAMES),
                           "a sequence norm of the registry")


def _image_dataset(value: str) -> Optional[str]:
    return _choice_problem(value, sorted(IMAGE_DATASETS), "an image data set of this replication")


def _translation_dataset(value: str) -> Optional[str]:
    return _choice_problem(value, list(TRANSLATION_TRAIN_DATASETS), "a training data set of this "
                           "replication")


def _translation_any_dataset(value: str) -> Optional[str]:
    return _choice_problem(value, list(TRANSLATION_DATASETS), "a translation data set")


def _positive(value) -> Optional[str]:
    return None if value > 0 else f"{value!r} must be positive"


def _non_negative(value) -> Optional[str]:
    return None if value >= 0 else f"{value!r} must be >= 0"


MODEL_NORM = Check(_model_norm)
SEQUENCE_NORM = Check(_sequence_norm)
POSITIVE = Check(_positive)
NON_NEGATIVE = Check(_non_negative)
# Kept here rather than imported, so that checking a config does not import fairseq; a test
# checks they equal normrepro.tasks.translation.prepare.DATASETS.
TRANSLATION_DATASETS = ("bible-de-en", "ding-de-en", "iwslt14")
TRANSLATION_TRAIN_DATASETS = ("bible-de-en", "iwslt14")

PosInt = Annotated[int, POSITIVE]
NonNegInt = Annotated[int, NON_NEGATIVE]
NonNegFloat = Annotated[float, NON_NEGATIVE]
Devices = Union[int, str, list[int]]
Precision = Union[int, str]


# ---------------------------------------------------------------------------------------------
# Task image_classification (replications/convnext: ConvNeXt, ViT)

@dataclass
class CxAugment:
    crop: Literal["random_crop", "rrc"]
    crop_padding: NonNegInt
    rrc_scale: list[float]
    hflip: NonNegFloat
    rand_augment: Optional[str]
    random_erasing: NonNegFloat
    mixup: NonNegFloat
    cutmix: NonNegFloat
    mixup_prob: NonNegFloat
    mixup_switch_prob: NonNegFloat
    eval_crop_pct: Annotated[float, POSITIVE]


@dataclass
class CxData:
    dataset: Annotated[str, Check(_image_dataset)]
    raw_root: str
    processed_root: str
    image_size: Optional[PosInt]
    batch_size: PosInt
    eval_batch_size: PosInt
    val_size: NonNegInt
    train_subset: Optional[PosInt]
    test_subset: Optional[PosInt]
    split_seed: NonNegInt
    num_workers: NonNegInt
    prefetch_factor: PosInt
    augment: CxAugment


@dataclass
class CxModel:
    variant: str
    norm: Annotated[str, MODEL_NORM]
    norm_eps: Optional[Annotated[float, POSITIVE]]
    patch_size: Optional[PosInt]
    drop_path_rate: NonNegFloat
    channels_last: Optional[bool]
    ema: bool
    ls_init_value: Any
    kwargs: dict[str, Any]


@dataclass
class CxOptim:
    lr: Optional[Annotated[float, POSITIVE]]
    base_lr: Annotated[float, POSITIVE]
    base_batch: PosInt
    weight_decay: NonNegFloat
    betas: list[float]
    eps: Annotated[float, POSITIVE]
    warmup_epochs: NonNegFloat
    min_lr: NonNegFloat
    label_smoothing: NonNegFloat


@dataclass
class CxTrainer:
    max_epochs: PosInt
    accelerator: str
    devices: Devices
    num_nodes: PosInt
    strategy: str
    precision: Precision
    sync_batchnorm: bool
    accumulate_grad_batches: PosInt
    gradient_clip_val: Optional[NonNegFloat]
    deterministic: bool
    cudnn_benchmark: bool
    progress_bar: bool
    print_epochs: bool
    nan_check_every: NonNegInt
    threads: Optional[NonNegInt]   # CPU intra-op threads of a run; null: torch's default


@dataclass
class ImageClassificationConfig:
    task: Literal["image_classification"]
    arms: list[str]
    seeds: list[NonNegInt]
    data: CxData
    model: CxModel
    optim: CxOptim
    trainer: CxTrainer
    sweep: dict[str, Any]          # make sweep-<name>'s settings (normrepro.sweep)
    sweep_role: str                # set on the sweep's own run configs
    arm_overrides: dict[str, Any]  # profile only: `<arm>: {partial config}`, checked per arm
    parallel_runs: PosInt          # runs (train/evaluate) make runs at once (the plan's -j)
    profile: str
    arm: str
    seed: NonNegInt
    replication: str
    insights: dict[str, Any]       # an insights run built on this replication
    also_replicate: list[str]      # base.yaml: replications `make replicate-<name>` runs after it


# Config keys that do not change what training produces (a change retrains nothing; evaluation
# and reports follow the new values): they are left out of each run's stamp (normrepro.rundir).
# `report` is no config section any more (a claim's margin lives in paper.yaml); it stays listed
# so that a run folder whose config.yaml still has one compares equal to the same run without.
NOT_TRAINING = {
    "image_classification": ("task", "report", "arms", "seeds", "sweep", "also_replicate", "parallel_runs", "trainer.print_epochs",
                 "trainer.progress_bar"),
    "translation": ("task", "eval", "report", "arms", "seeds", "sweep", "also_replicate", "ood", "prepare", "parallel_runs",
                  "trainer.progress_bar"),
}

IMAGE_CLASSIFICATION_REQUIRED = ("seed", "data.dataset", "data.batch_size", "model.variant", "model.norm",
                     "optim.base_lr", "optim.base_batch", "optim.weight_decay",
                     "trainer.max_epochs")


# ---------------------------------------------------------------------------------------------
# Task translation (replications/powernorm)

@dataclass
class PnBibleSubset:
    train: Optional[PosInt]
    valid: Optional[PosInt]
    test: Optional[PosInt]


@dataclass
class PnPrepareBible:
    bpe_size: PosInt
    valid_verses: PosInt
    test_verses: PosInt
    subset: Optional[PnBibleSubset]
    max_words: Optional[PosInt]


@dataclass
class PnPrepareDing:
    max_pairs: Optional[PosInt]


@dataclass
class PnPrepareIwslt:
    bpe_size: PosInt


@dataclass
class PnPrepare:
    # One field per data set of normrepro.tasks.translation.prepare (hyphens are not identifiers).
    bible_de_en: PnPrepareBible
    ding_de_en: PnPrepareDing
    iwslt14: PnPrepareIwslt


@dataclass
class PnModel:
    arch: Literal["norm_transformer", "norm_transformer_iwslt_de_en", "norm_transformer_tiny"]
    encoder_layers: PosInt
    decoder_layers: PosInt
    encoder_embed_dim: PosInt
    decoder_embed_dim: PosInt
    encoder_ffn_embed_dim: PosInt
    decoder_ffn_embed_dim: PosInt
    encoder_attention_heads: PosInt
    decoder_attention_heads: PosInt
    encoder_normalize_before: bool
    decoder_normalize_before: bool
    share_all_embeddings: bool
    dropout: NonNegFloat
    attention_dropout: NonNegFloat
    activation_dropout: NonNegFloat
    encoder_norm: Annotated[str, SEQUENCE_NORM]
    decoder_norm: Annotated[str, SEQUENCE_NORM]
    norm_kwargs: dict[str, dict[str, Any]]   # per norm name: constructor kwargs
    norm_overrides: dict[str, dict[str, Any]]  # per position: {norm: name, <norm>: kwargs}


@dataclass
class PnData:
    dataset: Annotated[str, Check(_translation_dataset)]
    variant: Optional[str]                 # non-empty: data/processed/<dataset>-<variant>
    max_tokens: PosInt
    max_sentences: Optional[PosInt]
    train_max_positions: Optional[PosInt]
    num_workers: NonNegInt
    required_batch_size_multiple: PosInt   # training batches only (fairseq's default 8)


@dataclass
class PnOptim:
    lr: Annotated[float, POSITIVE]
    warmup_updates: NonNegInt
    warmup_init_lr: NonNegFloat
    weight_decay: NonNegFloat
    betas: list[float]
    eps: Annotated[float, POSITIVE]
    clip_norm: NonNegFloat
    label_smoothing: NonNegFloat


@dataclass
class PnTrainer:
    max_updates: Optional[PosInt]
    max_epochs: Optional[PosInt]
    val_every_updates: Optional[PosInt]
    early_stop_patience: Optional[NonNegInt]
    keep_snapshots: PosInt
    resume_every_updates: Optional[NonNegInt]
    precision: Precision
    devices: Devices
    num_nodes: Optional[PosInt]
    threads: Optional[NonNegInt]
    progress_bar: bool


@dataclass
class PnValBleu:
    sentences: NonNegInt
    beam: PosInt


@dataclass
class PnEval:
    beam: PosInt
    lenpen: float
    batch_size: PosInt
    max_len_a: NonNegFloat
    max_len_b: NonNegInt
    recompute_stats_batches: NonNegInt   # BN/PN running statistics recomputed on K training batches (0 = off)


@dataclass
class TranslationConfig:
    task: Literal["translation"]
    ood: list[Annotated[str, Check(_translation_any_dataset)]]
    arms: list[str]
    seeds: list[NonNegInt]
    parallel_runs: PosInt
    prepare: PnPrepare
    model: PnModel
    data: PnData
    optim: PnOptim
    trainer: PnTrainer
    val_bleu: PnValBleu
    eval: PnEval
    sweep: dict[str, Any]          # make sweep-<name>'s settings (normrepro.sweep)
    sweep_role: str                # set on the sweep's own run configs
    arm_overrides: dict[str, Any]
    profile: str
    arm: str
    seed: NonNegInt
    replication: str
    insights: dict[str, Any]
    also_replicate: list[str]      # base.yaml: replications `make replicate-<name>` runs after it


TRANSLATION_REQUIRED = ("seed", "data.dataset", "model.arch", "model.encoder_norm", "model.decoder_norm",
                      "data.max_tokens", "optim.lr", "optim.warmup_updates",
                      "trainer.keep_snapshots")


# ---------------------------------------------------------------------------------------------
# insights (replications/insights): profiles only; its runs are configs of the two above

@dataclass
class InsRecord:
    kind: Literal["batch_stats", "worker_stats"]
    layers: Optional[list[str]]
    every_n_steps: PosInt


@dataclass
class InsRun:
    replication: Literal["convnext", "powernorm"]
    arm: str
    seed: NonNegInt
    record: InsRecord
    set: dict[str, Any]   # dotted overrides of the replication's config, checked when resolved


@dataclass
class InsUpstream:
    convnext: str
    powernorm: str


@dataclass
class InsightsConfig:
    upstream: InsUpstream
    runs: dict[str, InsRun]
    stages: dict[str, Optional[str]]
    profile: str


SCHEMAS: dict[str, type] = {"image_classification": ImageClassificationConfig,
                            "translation": TranslationConfig,
                            "insights": InsightsConfig}
REQUIRED: dict[str, tuple[str, ...]] = {"image_classification": IMAGE_CLASSIFICATION_REQUIRED,
                                        "translation": TRANSLATION_REQUIRED}
# The tasks (normrepro.tasks.<task>); a replication's base.yaml names its task.
TASKS = ("image_classification", "translation")


# ---------------------------------------------------------------------------------------------
# the checker

def _field_name(key: str, schema: type) -> str:
    # PnPrepare's fields are data set names, which have hyphens; nowhere else is `-` allowed.
    if schema is PnPrepare:
        return "" if "_" in key else key.replace("-", "_")
    return key


def _hints(schema: type) -> dict[str, Any]:
    return typing.get_type_hints(schema, include_extras=True)


def _describe(tp) -> str:
    origin = typing.get_origin(tp)
    if origin is Annotated:
        return _describe(typing.get_args(tp)[0])
    if tp is Any:
        return "anything"
    if tp is bool:
        return "true or false"
    if tp is int:
        return "an integer"
    if tp is float:
        return "a number"
    if tp is str:
        return "a string"
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    if origin is list:
        return f"a list of {_describe(typing.get_args(tp)[0]).removeprefix('a ').removeprefix('an ')}s"
    if origin is dict:
        return "a mapping"
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        text = " or ".join(_describe(a) for a in args)
        return text + (" or null" if len(args) < len(typing.get_args(tp)) else "")
    return getattr(tp, "__name__", str(tp))


class _Problem(Exception):
    def __init__(self, path: str, message: str):
        super().__init__(message)
        self.path, self.message = path, message


def _number(value, tp):
    """`value` as an int/float when it is one (or a string that parses as one), else None."""
    if isinstance(value, bool):
        return None
    if tp is float and isinstance(value, (int, float)):
        return value
    if tp is int and isinstance(value, int):
        return value
    if isinstance(value, str):
        try:
            return int(value) if tp is int else float(value)
        except ValueError:
            return None
    return None


def _check(value, tp, path: str):
    """`value` checked against `tp`; returns it, converted where a string stood for a number."""
    origin = typing.get_origin(tp)
    if origin is Annotated:
        base, *extras = typing.get_args(tp)
        value = _check(value, base, path)
        for extra in extras:
            if isinstance(extra, Check) and value is not None:
                problem = extra.fn(value)
                if problem:
                    raise _Problem(path, problem)
        return value
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        # Exact types first, so that "auto" stays a string and 2 stays an int.
        for arg in args:
            if arg is type(None):
                continue
            if _matches_exactly(value, arg):
                return _check(value, arg, path)
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _check(value, arg, path)
            except _Problem:
                continue
        raise _Problem(path, f"{value!r} is not {_describe(tp)}")
    if value is None:
        raise _Problem(path, f"null is not allowed here; expected {_describe(tp)}")
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        raise _Problem(path, f"{value!r} is not true or false")
    if tp in (int, float):
        number = _number(value, tp)
        if number is None:
            raise _Problem(path, f"{value!r} is not {_describe(tp)}")
        # Keep the value as written (an int in a float field stays an int) unless it was a string.
        return number if isinstance(value, str) else value
    if tp is str:
        if isinstance(value, str):
            return value
        raise _Problem(path, f"{value!r} is not a string")
    if origin is Literal:
        choices = [str(a) for a in typing.get_args(tp)]
        if value in typing.get_args(tp):
            return value
        raise _Problem(path, _choice_problem(str(value), choices, "a valid choice"))
    if origin is list:
        if isinstance(value, tuple):
            value = list(value)
        if not isinstance(value, list):
            raise _Problem(path, f"{value!r} is not {_describe(tp)}")
        (item,) = typing.get_args(tp)
        return [_check(v, item, f"{path}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise _Problem(path, f"{value!r} is not a mapping")
        _, item = typing.get_args(tp)
        return {k: _check(v, item, f"{path}.{k}") for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        return _check_mapping(value, tp, path)
    raise TypeError(f"schema type {tp!r} at {path} is not supported")


def _matches_exactly(value, tp) -> bool:
    base = typing.get_args(tp)[0] if typing.get_origin(tp) is Annotated else tp
    if base is bool:
        return isinstance(value, bool)
    if base in (int, float):
        return isinstance(value, (int, float)) and not isinstance(value, bool) and \
            (base is float or isinstance(value, int))
    if base is str:
        return isinstance(value, str)
    origin = typing.get_origin(base)
    if origin is list:
        return isinstance(value, (list, tuple))
    if origin is dict or dataclasses.is_dataclass(base):
        return isinstance(value, dict)
    return False


def _check_mapping(value, schema: type, path: str) -> dict:
    if not isinstance(value, dict):
        raise _Problem(path or "(top level)", f"{value!r} is not a mapping")
    hints = _hints(schema)
    out = {}
    for key, item in value.items():
        name = _field_name(str(key), schema)
        full = f"{path}.{key}" if path else str(key)
        if name not in hints:
            valid = sorted(k.replace("_", "-") if schema is PnPrepare else k for k in hints)
            close = difflib.get_close_matches(str(key), valid, n=1, cutoff=0.6)
            prefix = f"{path}." if path else ""
            hint = f"did you mean {prefix}{close[0]}?" if close else \
                f"valid keys{' of ' + path if path else ''}: {', '.join(valid)}"
            raise _Problem(full, f"unknown key {full!r}; {hint}")
        out[key] = _check(item, hints[name], full)
    return out


def validate(cfg: dict, kind: str, source: str) -> dict:
    """`cfg` (a whole config or one layer of it) checked against the schema `kind`: a task's
    (`TASKS`) or `insights`.

    Returns the config with numbers given as strings converted; raises `ConfigError` naming
    `source` (a file, or `SET`) and the key. A kind without a schema passes unchanged.
    """
    schema = SCHEMAS.get(kind)
    if schema is None:
        return cfg
    return check(cfg, schema, source)


def check(data: dict, schema: type, source: str) -> dict:
    """`data` checked against a schema dataclass (a config's, or `normrepro.paper`'s).

    Checks only the keys present (required keys are the caller's); returns `data` with numbers
    given as strings converted; raises `ConfigError` naming `source` and the key.
    """
    try:
        return _check_mapping(data, schema, "")
    except _Problem as problem:
        raise ConfigError(f"{source}: {problem.path}: {problem.message}"
                          if not problem.message.startswith("unknown key")
                          else f"{source}: {problem.message}") from None


def check_run(cfg: dict, kind: str, source: str) -> dict:
    """A whole run config: the schema, the keys every run needs, and what cannot be combined."""
    cfg = validate(cfg, kind, source)
    check_required(cfg, kind, source)
    if kind == "image_classification" and cfg["model"].get("ema"):
        raise ConfigError(f"{source}: model.ema is true, but weight EMA is not implemented; the "
                          "paper turned it off for the BN/LN comparison (it hurts BN models)")
    return cfg


def check_required(cfg: dict, kind: str, source: str) -> None:
    """Every key a run of the task `kind` needs is present (after all layers are merged)."""
    for key in REQUIRED.get(kind, ()):
        node: Any = cfg
        for part in key.split("."):
            if not isinstance(node, dict) or part not in node:
                raise ConfigError(f"{source}: missing {key!r}; every {kind} run needs "
                                  "it (base.yaml sets it normally)")
            node = node[part]
