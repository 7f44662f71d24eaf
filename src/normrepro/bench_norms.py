"""Benchmark: forward+backward time of every sequence norm relative to torch.nn.LayerNorm.

Shape T=32, B=128, C=512 (an IWSLT batch of ~4k tokens) with 25% of the positions padding, in
training mode, float32, on whatever device is available. Each norm is timed in interleaved rounds
in the same process as LayerNorm; a norm's ratio is the median over rounds of (its time / the
LayerNorm time of the same round), so background load that shifts between rounds hits both sides
of each ratio alike. `torch.nn.BatchNorm1d` on the (B, C, T) layout is included as the baseline a
naive implementation would use.

    python -m normrepro.bench_norms --out results/bench/norms.json
    python -m normrepro.bench_norms --profile results/bench/norms-profile.md   # where the time goes

Memory: by default the benchmark first makes glibc's malloc keep freed memory
(`normrepro.runtime.keep_freed_memory`). Otherwise each (T, B, C) tensor of a call may be a fresh
mapping that the kernel faults in and zeroes, a cost that depends on the process's allocation
history more than on the norm: three runs of the same build once gave torch's LayerNorm against
the registry's `layer` (the same ATen kernels) at 0.99x, 1.17x and 1.28x. `--malloc system`
leaves malloc as it is; the JSON records the setting and each case's page faults per call.

`--profile` runs torch.profiler over 20 forward+backward calls of each norm (after warm-up) and
writes a summary (self time per call, ratio to LayerNorm) and the top operators by self time as a
markdown file.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import time
from typing import Callable

import torch

from normrepro.errors import UserError, cli
from normrepro.io import atomic_write_json, atomic_write_text
from normrepro.norms import SEQUENCE_NORMS, create_norm
from normrepro.provenance import env_info
from normrepro.runtime import keep_freed_memory

BASELINE = "torch.nn.LayerNorm"
# The targets of issue 12 (fwd+bwd time / LayerNorm's, CPU).
TARGETS = {"power": 2.0, "bn_official": 2.0, "batch": 1.5, "rms": 1.2, "group": 2.0,
           "instance": 2.0, "dyt": 1.0}


def _pad_mask(T: int, B: int, frac: float, gen: torch.Generator) -> torch.Tensor:
    """Right padding with lengths drawn so that about `frac` of the positions are padding."""
    lengths = torch.randint(max(1, int(T * (1 - 2 * frac))), T + 1, (B,), generator=gen)
    lengths = (lengths.float() * (1 - frac) * T / lengths.float().mean()).round().clamp(1, T).long()
    return torch.arange(T)[None, :] >= lengths[:, None]


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def _cases(C: int, mask: torch.Tensor, device, names=None) -> dict[str, tuple[torch.nn.Module, Callable]]:
    """name -> (module, call(module, x)); LayerNorm first, then the registry's sequence norms."""
    seq = lambda m, x: m(x, pad_mask=mask)  # noqa: E731
    cases = {BASELINE: (torch.nn.LayerNorm(C).to(device), lambda m, x: m(x))}
    for name in SEQUENCE_NORMS:
        if name.startswith("sync_"):  # outside a process group it is `batch` again
            continue
        if name == "batch_unmasked":  # `batch`'s kernel without the mask: nothing new to time
            continue
        kw = {"group_num": 4, "warmup_iters": 10**9} if name == "power" else {}
        cases[name] = (create_norm(name, C, **kw).to(device).train(), seq)
    # After warm-up, PowerNorm normalises by the running statistic: time that branch too.
    cases["power (after warm-up)"] = (
        create_norm("power", C, group_num=4, warmup_iters=0).to(device).train(), seq)
    cases["torch.nn.BatchNorm1d (B,C,T)"] = (
        torch.nn.BatchNorm1d(C).to(device).train(),
        lambda m, x: m(x.permute(1, 2, 0)).permute(2, 0, 1))
    if names:
        unknown = sorted(set(names) - set(cases))
        if unknown:
            raise UserError(f"--norms: unknown {unknown}; valid: {', '.join(cases)}")
        cases = {k: v for k, v in cases.items() if k == BASELINE or k in names}
    return cases


def _inputs(T, B, C, pad_frac, device):
    gen = torch.Generator().manual_seed(0)
    x0 = torch.randn(T, B, C, generator=gen).to(device)
    gy = torch.randn(T, B, C, generator=gen).to(device)
    mask = _pad_mask(T, B, pad_frac, gen).to(device)
    return x0, gy, mask


