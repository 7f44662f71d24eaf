"""What every task's training asks of the machine it runs on: the process's rank when a launcher
started it as a DDP worker, and what `precision: auto` means."""

from __future__ import annotations

import os


def launch_rank() -> int:
    """Global rank from the launcher's environment (0 when not launched as a DDP worker)."""
    for var in ("RANK", "SLURM_PROCID", "LOCAL_RANK"):
        if os.environ.get(var, "").isdigit():
            return int(os.environ[var])
    return 0


def resolve_precision(value: str | None, gpu: bool) -> str:
    """A config's `trainer.precision`: `auto` (or unset) is bf16-mixed on a GPU, fp32 on CPU
    (the official scripts of both papers train in fp32; bf16 is the GPU profiles' speed-up)."""
    if value in (None, "auto"):
        return "bf16-mixed" if gpu else "32-true"
    return str(value)
