"""Run a function on N local processes joined in a process group (127.0.0.1, gloo by default).

Used by the synchronised-BatchNorm tests and by `normrepro.insights.sync_cost`: both need real
collectives between real processes, without a launcher. `fn(rank, world_size, *args)` must be a
module-level function (it is pickled by name into each spawned process).
"""

from __future__ import annotations

import os
import socket
from typing import Callable

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def free_port() -> int:
    """A TCP port that was free a moment ago on 127.0.0.1 (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _entry(rank: int, fn: Callable, world_size: int, port: int, threads: int, backend: str,
           args: tuple) -> None:
    # Each worker gets its share of the cores; oversubscribed intra-op threads would make the
    # timings measure contention instead of the collectives.
    torch.set_num_threads(threads)
    if backend == "nccl":
        torch.cuda.set_device(rank % torch.cuda.device_count())
    dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world_size)
    try:
        fn(rank, world_size, *args)
    finally:
        dist.destroy_process_group()


def spawn_group(fn: Callable, world_size: int = 2, *args, backend: str = "gloo",
                threads: int | None = None) -> None:
    """Run `fn(rank, world_size, *args)` in `world_size` fresh processes sharing a process group.

    Blocks until all return; an exception in any worker is raised here with its traceback
    (torch.multiprocessing.ProcessRaisedException). `backend`: "gloo" (CPU, and CUDA tensors
    too) or "nccl" (one GPU per rank: rank r uses cuda:r). `threads` is each worker's intra-op
    thread count (default: the machine's cores divided among the workers, at least 1).
    """
    if world_size < 1:
        raise ValueError(f"world_size must be >= 1, got {world_size}")
    if backend == "nccl" and torch.cuda.device_count() < world_size:
        raise ValueError(f"nccl needs one GPU per rank: {world_size} ranks, "
                         f"{torch.cuda.device_count()} GPU(s); use backend='gloo'")
    if threads is None:
        threads = max(1, (os.cpu_count() or 1) // world_size)
    mp.spawn(_entry, args=(fn, world_size, free_port(), threads, backend, args),
             nprocs=world_size, join=True)
