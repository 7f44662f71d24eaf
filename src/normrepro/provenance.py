"""What produced a result: git commit and dirty flag, package versions, hardware, wall time.

Written as `env.json` next to every run so a number in a report can be traced to the code and the
machine that made it.
"""

from __future__ import annotations

import os
import platform
import socket
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

from normrepro.io import atomic_write_json

PACKAGES = ("normrepro", "torch", "torchvision", "lightning", "timm", "ve-fairseq", "sacrebleu",
            "sacremoses", "subword-nmt", "numpy", "pandas", "seaborn", "matplotlib", "scipy")


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], capture_output=True, text=True, timeout=10,
                             cwd=Path(__file__).resolve().parent)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def git_info() -> dict:
    commit = _git("rev-parse", "HEAD")
    status = _git("status", "--porcelain", "--untracked-files=no")
    return {"commit": commit, "dirty": bool(status) if status is not None else None}


def package_versions() -> dict:
    out = {}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def hardware_info() -> dict:
    info = {"cpu": _cpu_model(), "cpu_count": os.cpu_count(), "machine": platform.machine(),
            "hostname": socket.gethostname(), "gpus": []}
    try:
        import torch

        info["torch_threads"] = torch.get_num_threads()
        if torch.cuda.is_available():
            info["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    except ImportError:
        pass
    try:
        pages = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        info["memory_gib"] = round(pages / 2**30, 1)
    except (ValueError, OSError, AttributeError):
        pass
    return info


def hardware_summary(hw: dict) -> str:
    """One line for reports: 'NVIDIA H100 ×1' or '2 × Intel ... (CPU only)'."""
    if hw.get("gpus"):
        return f"{hw['gpus'][0]} ×{len(hw['gpus'])}"
    return f"{hw.get('cpu_count')} cores of {hw.get('cpu')} (CPU only)"


def env_info(wall_time_s: float | None = None, **extra) -> dict:
    return {
        "git": git_info(),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "packages": package_versions(),
        "hardware": hardware_info(),
        "command": " ".join(sys.argv),
        "finished_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "wall_time_s": wall_time_s,
        **extra,
    }


def write_env_json(path: str | Path, wall_time_s: float | None = None, **extra) -> dict:
    info = env_info(wall_time_s, **extra)
    atomic_write_json(path, info)
    return info
