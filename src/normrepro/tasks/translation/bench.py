"""Training throughput: the Lightning module vs `fairseq-train`, same model, data and batches.

    python -m normrepro.tasks.translation.bench --data data/processed/bible-de-en \\
        --repl-dir replications/powernorm --profile cpu --out results/bench/powernorm.json

Both train the profile's `ln` model on the profile's data for `--warmup` + `--updates` updates
with validation off, each in its own process, and report target tokens per second over the timed
updates only (start-up, data loading of the first batches and lazy compilation excluded):

* fairseq: `--log-interval warmup`, the mean of the `wps` (target tokens/s) of the log lines after
  the first (each covers `warmup` updates of wall time, data loading included);
* Lightning, measured the same way: a callback starts a clock at the start of update `warmup`,
  and at the end of every `warmup`-th update after it takes the interval's target tokens / wall
  time; the mean of those interval rates. (Until 2026-12-07 it took all timed tokens / the time
  to the end of `fit`, which also counted Lightning's end-of-training hooks, a cost that fairseq's
  log lines leave out.)

On a GPU both use bf16 (Lightning `bf16-mixed`, fairseq `--bf16`); on CPU fp32 with the same
thread count (`trainer.threads`; fairseq gets it as OMP_NUM_THREADS). The ratio is Lightning /
fairseq; the issue's target is ≥ 1.0. Both run `--repeats` times (default 3), interleaved with the
order alternating; the JSON keeps every repeat and reports the medians (`ratio`: the median of
the repeats' ratios). Memory: the Lightning side makes glibc's malloc keep freed memory, as the
train stage does (`normrepro.runtime.keep_freed_memory`: without it this model spends about a
fifth of its CPU time faulting in fresh pages); `fairseq-train` runs as it comes (`ratio`) and,
on glibc, once more per repeat with the same setting through glibc's environment variables
(`ratio_same_malloc`: the training loops compared on equal terms). 40 timed updates once moved
the ratio by ±0.05 from run to run, hence 100 updates and three repeats by default.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from normrepro.errors import UserError, cli
from normrepro.io import atomic_write_json
from normrepro.runtime import KEEP_FREED_MEMORY_ENV, keep_freed_memory
from normrepro.tasks.translation.common import quiet_logging


class IntervalRates:
    """Tokens per second over consecutive intervals of `every` updates, as fairseq's `wps`.

    `start(t)` at the start of the first timed update; `tokens(n)` for each timed batch;
    `update_end(k, t)` after the k-th timed update (1-based) closes an interval when k is a
    multiple of `every`. `mean()` is the mean of the closed intervals' rates.
    """

    def __init__(self, every: int):
        self.every, self.rates = int(every), []
        self._t = None
        self._n = 0

    @property
    def started(self) -> bool:
        return self._t is not None

    def start(self, t: float) -> None:
        self._t, self._n = t, 0

    def tokens(self, n: int) -> None:
        self._n += int(n)

    def update_end(self, k: int, t: float) -> None:
        if not self.started or k % self.every:
            return
        self.rates.append(self._n / max(t - self._t, 1e-12))
        self._t, self._n = t, 0

    def mean(self) -> float:
        if not self.rates:
            raise RuntimeError(f"no complete interval of {self.every} timed updates")
        return sum(self.rates) / len(self.rates)


def _lightning_tokens_per_s(cfg: dict, data_dir: Path, warmup: int) -> float:
    import lightning as L
    import torch

    from normrepro.tasks.translation.train import build

    def now(trainer) -> float:
        if trainer.strategy.root_device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter()

    class Timer(L.Callback):
        def __init__(self):
            self.rates = IntervalRates(warmup)

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if trainer.global_step == warmup and not self.rates.started:
                self.rates.start(now(trainer))
            if self.rates.started:
                self.rates.tokens(int(batch["ntokens"]))

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if self.rates.started:
                self.rates.update_end(trainer.global_step - warmup, now(trainer))

    from normrepro.tasks.translation.common import set_threads

    set_threads(cfg["trainer"].get("threads"))
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp)
        (run / "config.yaml").write_text(yaml.safe_dump(cfg))
        trainer, module, dm, _ = build(cfg, data_dir, run, record=False)
        timer = Timer()
        trainer.callbacks.append(timer)
        trainer.fit(module, datamodule=dm)
    return timer.rates.mean()


def _fairseq_tokens_per_s(cfg: dict, data_dir: Path, warmup: int, total: int,
                          extra_env: dict | None = None) -> float:
    import torch

    from normrepro.tasks.translation.crosscheck import fairseq_bin, fairseq_env, fairseq_train_args

    with tempfile.TemporaryDirectory() as tmp:
        cmd = fairseq_bin("train") + fairseq_train_args(cfg, data_dir, Path(tmp) / "ckpt") + [
            "--max-update", str(total), "--disable-validation", "--no-save", "--log-interval", str(warmup)]
        if torch.cuda.is_available():
            cmd.append("--bf16")
        env = dict(fairseq_env(cfg["trainer"].get("threads")), **(extra_env or {}))
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"fairseq-train failed:\n{proc.stderr[-3000:]}")
    wps = []
    for line in (proc.stdout + proc.stderr).splitlines():
        m = re.search(r"\| train_inner \| (\{.*\})\s*$", line)
        if m:
            wps.append(float(json.loads(m.group(1))["wps"]))
    if len(wps) < 2:
        raise RuntimeError(f"fairseq-train logged {len(wps)} train_inner lines; need ≥ 2")
    return sum(wps[1:]) / len(wps[1:])


def bench(data_dir: Path, repl_dir: Path, profile: str, out: Path, warmup: int, updates: int,
          repeats: int = 3) -> dict:
    import statistics

    import torch

    from normrepro.config import resolve
    from normrepro.provenance import hardware_info, hardware_summary

    if updates % warmup:
        raise ValueError("--updates must be a multiple of --warmup (fairseq logs every --warmup updates)")
    cfg = resolve(repl_dir, profile, "ln", 1)
    total = warmup + updates
    cfg["trainer"].update(max_updates=total, val_every_updates=None, early_stop_patience=0,
                          resume_every_updates=None, max_epochs=10_000)
    cfg["val_bleu"] = {"sentences": 0}
    # Repeats interleaved, the order alternating (Lightning first, then fairseq first, ...), so
    # that a slow spell of the machine does not fall on one side only; medians reported.
    lights, fairs = [], []
    # The Lightning side allocates as the train stage does (`keep_freed_memory`); fairseq-train
    # runs as it comes, and a third side runs it with the same malloc setting (glibc's variables).
    kept = keep_freed_memory()
    sides = ("lightning", "fairseq") + (("fairseq_kept",) if kept else ())
    fairs_kept = []
    for k in range(repeats):
        for side in (sides if k % 2 == 0 else sides[::-1]):
            if side == "lightning":
                lights.append(_lightning_tokens_per_s(cfg, data_dir, warmup))
            elif side == "fairseq":
                fairs.append(_fairseq_tokens_per_s(cfg, data_dir, warmup, total))
            else:
                fairs_kept.append(_fairseq_tokens_per_s(cfg, data_dir, warmup, total,
                                                        KEEP_FREED_MEMORY_ENV))
        same = f", with Lightning's malloc setting {fairs_kept[-1]:.0f}" if kept else ""
        print(f"[bench] repeat {k + 1}/{repeats}: Lightning {lights[-1]:.0f}, fairseq-train "
              f"{fairs[-1]:.0f}{same} target tokens/s ({lights[-1] / fairs[-1]:.3f})", flush=True)
    ratios = [a / b for a, b in zip(lights, fairs)]
    light, fair = statistics.median(lights), statistics.median(fairs)
    same_malloc = {}
    if kept:
        r_kept = [a / b for a, b in zip(lights, fairs_kept)]
        same_malloc = {"fairseq_same_malloc_tokens_per_s_each": fairs_kept,
                       "fairseq_same_malloc_tokens_per_s": statistics.median(fairs_kept),
                       "ratio_same_malloc_each": r_kept,
                       "ratio_same_malloc": statistics.median(r_kept)}
    hw = hardware_info()
    result = {"device": hardware_summary(hw), "profile": profile, "data": str(data_dir),
              "model": {k: cfg["model"][k] for k in ("arch", "encoder_layers", "decoder_layers", "encoder_embed_dim",
                                                     "encoder_ffn_embed_dim", "encoder_attention_heads")},
              "max_tokens": cfg["data"]["max_tokens"], "warmup_updates": warmup, "updates": updates,
              "precision": "bf16" if torch.cuda.is_available() else "fp32",
              "threads": cfg["trainer"].get("threads"),
              "repeats": repeats, "lightning_tokens_per_s_each": lights,
              "fairseq_tokens_per_s_each": fairs, "ratio_each": ratios,
              "lightning_tokens_per_s": light, "fairseq_tokens_per_s": fair,
              "ratio": statistics.median(ratios),   # the median of the repeats' ratios
              "target_ratio": 1.0,
              "malloc": ("Lightning: glibc keeps freed memory, as in the train stage; fairseq-train: "
                         "as it comes, and (`*_same_malloc`) with the same setting" if kept
                         else "both as the system sets it"),
              **same_malloc}
    atomic_write_json(out, result)
    return result


@cli
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m normrepro.tasks.translation.bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--repl-dir", type=Path, required=True, help="the replication folder, e.g. replications/powernorm")
    parser.add_argument("--profile", default="cpu")
    parser.add_argument("--warmup", type=int, default=10, help="untimed updates first (and fairseq's log interval)")
    parser.add_argument("--updates", type=int, default=100, help="timed updates (a multiple of --warmup)")
    parser.add_argument("--repeats", type=int, default=3,
                        help="interleaved repeats of both (medians reported)")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    quiet_logging()
    if args.repeats < 1:
        raise UserError(f"--repeats {args.repeats}: give at least 1")
    result = bench(args.data, args.repl_dir, args.profile, args.out, args.warmup, args.updates,
                   args.repeats)
    print(json.dumps({k: result[k] for k in ("device", "lightning_tokens_per_s", "fairseq_tokens_per_s", "ratio")}))
    return 0 if math.isfinite(result["ratio"]) else 1


if __name__ == "__main__":
    sys.exit(main())
