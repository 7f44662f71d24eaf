"""Benchmark: forward+backward time of every sequence norm relative to torch.nn.LayerNorm.

Shape T=32, B=128, C=512 (an IWSLT batch of ~4k tokens) with 25% of the positions padding, in
training mode, float32, on whatever device is available. Each norm is timed in interleaved rounds
in the same process as LayerNorm, and the median round is reported, so background load hits
every norm alike. `torch.nn.BatchNorm1d` on the (B, C, T) layout is included as the baseline a
naive implementation would use.

    python -m normrepro.bench_norms --out results/bench/norms.json
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from normrepro.errors import cli
from normrepro.io import atomic_write_json
from normrepro.norms import SEQUENCE_NORMS, create_norm
from normrepro.provenance import env_info


def _pad_mask(T: int, B: int, frac: float, gen: torch.Generator) -> torch.Tensor:
    """Right padding with lengths drawn so that about `frac` of the positions are padding."""
    lengths = torch.randint(max(1, int(T * (1 - 2 * frac))), T + 1, (B,), generator=gen)
    lengths = (lengths.float() * (1 - frac) * T / lengths.float().mean()).round().clamp(1, T).long()
    return torch.arange(T)[None, :] >= lengths[:, None]


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def bench(T=32, B=128, C=512, pad_frac=0.25, rounds=7, iters=20, device=None) -> dict:
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    gen = torch.Generator().manual_seed(0)
    x0 = torch.randn(T, B, C, generator=gen).to(device)
    gy = torch.randn(T, B, C, generator=gen).to(device)
    mask = _pad_mask(T, B, pad_frac, gen).to(device)

    cases = {"torch.nn.LayerNorm": (torch.nn.LayerNorm(C).to(device), lambda m, x: m(x))}
    for name in SEQUENCE_NORMS:
        if name.startswith("sync_"):  # outside a process group it is `batch` again
            continue
        kw = {"group_num": 4, "warmup_iters": 10**9} if name == "power" else {}
        cases[name] = (create_norm(name, C, **kw).to(device).train(),
                       lambda m, x: m(x, pad_mask=mask))
    # After warm-up, PowerNorm normalises by the running statistic: time that branch too.
    cases["power (after warm-up)"] = (create_norm("power", C, group_num=4, warmup_iters=0).to(device).train(),
                                      lambda m, x: m(x, pad_mask=mask))
    cases["torch.nn.BatchNorm1d (B,C,T)"] = (
        torch.nn.BatchNorm1d(C).to(device).train(),
        lambda m, x: m(x.permute(1, 2, 0)).permute(2, 0, 1))

    def one(case):
        module, call = case
        x = x0.detach().requires_grad_(True)
        _sync(device)
        t0 = time.perf_counter()
        for _ in range(iters):
            call(module, x).backward(gy)
        _sync(device)
        return (time.perf_counter() - t0) / iters

    for case in cases.values():  # warm-up
        one(case)
    times = {name: [] for name in cases}
    for _ in range(rounds):
        for name, case in cases.items():
            times[name].append(one(case))
    base = statistics.median(times["torch.nn.LayerNorm"])
    results = {
        name: {"ms_median": 1e3 * statistics.median(ts), "ms_min": 1e3 * min(ts),
               "ratio_to_layernorm": statistics.median(ts) / base}
        for name, ts in times.items()
    }
    return {
        "what": "forward+backward time per call, training mode, float32, median of interleaved rounds",
        "shape_TBC": [T, B, C], "pad_fraction": float(mask.float().mean()), "device": str(device),
        "threads": torch.get_num_threads(), "rounds": rounds, "iters_per_round": iters,
        "targets": {"power": "<= 2x LayerNorm", "batch": "<= 2x LayerNorm"},
        "results": results, "env": env_info(),
    }


@cli
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--device", default=None)
    args = ap.parse_args(argv)
    res = bench(rounds=args.rounds, iters=args.iters, device=args.device)
    atomic_write_json(args.out, res)
    for name, r in res["results"].items():
        print(f"{name:32s} {r['ms_median']:8.3f} ms  {r['ratio_to_layernorm']:6.2f}x LayerNorm")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
