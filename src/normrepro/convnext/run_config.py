"""A run's resolved config: required keys, loading, and the device/precision it implies.

Shared by the train, evaluate and bench stages; free of Lightning so evaluate starts fast.
"""

from __future__ import annotations

from pathlib import Path

import torch

from normrepro.config import ConfigError, load_yaml

REQUIRED = ("seed", "data.dataset", "data.batch_size", "model.variant", "model.norm",
            "optim.base_lr", "optim.base_batch", "optim.weight_decay", "trainer.max_epochs")


def check_config(cfg: dict, source: str = "config") -> dict:
    """Fail early, naming the missing key, rather than deep inside Lightning."""
    for key in REQUIRED:
        node = cfg
        for part in key.split("."):
            if not isinstance(node, dict) or part not in node:
                raise ConfigError(f"{source}: missing {key!r}; resolve the run config with "
                                  "python -m normrepro.config resolve replications/convnext ...")
            node = node[part]
    if cfg["model"].get("ema"):
        raise ConfigError(f"{source}: model.ema is true, but weight EMA is not implemented; the "
                          "paper turned it off for the BN/LN comparison (it hurts BN models)")
    return cfg


def load_run_config(path: str | Path) -> dict:
    return check_config(load_yaml(path), str(path))


def uses_gpu(cfg: dict) -> bool:
    accelerator = str(cfg["trainer"].get("accelerator", "auto"))
    return accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available()


def resolve_precision(cfg: dict) -> str:
    precision = str(cfg["trainer"].get("precision", "auto"))
    if precision == "auto":
        return "bf16-mixed" if uses_gpu(cfg) else "32-true"
    return precision
