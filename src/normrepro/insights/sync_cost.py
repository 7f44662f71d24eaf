"""What synchronised BatchNorm costs under data parallelism: collectives and time per layer.

Goyal et al. (2017) keep BN statistics per worker; synchronising them (`sync_batch`,
`sync_batch2d`) adds, per BN layer and training step, one all-reduce in forward (every worker's
count, mean and M2 per channel: world·(2C+1) numbers) and one in backward (Σg and Σg·x̂ per
channel: 2C numbers). Each is a latency-bound round trip that the next layer waits for. This
module measures it on `world_size` local CPU processes joined by gloo:

* `collectives_per_step`, `floats_per_step`: counted by wrapping `torch.distributed.all_reduce`
  during one training step of one sync layer;
* `sync_ms`: forward + backward of the sync layer;
* `local_ms`: the same eager code without the collectives (each worker on its own batch), so
  `overhead_ms = sync_ms − local_ms` is the price of synchronising;
* `plain_ms`: the per-worker norm as the replications train it (`batch2d` = torch's BatchNorm2d;
  `batch` = the fused masked BN kernel, eager unless `compile_kernels`);
* `allreduce_ms`: the two bare all-reduces of those sizes, for comparison.

Times are medians over `iters` steps on rank 0, the methods interleaved step by step (so drift
on a shared machine hits them alike), each step started after a barrier. On this 2-core machine
the absolute numbers are loose; the counts are exact.

`python -m normrepro.insights.sync_cost --out DIR` writes `sync_cost.csv`, `sync_cost.json` and
`sync_cost.png/.pdf`.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import tempfile
import time
from pathlib import Path
from typing import Sequence

import pandas as pd
import torch
import torch.distributed as dist

from normrepro.errors import cli
from normrepro.insights.distributed import spawn_group
from normrepro.io import atomic_path, atomic_write_json, read_json
from normrepro.norms import create_norm, eager_kernels

# (case, registry name of the sync norm, per-worker input shape); sequences get 25 % padding
DEFAULT_CASES = (
    ("images (B=16, C=64, 16x16)", "sync_batch2d", (16, 64, 16, 16)),
    ("sequences (T=32, B=16, C=256)", "sync_batch", (32, 16, 256)),
)
METHODS = ("plain", "local", "sync", "allreduce")


def _inputs(name: str, shape, seed: int):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(*shape, generator=g)
    gy = torch.randn(*shape, generator=g)
    if name == "sync_batch":
        T, B, _ = shape
        lengths = torch.randint(T // 2, T + 1, (B,), generator=g)  # ~25 % padding
        return x, gy, torch.arange(T)[None, :] >= lengths[:, None]
    return x, gy, None


def _step_fns(name: str, C: int, x, gy, mask, world: int):
    """One callable per method, each running one forward + backward (or the bare collectives)."""
    plain = create_norm(name.removeprefix("sync_"), C).train()
    sync = create_norm(name, C).train()
    local = create_norm(name, C).train()

    def run(module, fn):
        xr = x.clone().requires_grad_(True)
        fn(module, xr).backward(gy)

    if name == "sync_batch":
        def call(m, xr):
            return m(xr, pad_mask=mask)

        def call_local(m, xr):  # the sync layer's own eager path with no group: no collective
            T, B, _ = xr.shape
            real = (~mask).t().reshape(T * B).float()
            return m._train_eager(xr.reshape(T * B, C), real, None).reshape(T, B, C)
    else:
        def call(m, xr):
            return m(xr)

        def call_local(m, xr):
            return m._train_eager(xr, None)

    fwd_buf, bwd_buf = torch.zeros(world, 2 * C + 1), torch.zeros(2, C)

    def bare():
        dist.all_reduce(fwd_buf)
        dist.all_reduce(bwd_buf)

    return {"plain": lambda: run(plain, call), "local": lambda: run(local, call_local),
            "sync": lambda: run(sync, call), "allreduce": bare}


def _count_collectives(step) -> tuple[int, int]:
    calls, floats = 0, 0
    real = dist.all_reduce

    def counting(tensor, *args, **kwargs):
        nonlocal calls, floats
        calls += 1
        floats += tensor.numel()
        return real(tensor, *args, **kwargs)

    dist.all_reduce = counting
    try:
        step()
    finally:
        dist.all_reduce = real
    return calls, floats


def _worker(rank: int, world: int, out: str, cases, iters: int, warmup: int,
            compile_kernels: bool) -> None:
    results = []
    kernels = contextlib.nullcontext() if compile_kernels else eager_kernels()
    with kernels:
        for label, name, shape in cases:
            C = shape[-1] if name == "sync_batch" else shape[1]
            x, gy, mask = _inputs(name, shape, seed=rank)
            fns = _step_fns(name, C, x, gy, mask, world)
            calls, floats = _count_collectives(fns["sync"])
            local_calls, _ = _count_collectives(fns["local"])
            times = {m: [] for m in METHODS}
            for it in range(warmup + iters):
                for method in METHODS:
                    dist.barrier()
                    t0 = time.perf_counter()
                    fns[method]()
                    if it >= warmup:
                        times[method].append(1e3 * (time.perf_counter() - t0))
            row = {"case": label, "norm": name, "shape": list(shape), "world_size": world,
                   "collectives_per_step": calls, "floats_per_step": floats,
                   "local_collectives_per_step": local_calls, "iters": iters,
                   "threads_per_worker": torch.get_num_threads(),
                   "kernels": "compiled" if compile_kernels else "eager"}
            row.update({f"{m}_ms": statistics.median(times[m]) for m in METHODS})
            row["overhead_ms"] = row["sync_ms"] - row["local_ms"]
            row["overhead_pct"] = 100.0 * row["overhead_ms"] / row["local_ms"]
            results.append(row)
    if rank == 0:
        atomic_write_json(Path(out) / "rank0.json", results)


def measure_sync_cost(cases=DEFAULT_CASES, world_size: int = 2, iters: int = 30, warmup: int = 5,
                      compile_kernels: bool = False) -> pd.DataFrame:
    """Run the measurement on `world_size` gloo processes; one row per case (see the module
    docstring for the columns)."""
    if world_size < 2:
        raise ValueError("synchronisation needs world_size >= 2")
    for label, name, shape in cases:
        if name not in ("sync_batch", "sync_batch2d") or len(shape) != (3 if name == "sync_batch" else 4):
            raise ValueError(f"case {label!r}: need ('sync_batch', (T, B, C)) or "
                             f"('sync_batch2d', (B, C, H, W)), got ({name!r}, {shape})")
    with tempfile.TemporaryDirectory() as tmp:
        spawn_group(_worker, world_size, tmp, tuple(cases), iters, warmup, compile_kernels)
        return pd.DataFrame(read_json(Path(tmp) / "rank0.json"))


def plot(df: pd.DataFrame, out_stem: str | Path) -> list[Path]:
    """Milliseconds per layer and training step, by method, one group of bars per case."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    from normrepro.plots import save_figure

    names = {"plain": "per-worker BN (as trained)", "local": "same eager code, no sync",
             "sync": "synchronised BN", "allreduce": "the 2 all-reduces alone"}
    long = df.melt(id_vars=["case"], value_vars=[f"{m}_ms" for m in METHODS],
                   var_name="method", value_name="ms")
    long["method"] = long["method"].str.removesuffix("_ms").map(names)
    fig, ax = plt.subplots(figsize=(7.5, 3.6))
    sns.barplot(data=long, x="case", y="ms", hue="method", ax=ax)
    ax.set_xlabel("")
    ax.set_ylabel("ms per layer per training step\n(forward + backward, median)")
    ax.set_title(f"BatchNorm under {int(df['world_size'].iloc[0])}-process gloo (CPU): "
                 f"{int(df['collectives_per_step'].iloc[0])} extra all-reduces per layer per step",
                 fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return save_figure(fig, out_stem)


@cli
def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, type=Path, help="output folder")
    ap.add_argument("--world-size", type=int, default=2)
    ap.add_argument("--iters", type=int, default=30, help="timed steps per method (default 30)")
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--compile-kernels", action="store_true",
                    help="time the per-worker sequence BN with its torch.compile'd kernels")
    args = ap.parse_args(argv)
    start = time.perf_counter()
    df = measure_sync_cost(world_size=args.world_size, iters=args.iters, warmup=args.warmup,
                           compile_kernels=args.compile_kernels)
    with atomic_path(args.out / "sync_cost.csv", suffix=".csv") as tmp:
        df.to_csv(tmp, index=False, float_format="%.4g")
    atomic_write_json(args.out / "sync_cost.json", df.to_dict("records"))
    paths = plot(df, args.out / "sync_cost")
    cols = ["case", "collectives_per_step", "floats_per_step", "plain_ms", "local_ms", "sync_ms",
            "overhead_ms", "overhead_pct", "allreduce_ms"]
    with pd.option_context("display.width", 200, "display.float_format", "{:.3g}".format):
        print(df[cols].to_string(index=False))
    print(f"wrote {args.out / 'sync_cost.csv'}, {args.out / 'sync_cost.json'},",
          ", ".join(map(str, paths)), f"({time.perf_counter() - start:.1f} s)")


if __name__ == "__main__":
    main()
