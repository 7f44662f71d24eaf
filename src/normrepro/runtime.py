"""What every task's training asks of the machine it runs on: the process's rank when a launcher
started it as a DDP worker, and what `precision: auto` means."""

from __future__ import annotations

import os
import platform


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


# glibc's mallopt parameters (malloc.h) and keep_freed_memory's values
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_KEEP_MMAP_THRESHOLD, _KEEP_TRIM_THRESHOLD = 64 << 20, 2**31 - 1
# The same setting for a child process (glibc reads these at start-up), e.g. fairseq-train in
# the translation benchmark.
KEEP_FREED_MEMORY_ENV = {"MALLOC_MMAP_THRESHOLD_": str(_KEEP_MMAP_THRESHOLD),
                         "MALLOC_TRIM_THRESHOLD_": str(_KEEP_TRIM_THRESHOLD)}


def keep_freed_memory(max_bytes: int = _KEEP_MMAP_THRESHOLD) -> bool:
    """Make glibc's malloc keep freed memory for reuse: blocks up to `max_bytes` come from its
    heap instead of a fresh mmap, and the heap is never trimmed. By default a large tensor (over
    128 KiB at first, up to 32 MiB as glibc adapts) is a fresh mapping whose pages the kernel
    faults in and zeroes on first touch, so a kernel's measured time includes a page-fault cost
    that depends on the process's allocation history more than on the kernel (a caching
    allocator such as jemalloc or tcmalloc, which PyTorch's CPU tuning guides suggest, avoids it
    the same way). The train and evaluate stages call it: the cpu translation model trained 15-25 %
    faster with it (26,000 page faults per update before, under 100 after), the image models about as
    fast as before, with the same bits (checked on a run of each). Returns whether
    it was applied (False off glibc, or with NORMREPRO_MALLOC=system). Numbers are unchanged;
    the process keeps its peak heap."""
    import ctypes
    import ctypes.util

    if os.environ.get("NORMREPRO_MALLOC", "keep").lower() == "system":
        return False
    name = ctypes.util.find_library("c")
    if not name or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(name)
        return bool(libc.mallopt(_M_MMAP_THRESHOLD, int(max_bytes))
                    and libc.mallopt(_M_TRIM_THRESHOLD, _KEEP_TRIM_THRESHOLD))
    except (OSError, AttributeError):
        return False
