"""Small pieces shared by the translation stages: logging, run-folder layout, model loading."""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path

import torch
import yaml

LOG = logging.getLogger("normrepro.translation")


def quiet_logging(level: int = logging.INFO) -> None:
    """fairseq's text-to-speech task calls `logging.basicConfig(level=DEBUG)` at import, which
    floods stderr with third-party debug lines; keep the root at WARNING and ours at `level`."""
    root = logging.getLogger()
    root.setLevel(logging.WARNING)
    if not root.handlers:
        logging.basicConfig(format="%(asctime)s %(name)s %(levelname)s %(message)s")
    LOG.setLevel(level)
    for name in ("fairseq", "lightning", "lightning.pytorch", "filelock", "torch._inductor"):
        logging.getLogger(name).setLevel(logging.WARNING)


def set_threads(n: int | None) -> None:
    """Pin intra-op threads (CPU runs); 0/None keeps torch's default."""
    if n:
        torch.set_num_threads(int(n))


def load_config(path: str | Path) -> dict:
    with open(path, encoding="utf-8") as fh:
        cfg = yaml.safe_load(fh)
    if not isinstance(cfg, dict):
        raise ValueError(f"{path}: expected a resolved run config (a mapping)")
    return cfg


def model_args(cfg: dict) -> dict:
    """fairseq model args of a resolved run config (norm warm-up tied to the LR warm-up)."""
    from normrepro.translation.model import model_args_from_config

    return model_args_from_config(cfg["model"], warmup_updates=cfg["optim"]["warmup_updates"])


def run_paths(run_dir: str | Path) -> dict[str, Path]:
    run = Path(run_dir)
    ck = run / "checkpoints"
    return {"run": run, "config": run / "config.yaml", "checkpoints": ck, "last": ck / "last.ckpt",
            "averaged": ck / "averaged.pt", "train": run / "train.json", "metrics": run / "metrics.csv",
            "final": run / "final.json", "env": run / "env.json", "hyps": run / "hyps"}


def snapshot_paths(run_dir: str | Path) -> list[Path]:
    """The run's weight snapshots, oldest first (names carry the zero-padded update count)."""
    return sorted((Path(run_dir) / "checkpoints").glob("snapshot_u*.pt"))


def load_weights(path: str | Path) -> dict:
    """A snapshot or averaged checkpoint: plain tensors and numbers, loaded with weights_only."""
    return torch.load(path, map_location="cpu", weights_only=True)


def inverse_sqrt_lr(update: int, lr: float, warmup_updates: int, warmup_init_lr: float) -> float:
    """fairseq's `inverse_sqrt` schedule: linear warm-up from `warmup_init_lr` to `lr` over
    `warmup_updates`, then lr·√(warmup/update). `update` = updates done so far."""
    if warmup_updates > 0 and update < warmup_updates:
        return warmup_init_lr + update * (lr - warmup_init_lr) / warmup_updates
    return lr * math.sqrt(max(warmup_updates, 1) / max(update, 1)) if warmup_updates > 0 else lr


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def env_flag(name: str) -> bool:
    return os.environ.get(name, "").lower() in ("1", "true", "yes")
