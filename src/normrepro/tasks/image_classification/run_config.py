"""A run's resolved config: required keys, loading, and the device/precision it implies.

Shared by the train, evaluate and bench stages; free of Lightning so evaluate starts fast.
"""

from __future__ import annotations

from pathlib import Path

import torch

from normrepro import runtime, schema
from normrepro.config import load_yaml

REQUIRED = schema.IMAGE_CLASSIFICATION_REQUIRED


def check_config(cfg: dict, source: str = "config") -> dict:
    """The run config checked against the schema (types, keys, norm and data set names) and for
    the keys every run needs; fails early, naming the key, rather than deep inside Lightning."""
    return schema.check_run(cfg, "image_classification", source)


def load_run_config(path: str | Path) -> dict:
    return check_config(load_yaml(path), str(path))


def uses_gpu(cfg: dict) -> bool:
    accelerator = str(cfg["trainer"].get("accelerator", "auto"))
    return accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available()


def resolve_precision(cfg: dict) -> str:
    """The run's Lightning precision (`normrepro.runtime.resolve_precision`)."""
    return runtime.resolve_precision(cfg["trainer"].get("precision"), uses_gpu(cfg))