def _minor_faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def bench(T=32, B=128, C=512, pad_frac=0.25, rounds=7, iters=20, device=None, names=None,
          malloc="keep") -> dict:
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    kept = keep_freed_memory() if malloc == "keep" else False
    x0, gy, mask = _inputs(T, B, C, pad_frac, device)
    cases = _cases(C, mask, device, names)

    def one(case):
        module, call = case
        x = x0.detach().requires_grad_(True)
        _sync(device)
        t0 = time.perf_counter()
        for _ in range(iters):
            call(module, x).backward(gy)
        _sync(device)
        return (time.perf_counter() - t0) / iters

    for case in cases.values():  # warm-up (and torch.compile)
        one(case)
    times = {name: [] for name in cases}
    faults = dict.fromkeys(cases, 0)
    for _ in range(rounds):
        for name, case in cases.items():
            before = _minor_faults()
            times[name].append(one(case))
            faults[name] += _minor_faults() - before
    base = times[BASELINE]
    results = {
        name: {"ms_median": 1e3 * statistics.median(ts), "ms_min": 1e3 * min(ts),
               "ratio_to_layernorm": statistics.median(t / b for t, b in zip(ts, base)),
               "page_faults_per_call": faults[name] / (rounds * iters)}
        for name, ts in times.items()
    }
    for name, target in TARGETS.items():
        if name in results:
            results[name]["target_ratio"] = target
            results[name]["meets_target"] = results[name]["ratio_to_layernorm"] <= target
    return {
        "what": "forward+backward time per call, training mode, float32; ratio = median over "
                "interleaved rounds of (norm time / LayerNorm time in the same round)",
        "shape_TBC": [T, B, C], "pad_fraction": float(mask.float().mean()), "device": str(device),
        "threads": torch.get_num_threads(), "rounds": rounds, "iters_per_round": iters,
        "malloc": ("glibc keeps freed memory (no fresh mappings to fault in)" if kept
                   else "as the system sets it"),
        "targets": {k: f"<= {v}x LayerNorm" for k, v in TARGETS.items()},
        "results": results, "env": env_info(),
    }


def profile(T=32, B=128, C=512, pad_frac=0.25, device=None, names=None, row_limit=12,
            calls=20) -> str:
    """Markdown: per norm, torch.profiler's self time per forward+backward (over `calls` calls)
    and its top operators."""
    from torch.profiler import ProfilerActivity, profile as tprofile

    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    x0, gy, mask = _inputs(T, B, C, pad_frac, device)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    sort = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    head = (f"torch {torch.__version__}, {device}, {torch.get_num_threads()} threads, "
            f"(T, B, C) = ({T}, {B}, {C}), padding {float(mask.float().mean()):.2f}; {calls} "
            f"forward+backward calls per norm after warm-up; operators sorted by self time "
            f"(totals over the {calls} calls).\n")
    summary, sections = {}, []
    with tprofile(activities=activities):  # the first session pays the profiler's start-up
        x0.clone()
    for name, (module, call) in _cases(C, mask, device, names).items():
        for _ in range(3):  # warm-up (and torch.compile)
            call(module, x0.detach().requires_grad_(True)).backward(gy)
        _sync(device)
        with tprofile(activities=activities) as prof:
            for _ in range(calls):
                call(module, x0.detach().requires_grad_(True)).backward(gy)
            _sync(device)
        events = prof.key_averages()
        summary[name] = sum(getattr(e, "self_device_time_total" if device.type == "cuda"
                                    else "self_cpu_time_total") for e in events) / calls / 1e3
        table = events.table(sort_by=sort, row_limit=row_limit, max_name_column_width=60)
        sections.append(f"\n### {name}\n\n```\n{table.rstrip()}\n```\n")
    base = summary[BASELINE]
    rows = "".join(f"| {n} | {ms:.2f} | {ms / base:.2f} |\n" for n, ms in summary.items())
    return (f"{head}\n| case | self time per call (ms) | / LayerNorm |\n| --- | --- | --- |\n"
            f"{rows}" + "".join(sections))


@cli
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", help="write the timings (JSON) here")
    ap.add_argument("--profile", metavar="MD", help="write torch.profiler tables (markdown) here")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--device", default=None)
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    ap.add_argument("--malloc", choices=("keep", "system"), default="keep",
                    help="keep: glibc's malloc keeps freed memory (default; see above); "
                         "system: leave it as it is")
    ap.add_argument("--norms", default=None,
                    help="comma-separated subset of the cases (LayerNorm is always included)")
    args = ap.parse_args(argv)
    if not (args.out or args.profile):
        ap.error("give --out and/or --profile")
    names = [n.strip() for n in args.norms.split(",")] if args.norms else None
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.malloc == "keep":  # (before the profile too: its calls allocate like the timed ones)
        keep_freed_memory()
    if args.profile:
        atomic_write_text(args.profile, "# Where the time goes: forward+backward of each norm\n\n"
                          + profile(device=args.device, names=names))
        print(f"wrote {args.profile}")
    if args.out:
        res = bench(rounds=args.rounds, iters=args.iters, device=args.device, names=names,
                    malloc=args.malloc)
        atomic_write_json(args.out, res)
        for name, r in res["results"].items():
            target = f"  (target <= {r['target_ratio']}x)" if "target_ratio" in r else ""
            print(f"{name:32s} {r['ms_median']:8.3f} ms  {r['ratio_to_layernorm']:6.2f}x LayerNorm{target}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
