"""Average the last N weight snapshots of a run, as the paper does with its last 5 checkpoints.

    python -m normrepro.tasks.translation.average RUN_DIR [--last 5] [--out RUN_DIR/checkpoints/averaged.pt]

fairseq's `scripts/average_checkpoints.py --num-epoch-checkpoints 5` averages the parameters of
the last five epoch checkpoints; here the snapshots are taken at every validation (every epoch,
or every `val_every_updates` updates in short runs) and the last N are averaged. Floating-point
tensors, buffers included (BatchNorm running statistics, PowerNorm's running ψ² and ν), are
averaged element-wise in float64 and cast back; integer buffers (step counters) take the newest
snapshot's value. The output is `{"model": state_dict, "averaged": [snapshot names], "updates"}`
and loads with `torch.load(weights_only=True)`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from normrepro.errors import UserError, cli
from normrepro.io import atomic_path, read_json
from normrepro.tasks.translation.common import load_weights, run_paths, snapshot_paths


def average_state_dicts(states: list[dict]) -> dict:
    """Element-wise mean of float tensors; the last state's value for everything else."""
    if not states:
        raise ValueError("no state dicts to average")
    keys = list(states[-1])
    for i, st in enumerate(states):
        if list(st) != keys:
            missing = set(keys) ^ set(st)
            raise ValueError(f"snapshot {i} has different parameters ({sorted(missing)[:5]}); "
                             "all snapshots must come from the same model")
    out = {}
    for k in keys:
        last = states[-1][k]
        if torch.is_floating_point(last):
            acc = torch.zeros_like(last, dtype=torch.float64)
            for st in states:
                acc += st[k].to(torch.float64)
            out[k] = (acc / len(states)).to(last.dtype)
        else:
            out[k] = last.clone()
    return out


def average_run(run_dir: Path, last: int = 5, out: Path | None = None) -> Path:
    snaps = snapshot_paths(run_dir)
    out = Path(out or run_paths(run_dir)["averaged"])
    train = run_paths(run_dir)["train"]
    if not snaps and train.is_file() and read_json(train).get("status") == "diverged":
        # Diverged before the first finite validation: nothing to average; evaluation records it.
        with atomic_path(out, suffix=".pt") as tmp:
            torch.save({"model": {}, "averaged": [], "updates": [], "status": "diverged"}, tmp)
        return out
    if not snaps:
        raise UserError(f"{run_dir}/checkpoints has no snapshot_u*.pt; train the run first")
    chosen = snaps[-last:]
    loaded = [load_weights(p) for p in chosen]
    averaged = average_state_dicts([s["model"] for s in loaded])
    with atomic_path(out, suffix=".pt") as tmp:
        torch.save({"model": averaged, "averaged": [p.name for p in chosen],
                    "updates": [int(s["updates"]) for s in loaded]}, tmp)
    return out


@cli
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m normrepro.tasks.translation.average", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--last", type=int, default=5, help="number of newest snapshots to average")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    try:
        out = average_run(args.run_dir, args.last, args.out)
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
