"""Stage `recompute_stats`: the BN/PN running statistics that belong to the averaged weights.

    python -m normrepro.tasks.translation.recompute_stats RUN_DIR --data data/processed/<data> [--batches K]

`average` averages the last snapshots element-wise, running statistics included; those were
gathered under each snapshot's weights, not under their average, a handicap that only the
BN-family arms carry (LayerNorm keeps no running statistics). This stage recomputes them for
the averaged weights, as SWA's `update_bn` does (`normrepro.running_stats`: reset, then
forward passes in train mode without gradients, each statistic the plain mean over the
batches), and writes only the recomputed buffers to `RUN/checkpoints/running_stats.pt`:

    {"status": "ok" | "no_running_stats" | "disabled" | "diverged",
     "buffers": {state_dict key: tensor},          # only running_mean/var/phi; {} for LN
     "source": {"file": "averaged.pt", "sha256", "averaged", "updates"},
     "batches", "sentences", "target_tokens", "modules", "seed", "seconds"}

The batches are the run's own training batches (its `data.max_tokens`, length filter and
`required_batch_size_multiple`) in the order of its first epoch (`seed` = the run's seed, so
arms that share a seed see the same batches), the first K = `eval.recompute_stats_batches` of
them, or the whole epoch when it is shorter; dropout masks come from the run's seed too. The
result is deterministic. A model without running statistics (arm `ln`) gets `buffers: {}` at
once, with no forward pass; K = 0 writes `status: disabled` (evaluate then scores the averaged
statistics only). Every other entry of the state dict is checked to be bit-identical to
averaged.pt's after the passes.

`evaluate` scores the averaged weights with these statistics (primary) and with the averaged
statistics (secondary); `apply_running_stats` puts them into a state dict, after checking that
they were computed for this very averaged.pt (its SHA-256).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path
from typing import Iterator, Optional

import torch

from normrepro.errors import CheckpointError, UserError, cli
from normrepro.io import atomic_path
from normrepro.tasks.translation.common import (LOG, load_config, load_weights, model_args, quiet_logging, run_paths,
                                          set_threads)

DEFAULT_BATCHES = 100  # when a config predates eval.recompute_stats_batches


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def stats_batches(cfg: dict) -> int:
    """K of a run config: `eval.recompute_stats_batches` (0 = off)."""
    value = (cfg.get("eval") or {}).get("recompute_stats_batches", DEFAULT_BATCHES)
    return int(DEFAULT_BATCHES if value is None else value)


def training_batches(cfg: dict, data_dir: Path, limit: int) -> tuple[object, list]:
    """(train dataset, the first `limit` batches of the run's first epoch, as index arrays)."""
    from normrepro.tasks.translation.datamodule import ShardedBatchSampler, datamodule_from_config

    dm = datamodule_from_config(data_dir, cfg)
    sampler = ShardedBatchSampler(dm.train_batches(), 1, 0, shuffle=True, seed=int(cfg["seed"]))
    return dm.dataset("train"), sampler.epoch_batches()[:limit]


def _samples(dataset, batches: list, device) -> Iterator[dict]:
    from normrepro.tasks.translation.evaluate import _to_device

    for ids in batches:
        yield _to_device(dataset.collater([dataset[int(i)] for i in ids]), device)


def recompute_run(run_dir: Path, data_dir: Path, batches: Optional[int] = None, out: Optional[Path] = None,
                  device: Optional[torch.device] = None) -> dict:
    """Write RUN/checkpoints/running_stats.pt (see the module docstring) and return its contents."""
    from normrepro.running_stats import recompute_running_stats, running_stat_keys
    from normrepro.tasks.translation.datamodule import load_dictionary
    from normrepro.tasks.translation.model import build_model

    started = time.time()
    paths = run_paths(run_dir)
    out = Path(out or paths["running_stats"])
    cfg = load_config(paths["config"])
    k = stats_batches(cfg) if batches is None else int(batches)
    state = load_weights(paths["averaged"])
    result = {"status": "ok", "buffers": {}, "batches": 0, "sentences": 0, "target_tokens": 0, "modules": [],
              "seed": int(cfg["seed"]), "requested_batches": k,
              "source": {"file": paths["averaged"].name, "sha256": file_sha256(paths["averaged"]),
                         "averaged": state.get("averaged", []), "updates": state.get("updates", [])}}
    if state.get("status") == "diverged":
        result["status"] = "diverged"
    elif k <= 0:
        result["status"] = "disabled"
    else:
        dictionary = load_dictionary(data_dir)
        model = build_model(model_args(cfg), dictionary, dictionary)
        model.load_state_dict(state["model"], strict=True)
        keys = running_stat_keys(model)
        if not keys:
            result["status"] = "no_running_stats"
        else:
            device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
            model.to(device)
            dataset, chosen = training_batches(cfg, data_dir, k)
            info = recompute_running_stats(model, _samples(dataset, chosen, device),
                                           lambda m, sample: m(**sample["net_input"]), seed=int(cfg["seed"]))
            new = {key: v.detach().cpu() for key, v in model.state_dict().items()}
            changed = [key for key in new if key not in keys and not torch.equal(new[key], state["model"][key])]
            if changed:
                raise AssertionError(f"recomputing the running statistics changed {changed[:5]}")
            result.update(buffers={key: new[key].clone() for key in keys}, batches=info["batches"],
                          modules=info["modules"], sentences=int(sum(len(b) for b in chosen)),
                          target_tokens=int(sum(int(dataset.tgt_sizes[b].sum()) for b in chosen)))
            if not all(bool(torch.isfinite(v).all()) for v in result["buffers"].values()):
                result["status"] = "non_finite"
    result["seconds"] = round(time.time() - started, 1)
    with atomic_path(out, suffix=".pt") as tmp:
        torch.save(result, tmp)
    return result


def load_running_stats(path: Path, averaged: Path) -> dict:
    """running_stats.pt, checked to have been computed from `averaged` as it is now."""
    if not Path(path).is_file():
        raise UserError(f"{path} not found; recompute the running statistics first (make does; or "
                        f"python -m normrepro.tasks.translation.recompute_stats {Path(path).parent.parent} --data ...)")
    stats = load_weights(path)
    if stats.get("source", {}).get("sha256") != file_sha256(averaged):
        raise CheckpointError(f"{path} was computed for another {averaged.name} than the one in "
                              f"{averaged.parent}; rerun python -m normrepro.tasks.translation.recompute_stats "
                              f"{Path(path).parent.parent} --data ... (make does)")
    return stats


def apply_running_stats(state_dict: dict, stats: dict) -> dict:
    """A copy of `state_dict` with the recomputed running statistics in place of the averaged ones."""
    out = dict(state_dict)
    for key, value in stats.get("buffers", {}).items():
        if key not in out or out[key].shape != value.shape:
            raise CheckpointError(f"running statistic {key} {tuple(value.shape)} does not fit the checkpoint")
        out[key] = value.to(out[key].dtype)
    return out


@cli
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m normrepro.tasks.translation.recompute_stats", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--data", type=Path, required=True, help="prepared training dataset folder")
    parser.add_argument("--batches", type=int, default=None,
                        help="training batches K (default: eval.recompute_stats_batches of the run)")
    parser.add_argument("--out", type=Path, help="default: RUN_DIR/checkpoints/running_stats.pt")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default: trainer.threads of the run)")
    args = parser.parse_args(argv)
    quiet_logging()
    from normrepro.tasks.translation.evaluate import check_inputs

    check_inputs(args.run_dir, args.data, [])
    set_threads(args.threads or load_config(run_paths(args.run_dir)["config"])["trainer"].get("threads"))
    res = recompute_run(args.run_dir, args.data, args.batches, args.out)
    what = {"ok": f"{len(res['modules'])} norms recomputed on {res['batches']} training batches "
                  f"({res['sentences']} sentences, {res['target_tokens']} target tokens)",
            "no_running_stats": "no norm with running statistics (nothing to recompute)",
            "disabled": "eval.recompute_stats_batches = 0 (averaged statistics kept)",
            "diverged": "the run diverged (nothing to recompute)",
            "non_finite": f"recomputed on {res['batches']} batches, but some statistics are not finite"}
    LOG.info("%s: %s, %.1f s", args.run_dir, what[res["status"]], res["seconds"])
    print(json.dumps({k: v for k, v in res.items() if k not in ("buffers", "source", "modules")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
