"""Small pieces shared by the translation stages: logging, run-folder layout, weights loading.

Imports nothing heavy at module level (the report stage uses it without torch or fairseq).
"""

from __future__ import annotations

import logging
import math
import os
import warnings
from pathlib import Path

from normrepro.errors import CheckpointError, ConfigError, DataError

LOG = logging.getLogger("normrepro.tasks.translation")

# Columns of each run's metrics.csv (one row per validation); documented in the report.
METRIC_COLUMNS = ("updates", "epoch", "train_loss", "train_nll_loss", "val_loss", "val_nll_loss", "val_ppl",
                  "val_bleu", "lr", "train_tokens", "train_tokens_per_s", "wall_s")


def quiet_logging(level: int = logging.INFO) -> None:
    """fairseq's text-to-speech task calls `logging.basicConfig(level=DEBUG)` at import, which
    floods stderr with third-party debug lines; keep the root at WARNING and ours at `level`.
    Call again after importing lightning (it installs its own INFO handler)."""
    from normrepro.progress import quiet_libraries

    quiet_libraries()
    root = logging.getLogger()
    root.setLevel(logging.WARNING)
    if not root.handlers:
        logging.basicConfig(format="%(asctime)s %(name)s %(levelname)s %(message)s")
    LOG.setLevel(level)
    for name in ("fairseq", "lightning", "lightning.pytorch", "lightning.fabric", "filelock", "torch._inductor"):
        logging.getLogger(name).setLevel(logging.WARNING)
    # fairseq passes a float attention mask next to a bool padding mask (harmless, said every step).
    warnings.filterwarnings("ignore", message=".*mismatched key_padding_mask and attn_mask.*")
    warnings.filterwarnings("ignore", message=".*isinstance\\(treespec, LeafSpec\\).*")
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*`torch.jit.script` is deprecated.*")


def set_threads(n: int | None) -> None:
    """Pin intra-op threads (CPU runs); 0/None keeps torch's default."""
    if n:
        import torch

        torch.set_num_threads(int(n))


def load_config(path: str | Path) -> dict:
    """A resolved run config, checked against the replication's schema (keys, types, norms)."""
    from normrepro import schema
    from normrepro.config import load_yaml

    cfg = load_yaml(path)
    if not cfg:
        raise ConfigError(f"{path}: expected a resolved run config (a mapping); resolve it with "
                          "python -m normrepro.config resolve replications/powernorm ...")
    cfg = schema.validate(cfg, "translation", str(path))
    schema.check_required(cfg, "translation", str(path))
    return cfg


def model_args(cfg: dict) -> dict:
    """fairseq model args of a resolved run config (norm warm-up tied to the LR warm-up)."""
    from normrepro.tasks.translation.model import model_args_from_config

    return model_args_from_config(cfg["model"], warmup_updates=cfg["optim"]["warmup_updates"])


def run_paths(run_dir: str | Path) -> dict[str, Path]:
    run = Path(run_dir)
    ck = run / "checkpoints"
    return {"run": run, "config": run / "config.yaml", "checkpoints": ck, "last": ck / "last.ckpt",
            "averaged": ck / "averaged.pt", "running_stats": ck / "running_stats.pt", "train": run / "train.json",
            "metrics": run / "metrics.csv", "final": run / "final.json", "env": run / "env.json", "hyps": run / "hyps"}


def snapshot_paths(run_dir: str | Path) -> list[Path]:
    """The run's weight snapshots, oldest first (names carry the zero-padded update count)."""
    return sorted((Path(run_dir) / "checkpoints").glob("snapshot_u*.pt"))


def load_weights(path: str | Path) -> dict:
    """A snapshot or averaged checkpoint: plain tensors and numbers, loaded with weights_only."""
    import torch

    from normrepro.rundir import checkpoint_problem

    problem = checkpoint_problem(path) if Path(path).is_file() else "it does not exist"
    if problem is not None:
        run = Path(path).parent.parent
        raise CheckpointError(f"{path} is unreadable: {problem}; retrain the run: rm "
                              f"{run}/train.json and rerun make (training sets damaged "
                              "checkpoints aside and starts over)")
    return torch.load(path, map_location="cpu", weights_only=True)


def data_fix_hint(data_dir: str | Path) -> str:
    data_dir = Path(data_dir)
    return (f"prepare it again: rm -r {data_dir} and rerun make (the prepare stage rebuilds it "
            "from the raw data)")


def verified_data(data_dir: str | Path) -> tuple[dict, str]:
    """(MANIFEST.json, fingerprint) of a prepared data folder, after checking its files."""
    from normrepro import datacheck

    data_dir = Path(data_dir)
    path = data_dir / "MANIFEST.json"
    if not path.is_file():
        raise DataError(f"{path} not found: prepare the data first (make does; or python -m "
                        "normrepro.stages.prepare --task translation ...)")
    manifest = datacheck.load_manifest(path, data_fix_hint(data_dir))
    datacheck.verify_processed(data_dir, manifest, path, data_fix_hint(data_dir))
    return manifest, datacheck.fingerprint(manifest)


def inverse_sqrt_lr(update: int, lr: float, warmup_updates: int, warmup_init_lr: float) -> float:
    """fairseq's `inverse_sqrt` schedule: linear warm-up from `warmup_init_lr` to `lr` over
    `warmup_updates`, then lr·√(warmup/update). `update` = updates done so far."""
    if warmup_updates > 0 and update < warmup_updates:
        return warmup_init_lr + update * (lr - warmup_init_lr) / warmup_updates
    return lr * math.sqrt(max(warmup_updates, 1) / max(update, 1)) if warmup_updates > 0 else lr


def env_flag(name: str) -> bool:
    return os.environ.get(name, "").lower() in ("1", "true", "yes")
